"""Evaluation: the one encode path, retrieval evaluators and the leaderboard (behind
`trainer/leaderboard.py` and `cl2cm-leaderboard`)."""
