"""faiss, imported where approximate search is asked for, with the install hint when it is missing
(no torch: the one-call search imports it)."""


def import_faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "approximate search needs faiss: pip install 'cl2cm-hf[faiss]' (faiss-cpu); exact search "
            "(cl2cm_hf.retrieval.topk / ranks) needs nothing more"
        ) from exc
    return faiss
