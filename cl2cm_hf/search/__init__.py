"""Search a user's images and videos with a CL2CM model: build an index (`build_index`), load it and
query it with text in any trained language, an image, a video or an indexed item (`SearchIndex`).
The build runs in stages, one a module: ``sources`` (what to index, with cache keys) -> ``item_table``
(the items and the rerun cache on disk, sorted by id, read a window at a time) -> ``decode``
(files to RGB) and ``decode_video`` (video files to sampled frames) -> ``encode``
(DataLoader workers, the model) -> ``shards`` (finished chunks, the rerun cache) -> ``index_build``
(the index folder, faiss); ``ann`` the compressed IVF-PQ index. ``index_files`` holds the on-disk format and reads it, ``fingerprint`` loads
checkpoints and tells whether a model is an index's, ``index`` is `SearchIndex`, ``sharded`` several
index folders searched as one; ``out_folder`` where an index may be written; ``checks`` option ranges and printable
names. The tools (``cl2cm-index``, ``cl2cm-search``, ``cl2cm-app``) are in `cl2cm_hf.cli`."""

from cl2cm_hf.search.decode import BadImage, open_image
from cl2cm_hf.search.decode_video import BadVideo, open_video
from cl2cm_hf.search.fingerprint import ModelMismatchError, load_checkpoint, model_fingerprint, model_revision
from cl2cm_hf.search.index import SearchHit, SearchIndex, UnknownQueryError
from cl2cm_hf.search.index_build import IndexReport, build_index
from cl2cm_hf.search.index_files import BrokenIndexError
from cl2cm_hf.search.out_folder import OutFolderError
from cl2cm_hf.search.sharded import ShardMismatchError

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
