"""Model card templates of cl2cm-hf, rendered by `cl2cm_hf.hub` (huggingface_hub.ModelCard + jinja2)."""

from pathlib import Path

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"

__all__ = ["MODEL_CARD_TEMPLATE"]
