"""cl2cm-hf: CL2CM cross-lingual cross-modal retrieval on the Hugging Face stack.

Importing the package imports nothing heavy: its names load on first use (PEP 562), and the first
of them registers the CL2CM model types with transformers' Auto classes (`cl2cm_hf.auto_classes`).
So a one-call search (``cl2cm-search``) imports neither torch nor transformers."""

import importlib

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


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(f"{__name__}.auto_classes")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


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
