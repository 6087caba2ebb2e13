"""Leaderboard: several checkpoints x test sets x languages, scored by the `evaluate` metric module.

    python trainer/leaderboard.py --models runs/a/cross_modal org/cl2cm-demo --datasets demo multi30k_r50 \
        --langs de fr --out leaderboard [--update-cards]

The logic is `cl2cm_hf.cli.leaderboard` (also the console script `cl2cm-leaderboard`).
"""

import sys

from cl2cm_hf.cli.leaderboard import main

if __name__ == "__main__":
    sys.exit(main())
