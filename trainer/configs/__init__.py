"""The training recipes (YAML), installed as package data `cl2cm_hf.recipes`: the leaderboard reads the demo worlds from them."""
