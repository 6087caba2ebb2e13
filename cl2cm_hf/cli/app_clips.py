"""Video results on the search page: each indexed clip reaches Gradio as a copy in a private
temporary folder (Gradio then serves its own copy; no folder of the user's is ever allowed to its
file route), and a few lines of page script play a clip, muted and looped, while the pointer is on
it (the gallery shows the clip's first frame until then; a click is "more like this")."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

from cl2cm_hf.search.decode_video import is_video_path

_COPIES: dict[str, str] = {}
_LOCK = threading.Lock()
_FOLDER: list[Path] = []


def is_clip(path: str | os.PathLike | None) -> bool:
    """Whether an indexed file is shown as a playable clip (a video extension) rather than a picture."""
    return is_video_path(path)


def _private_folder() -> Path:
    """Made inside Gradio's temporary folder: the server's own (`app.private_gradio_temp`), removed
    with it when the server stops."""
    if not _FOLDER:
        _FOLDER.append(Path(tempfile.mkdtemp(prefix="cl2cm-clips-", dir=os.environ.get("GRADIO_TEMP_DIR"))))
    return _FOLDER[0]


def shown_clip(path: str | os.PathLike) -> str:
    """A private copy of the indexed clip at `path` (one per file version: path, size, mtime), which
    the page hands to Gradio; OSError when the file is gone."""
    stat = os.stat(path)
    version = hashlib.sha256(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    with _LOCK:
        copy = _COPIES.get(version)
        if copy is None or not Path(copy).is_file():
            folder = _private_folder() / version
            folder.mkdir(exist_ok=True)
            copy = str(folder / f"clip{Path(path).suffix.lower()}")
            shutil.copyfile(path, copy + ".part")
            os.replace(copy + ".part", copy)
            _COPIES[version] = copy
    return copy


# Gradio runs this once when the page loads (launch(js=...)): hover plays a clip, leaving pauses it.
HOVER_PLAY_JS = """
() => {
  const clip = (e) => e.target.closest && e.target.closest('#results .thumbnail-item')?.querySelector('video');
  document.addEventListener('mouseover', (e) => {
    const v = clip(e);
    if (v && v.paused) { v.muted = true; v.loop = true; v.play().catch(() => {}); }
  });
  document.addEventListener('mouseout', (e) => { const v = clip(e); if (v && !v.paused) v.pause(); });
}
"""
