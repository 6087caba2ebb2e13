"""Tiny video files written with PyAV for the video tests (a few frames, a few kB, milliseconds)."""

from pathlib import Path

import numpy as np


def clip_frames(seed: int, frames: int = 12, size: tuple[int, int] = (32, 24)) -> np.ndarray:
    """``(frames, H, W, 3)`` uint8: a coloured square moving over a coloured ground, all different by `seed`."""
    rng = np.random.default_rng(seed)
    ground, square = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    width, height = size
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        out[t] = ground
        x = (seed * 3 + 2 * t) % (width - 8)
        out[t, 8:16, x : x + 8] = square
    return out


def write_video(path: Path, frames: np.ndarray, fps: int = 8, codec: str = "libx264", faststart: bool = False) -> Path:
    """Encode `frames` ``(T, H, W, 3)`` to `path` (H.264 in MP4 plays in Chromium)."""
    import av

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4" if codec == "libx264" else None, options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    """An AAC track in an MP4 container, no video stream."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def write_zero_frames(path: Path) -> Path:
    """An MP4 container with a video stream declared and no frame in it."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        container.start_encoding()
    return path


def write_demo_clips(world, visual_ids, folder: Path, size: int = 64) -> dict[str, Path]:
    """``folder/<id>.mp4`` for some demo-world video items, written as the demo's own video files are
    (`cl2cm_hf.data.demo_video_files.write_mp4`); `render_video_files` would write every item."""
    from cl2cm_hf.data.demo_video_files import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    return {visual_id: write_mp4(folder / f"{visual_id}.mp4", frames) for visual_id, frames in world.pictures(list(visual_ids), size=size)}
