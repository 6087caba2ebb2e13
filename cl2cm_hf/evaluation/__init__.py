"""Evaluation: retrieval evaluators (validation and test) and the metric records every result file is
written from. The encode path they use is `cl2cm_hf.inference`; the leaderboard tool is
`cl2cm_hf.cli.leaderboard`."""
