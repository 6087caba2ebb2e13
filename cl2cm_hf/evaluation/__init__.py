"""Evaluation: retrieval evaluators (validation and test), the metric records every result file is
written from, and the paired bootstrap of SumR differences between systems (`bootstrap`). The encode path they use is `cl2cm_hf.inference`; the leaderboard tool is
`cl2cm_hf.cli.leaderboard`."""
