"""Search a user's images with a CL2CM model: build an index (`build_index`, ``cl2cm-index``),
load it and query it with text in any trained language or with an image (`SearchIndex`,
``cl2cm-search``). Modules: ``index_build`` (encoding, shards, resume, bad files), ``index``
(the on-disk format, `SearchIndex`, `load_checkpoint`, `model_fingerprint`), ``out_folder`` (where
an index may be written), ``checks`` (option ranges, printable file names), ``cli``
(``cl2cm-search``), ``app`` (``cl2cm-app``, the page)."""

from .index import (
    BrokenIndexError,
    ModelMismatchError,
    SearchHit,
    SearchIndex,
    UnknownQueryError,
    load_checkpoint,
    model_fingerprint,
    model_revision,
)
from .index_build import BadImage, IndexReport, build_index, open_image
from .out_folder import OutFolderError

__all__ = [
    "BadImage",
    "BrokenIndexError",
    "IndexReport",
    "ModelMismatchError",
    "OutFolderError",
    "SearchHit",
    "SearchIndex",
    "UnknownQueryError",
    "build_index",
    "load_checkpoint",
    "model_fingerprint",
    "model_revision",
    "open_image",
]
