"""Search a user's images and videos with a CL2CM model: build an index (`build_index`), load it and
query it with text in any trained language, an image, a video or an indexed item (`SearchIndex`).
The build runs in stages, one a module: ``sources`` (what to index, with cache keys) -> ``item_table``
(the items and the rerun cache on disk, sorted by id, read a window at a time) -> ``decode``
(files to RGB) and ``decode_video`` (video files to sampled frames) -> ``encode``
(DataLoader workers, the model) -> ``shards`` (finished chunks, the rerun cache) -> ``index_build``
(the index folder, faiss); ``ray_build`` runs the encode stage as a Ray Data job on a cluster; ``ann`` the compressed IVF-PQ index. ``index_files`` holds the on-disk format and reads it, ``fingerprint`` loads
checkpoints and tells whether a model is an index's, ``index`` is `SearchIndex`, ``sharded`` several
index folders searched as one; ``out_folder`` where an index may be written; ``checks`` option ranges and printable
names. The tools (``cl2cm-index``, ``cl2cm-search``, ``cl2cm-app``) are in `cl2cm_hf.cli`."""

from cl2cm_hf.lazy_exports import lazy_exports

# Name -> its module, imported on first use (PEP 562): `cl2cm-search` with a text query loads the index
# and the model only; building (datasets, decoders, DataLoader workers) stays unimported.
_EXPORTS = {
    "BadImage": "decode", "open_image": "decode",
    "BadVideo": "decode_video", "open_video": "decode_video",
    "ModelMismatchError": "fingerprint", "load_checkpoint": "fingerprint", "model_fingerprint": "fingerprint",
    "model_revision": "fingerprint",
    "SearchHit": "index", "SearchIndex": "index", "UnknownQueryError": "index",
    "IndexReport": "index_build", "build_index": "index_build",
    "BrokenIndexError": "index_files",
    "OutFolderError": "out_folder",
    "ShardMismatchError": "sharded",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


__all__ = [
    "BadImage",
    "BadVideo",
    "BrokenIndexError",
    "IndexReport",
    "ModelMismatchError",
    "OutFolderError",
    "SearchHit",
    "SearchIndex",
    "ShardMismatchError",
    "UnknownQueryError",
    "build_index",
    "load_checkpoint",
    "model_fingerprint",
    "model_revision",
    "open_image",
    "open_video",
]
