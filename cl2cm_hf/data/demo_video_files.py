"""The demo world's videos as ``.mp4`` files, for a vision tower that reads video files through the
checkpoint's video processor (`cl2cm_hf.video_processing_cl2cm`), as a user's own videos would be read.

Each item's frames (`DemoWorld.pictures`: a fixed camera, objects entering and leaving) are encoded
with PyAV as H.264 (libx264, yuv420p, which browsers play) at `DEFAULT_FPS` frames per second, one
frame per rendered frame. The encoder runs single-threaded with bit-exact flags and the container
carries no creation time, so the same world, seed and size give byte-identical files (checked by
`tests/test_demo_video_files.py`) on one build of PyAV/FFmpeg; another build may encode differently
but decodes to frames within the codec's rounding.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cl2cm_hf.atomic import atomic_directory
from cl2cm_hf.data.image_paths import ImagePathStore
from cl2cm_hf.errors import CL2CMError

DEFAULT_FPS = 4  # 4-12 frames per demo video: 1-3 seconds of video
MANIFEST = "videos.json"  # what a folder of videos was rendered from (world, size, fps, writer, PyAV)
# Near-lossless: the objects are a few pixels wide and their colour is what the captions name.
_CODEC_OPTIONS = {"crf": "8", "preset": "medium", "threads": "1", "x264-params": "threads=1:sliced-threads=0"}


def _av():
    try:
        import av
    except ImportError as err:
        raise ImportError(f"writing .mp4 videos needs PyAV: pip install 'cl2cm-hf[video]' ({err})") from None
    return av


def write_mp4(path: str | os.PathLike, frames: Sequence, fps: int = DEFAULT_FPS) -> Path:
    """Encode `frames` (PIL images or ``(H, W, 3)`` uint8 arrays of one even size) as an H.264 ``.mp4``
    at `fps`, deterministically; returns the path."""
    av, path = _av(), Path(path)
    arrays = [np.asarray(frame.convert("RGB") if hasattr(frame, "convert") else frame, dtype=np.uint8) for frame in frames]
    if not arrays:
        raise CL2CMError(f"{path}: no frames to write")
    height, width = arrays[0].shape[:2]
    if height % 2 or width % 2 or any(a.shape != (height, width, 3) for a in arrays):
        raise CL2CMError(f"{path}: frames must share one even size (H.264 yuv420p); got {sorted({a.shape for a in arrays})}")
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart", "fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps, options=_CODEC_OPTIONS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for array in arrays:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path


def render_video_files(world, folder: str | os.PathLike, size: int = 64, fps: int = DEFAULT_FPS) -> dict[str, Path]:
    """Every video item of `world` (a `DemoWorld` of ``visual_kind="video"``) as ``<id>.mp4`` in `folder`;
    returns visual id -> path. Written whole (`atomic_directory`); a folder already rendered from the
    same world, size and fps by the same renderer, writer and PyAV is reused."""
    av = _av()
    if world.config.get("visual_kind") != "video":
        raise CL2CMError(f"render_video_files: the demo world's visual_kind is {world.config.get('visual_kind')!r}; expected 'video'")
    folder = Path(folder)
    paths = {visual_id: folder / f"{visual_id}.mp4" for visual_id in world.scenes}
    writer = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    manifest = json.dumps({**json.loads(world.render_manifest(size)), "fps": fps, "writer_sha256": writer, "pyav": av.__version__})
    if (folder / MANIFEST).is_file() and (folder / MANIFEST).read_text(encoding="utf-8") == manifest:
        return paths
    with atomic_directory(folder) as tmp:
        for visual_id, frames in world.pictures(size=size):
            write_mp4(tmp / paths[visual_id].name, frames, fps)
        (tmp / MANIFEST).write_text(manifest, encoding="utf-8")
    return paths


def video_file_store(world, folder: str | os.PathLike, size: int = 64, fps: int = DEFAULT_FPS, video_processor=None) -> ImagePathStore:
    """An `ImagePathStore` over `render_video_files`: items are ``.mp4`` files, decoded and sampled
    by `video_processor` (a `CL2CMVideoProcessor`; set later by the run when None)."""
    return ImagePathStore(render_video_files(world, folder, size, fps), None, name=f"demo world videos {folder} ({size} px, {fps} fps)",
                          video_processor=video_processor)


__all__ = ["DEFAULT_FPS", "render_video_files", "video_file_store", "write_mp4"]
