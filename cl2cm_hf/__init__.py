"""cl2cm-hf: CL2CM cross-lingual cross-modal retrieval on the Hugging Face stack.

Importing the package imports nothing heavy: its names load on first use (PEP 562), and the first
of them registers the CL2CM model types with transformers' Auto classes (`cl2cm_hf.auto_classes`).
So a one-call search (``cl2cm-search``) imports neither torch nor transformers."""

from cl2cm_hf.lazy_exports import lazy_exports

# Name -> its module.
_EXPORTS = {
    "CL2CMCrossLingualConfig": "configuration_cl2cm", "CL2CMCrossModalConfig": "configuration_cl2cm",
    "CL2CMCrossLingualModel": "modeling_cl2cm", "CL2CMCrossModalModel": "modeling_cl2cm",
    "CL2CMCrossLingualOutput": "modeling_cl2cm", "CL2CMCrossModalOutput": "modeling_cl2cm",
    "CL2CMProcessor": "processing_cl2cm", "CL2CMTextProcessor": "processing_cl2cm", "build_processor": "processing_cl2cm",
    "CL2CMVideoProcessor": "video_processing_cl2cm", "video_processor_for": "video_processing_cl2cm",
    "gather_with_grad": "losses", "info_nce": "losses", "vse_triplet": "losses", "relational_distillation": "losses",
    "sinkhorn_ot_loss": "losses",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, first="cl2cm_hf.auto_classes")


__all__ = [
    "CL2CMCrossLingualConfig",
    "CL2CMCrossModalConfig",
    "CL2CMCrossLingualModel",
    "CL2CMCrossModalModel",
    "CL2CMCrossLingualOutput",
    "CL2CMCrossModalOutput",
    "CL2CMProcessor",
    "CL2CMTextProcessor",
    "CL2CMVideoProcessor",
    "build_processor",
    "video_processor_for",
    "gather_with_grad",
    "info_nce",
    "vse_triplet",
    "relational_distillation",
    "sinkhorn_ot_loss",
]
