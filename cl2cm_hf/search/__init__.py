"""Search a user's images with a CL2CM model: build an index (`build_index`, ``cl2cm-index``),
load it and query it with text in any trained language or with an image (`SearchIndex`,
``cl2cm-search``). Modules: ``index_build`` (encoding, shards, resume, bad files), ``index``
(the on-disk format, `SearchIndex`, `load_checkpoint`), ``cli`` (``cl2cm-search``)."""

from .index import BrokenIndexError, SearchHit, SearchIndex, load_checkpoint, model_revision
from .index_build import BadImage, IndexReport, build_index, open_image

__all__ = [
    "BadImage",
    "BrokenIndexError",
    "IndexReport",
    "SearchHit",
    "SearchIndex",
    "build_index",
    "load_checkpoint",
    "model_revision",
    "open_image",
]
