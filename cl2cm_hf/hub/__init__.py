"""CL2CM checkpoints on the Hugging Face Hub, one job per module.

* `results`: metric records as the Hub shows them (the one markdown table, ``model-index``
  entries, the recall@K plot).
* `card`: the model card rendered from ``hub_cards/model_card.md``.
* `push`: checking, staging and uploading a checkpoint folder.
"""

from cl2cm_hf.hub.card import PLOT_FILENAME, TEMPLATE_PATH, build_card, training_summary, update_card_results, usage_snippet
from cl2cm_hf.hub.push import CheckpointError, check_checkpoint, push_checkpoint, stage_checkpoint
from cl2cm_hf.hub.results import eval_results, metrics_table, plot_recall_at_k

__all__ = [
    "CheckpointError",
    "PLOT_FILENAME",
    "TEMPLATE_PATH",
    "build_card",
    "check_checkpoint",
    "eval_results",
    "metrics_table",
    "plot_recall_at_k",
    "push_checkpoint",
    "stage_checkpoint",
    "training_summary",
    "update_card_results",
    "usage_snippet",
]
