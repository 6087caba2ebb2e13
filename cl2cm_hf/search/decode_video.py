"""Decoding a user's video file to a few uniformly sampled RGB frames with transformers'
`load_video` (PyAV backend, the ``video`` extra), or a `BadVideo` with the reason the report gives.

The file is probed first (PyAV: a container, a video stream, a frame count, a duration, a frame
size), so that a broken, empty, audio-only, zero-frame or absurdly long file is named for what it
is before anything is decoded; a file that ends early (truncated) decodes fewer frames than its
header promises and is skipped too. `video_inputs` turns decoded clips into model inputs: the one
place the processor is called for videos.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search.checks import check_int

# A GIF stays a picture (its first frame), as image indexes have always read it.
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ogv", ".wmv", ".flv",
                              ".3gp", ".ts"})
# FFmpeg demuxers of video containers: a file without a video extension is a video only in one of
# these (FFmpeg also reads text as "tty" video and pictures as one-frame "image2" video).
VIDEO_CONTAINERS = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpeg", "mpegts",
                              "mpegvideo", "flv", "asf", "ogg", "mxf", "rm", "nut", "ivf", "h264", "hevc", "m4v", "dv"})
DEFAULT_NUM_FRAMES = 8
DEFAULT_MAX_SECONDS = 4 * 3600.0  # longer is a stream dump or a broken header, not a clip to search


class BadVideo(CL2CMError):
    """A file that cannot be turned into sampled video frames; the message is the reason in the report."""


@dataclass(frozen=True)
class VideoSettings:
    """How videos are sampled, and whether still images are refused (a ``--videos`` index)."""

    num_frames: int = DEFAULT_NUM_FRAMES
    max_seconds: float = DEFAULT_MAX_SECONDS
    videos_only: bool = False

    def key(self) -> str:
        """What goes into the cache key of every file that may be a video: changing it re-encodes those."""
        return f"video:frames={self.num_frames},max_s={self.max_seconds:g}" + (",only" if self.videos_only else "")


DEFAULT_VIDEO = VideoSettings()


def is_video_path(path: str | os.PathLike | None) -> bool:
    return path is not None and Path(path).suffix.lower() in VIDEO_EXTENSIONS


def is_image_path(path: str | os.PathLike | None) -> bool:
    """A file whose extension PIL reads as a picture."""
    from PIL import Image

    suffix = Path(path).suffix.lower() if path is not None else ""
    return suffix in Image.registered_extensions() and suffix not in VIDEO_EXTENSIONS


def video_settings(processor, num_frames: int | None = None, max_seconds: float = DEFAULT_MAX_SECONDS,
                   videos_only: bool = False) -> VideoSettings:
    """Checked settings; `num_frames` None: the checkpoint's video processor's ``num_frames`` when it
    has one, else `DEFAULT_NUM_FRAMES`."""
    if num_frames is None:
        frames = getattr(getattr(processor, "video_processor", None), "num_frames", None)
        num_frames = int(frames) if isinstance(frames, int) and frames > 0 else DEFAULT_NUM_FRAMES
    num_frames = check_int("num_frames", num_frames)
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not 0 < max_seconds < float("inf"):
        raise CL2CMError(f"max_video_seconds must be a positive number of seconds, got {max_seconds!r}")
    return VideoSettings(num_frames, float(max_seconds), videos_only)


def mark_video_keys(items, settings: VideoSettings) -> None:
    """Add `settings` to the cache key of every item that may be decoded as a video (all of them in a
    videos-only index, where a picture is refused): changing the sampling re-encodes those, and only those."""
    for item in items:
        if settings.videos_only or not (item.path is None or is_image_path(item.path)):
            item.key = f"{item.key}|{settings.key()}"


@dataclass(frozen=True)
class VideoProbe:
    frames: int
    fps: float
    seconds: float
    width: int
    height: int


def probe_video(path: str | os.PathLike, sniffed: bool = False) -> VideoProbe:
    """What the container says about its first video stream; `BadVideo` when there is none, or
    (`sniffed`: the file has no video extension) when FFmpeg reads it as something else than a video
    container (text, a picture)."""
    try:
        import av
    except ImportError:
        raise BadVideo("PyAV is not installed: pip install 'cl2cm-hf[video]'") from None
    try:
        if os.stat(path).st_size == 0:
            raise BadVideo("empty file (0 bytes)")
        container = av.open(str(path))
    except FileNotFoundError:
        raise BadVideo("file not found (deleted while indexing?)") from None
    except PermissionError:
        raise BadVideo("unreadable: permission denied") from None
    except BadVideo:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or err  # without the path: the report names the file
        raise BadVideo(f"not a video, or truncated (FFmpeg cannot read the container: {reason})") from None
    with container:
        if sniffed and not set(container.format.name.split(",")) & VIDEO_CONTAINERS:
            raise BadVideo(f"not a video container (FFmpeg reads it as {container.format.name!r})")
        if not container.streams.video:
            what = "audio only" if container.streams.audio else "no stream FFmpeg can decode"
            raise BadVideo(f"no video stream ({what})")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        else:
            seconds = (container.duration or 0) / 1e6
        frames = int(stream.frames or round(seconds * fps))
        return VideoProbe(frames, fps, seconds, int(stream.width or 0), int(stream.height or 0))


def open_video(path: str | os.PathLike, settings: VideoSettings = DEFAULT_VIDEO, max_pixels: int | None = None,
               sniffed: bool = False) -> np.ndarray:
    """``(T, H, W, 3)`` uint8: `settings.num_frames` frames sampled uniformly over the file (every
    frame of a shorter one) with `transformers.video_utils.load_video`; `BadVideo` with the reason.
    `sniffed`: the file has no video extension (see `probe_video`)."""
    from transformers.video_utils import load_video

    info = probe_video(path, sniffed)
    if info.frames <= 0:
        raise BadVideo("zero frames (the video stream holds no picture)")
    if info.seconds > settings.max_seconds:
        raise BadVideo(f"too long: {info.seconds:.0f} s (limit {settings.max_seconds:g} s)")
    if max_pixels is not None and info.width * info.height > max_pixels:
        raise BadVideo(f"too many pixels per frame: {info.width}x{info.height} (limit {max_pixels})")
    count = min(settings.num_frames, info.frames)
    wanted = np.arange(count, dtype=int) * info.frames // count  # transformers' default_sample_indices_fn

    def sample(metadata, **kwargs):
        return wanted

    try:
        frames, _ = load_video(str(path), sample_indices_fn=sample)
    except Exception as err:  # PyAV raises its own errors; np.stack a ValueError when nothing decoded
        raise BadVideo(f"truncated or corrupt video: {type(err).__name__}: {err}") from None
    if len(frames) < count:
        raise BadVideo(f"truncated video: decoded {len(frames)} of the {count} sampled frames (the header says {info.frames})")
    return np.ascontiguousarray(frames)


def video_inputs(processor, clips: list[np.ndarray]) -> dict:
    """Model inputs of decoded clips, ``pixel_values (B, T, 3, H, W)`` and ``visual_mask (B, T)``,
    through the checkpoint's processor: its video processor (the frames are sampled already, so it
    keeps them all), or the image processor frame by frame in checkpoints saved without one."""
    return dict(processor(videos=clips, do_sample_frames=False, return_tensors="pt"))
