"""The video processor of CL2CM checkpoints that read pixels: video files, arrays or lists of frames in,
``pixel_values (B, T, 3, H, W)`` and ``visual_mask (B, T)`` out.

A `BaseVideoProcessor` as transformers' video models have (``AutoVideoProcessor.from_pretrained(ckpt,
trust_remote_code=True)``; saved as ``video_preprocessor_config.json``): files are decoded with
`transformers.video_utils.load_video` (PyAV, the ``video`` extra) and frames sampled uniformly
(``num_frames``) or at ``fps`` frames per second (at most ``num_frames``), only the sampled ones kept.
Videos shorter than ``num_frames`` keep all their frames and are zero-padded, with ``visual_mask``
marking the real ones (the model's temporal pooler reads it).

transformers' `BaseVideoProcessor` resizes and normalises with torchvision; this one prepares each
frame with the steps of transformers' PIL/NumPy image processors (`PilBackend`), so it works where
torchvision is not installed and a frame looks to the backbone exactly as an image does:
`video_processor_for` copies an image processor's size, resampling filter, crop, rescale and
normalisation.

This file is copied into every checkpoint that reads pixels: standard library, numpy, torch and
transformers (and the package's own shipped files) only.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata, default_sample_indices_fn, load_video

from .errors import CL2CMError
from .processor_sizes import check_processor_sizes

# What a video processor takes from the image processor it mirrors (`video_processor_for`).
IMAGE_SETTINGS = ("size", "crop_size", "resample", "do_resize", "do_center_crop", "do_rescale", "rescale_factor",
                  "do_normalize", "image_mean", "image_std", "do_convert_rgb")


def stack_frames(pixels: torch.Tensor, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of several videos, ``(sum(lengths), 3, H, W)`` in order, as ``pixel_values
    (B, T, 3, H, W)`` zero-padded to the longest video and ``visual_mask (B, T)`` (1 = a frame)."""
    if len(pixels) != sum(lengths):
        raise CL2CMError(f"stack_frames: {len(pixels)} frames but the lengths {list(lengths)} add up to {sum(lengths)}")
    longest = max(lengths)
    batch = pixels.new_zeros((len(lengths), longest, *pixels.shape[1:]))
    mask = torch.zeros((len(lengths), longest), dtype=torch.long)
    start = 0
    for i, length in enumerate(lengths):
        batch[i, :length] = pixels[start : start + length]
        mask[i, :length] = 1
        start += length
    return batch, mask


def _describe(video, index: int) -> str:
    return f"video {str(video)!r}" if isinstance(video, (str, os.PathLike)) else f"video {index}"


def _as_array(frames, where: str) -> np.ndarray:
    """A list of frames (PIL images, ``(H, W, C)`` arrays or ``(C, H, W)`` tensors) as one ``(T, H, W, 3)`` uint8 array."""
    if not len(frames):
        raise CL2CMError(f"{where} has no frames")
    arrays = []
    for frame in frames:
        if hasattr(frame, "convert"):  # PIL
            frame = frame.convert("RGB")
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[0] in (1, 3, 4) and frame.shape[-1] not in (1, 3, 4):
            frame = frame.transpose(1, 2, 0)
        frame = frame if frame.ndim == 3 else frame[..., None]
        arrays.append(np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame[..., :3])
    if len({a.shape for a in arrays}) > 1:
        raise CL2CMError(f"{where}: frames of different sizes {sorted({a.shape for a in arrays})}; a video has one frame size")
    return np.stack(arrays)


class CL2CMVideoProcessor(BaseVideoProcessor):
    r"""Decodes, samples, resizes and normalises videos for a CL2CM vision backbone.

    Args:
        num_frames (`int`, defaults to 8):
            Frames sampled uniformly from each video; with `fps`, the most frames kept.
        fps (`float`, *optional*):
            Sample this many frames per second of video instead (at most `num_frames`).
        size, crop_size, do_center_crop, image_mean, image_std, ...:
            As the backbone's image processor (see `video_processor_for`).
    """

    model_input_names = ["pixel_values", "visual_mask"]
    resample = PILImageResampling.BILINEAR
    size = {"height": 224, "width": 224}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = True
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    num_frames = 8
    fps = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not self.fps > 0):
            raise CL2CMError(f"{type(self).__name__}: fps = {self.fps!r} is refused: expected a positive number or None")
        check_processor_sizes(self.to_dict(), type(self).__name__)

    # --- decoding and sampling (transformers' load_video, PyAV) ---------------------------------
    def sample_frames(self, metadata: VideoMetadata, num_frames: int | None = None, fps: float | None = None, **kwargs) -> np.ndarray:
        """Indices of the frames to keep: ``num_frames`` spread uniformly, or ``fps`` per second
        (at most ``num_frames``); all frames of a video shorter than that."""
        num_frames = self.num_frames if num_frames is None else num_frames
        fps = self.fps if fps is None else fps
        total = int(metadata.total_num_frames or 0)
        if total < 1:
            raise CL2CMError("has no video frames")
        if fps is not None:
            if not metadata.fps:
                raise CL2CMError(f"has no frame rate, so fps={fps} sampling is impossible; use num_frames")
            num_frames = min(num_frames, max(1, int(total / metadata.fps * fps)))
        return default_sample_indices_fn(metadata, num_frames=min(num_frames, total))

    def fetch_videos(self, video_url_or_urls, sample_indices_fn=None):
        """Decode files with PyAV (transformers' default would be torchcodec); errors name the file."""
        if isinstance(video_url_or_urls, list):
            return list(zip(*[self.fetch_videos(x, sample_indices_fn=sample_indices_fn) for x in video_url_or_urls]))
        path = video_url_or_urls
        if isinstance(path, (str, os.PathLike)) and "://" not in str(path) and not Path(path).is_file():
            raise FileNotFoundError(f"video file not found: {path}")
        try:
            return load_video(str(path), backend="pyav", sample_indices_fn=sample_indices_fn)
        except CL2CMError as err:
            raise CL2CMError(f"video {str(path)!r} {err}") from None
        except ImportError as err:
            raise ImportError(f"decoding video {str(path)!r} needs PyAV: pip install 'cl2cm-hf[video]' ({err})") from None
        except IndexError:  # PyAV's streams.video[0] of a file without a video stream
            raise CL2CMError(f"video {str(path)!r} has no video stream (audio only, or no frames were ever written)") from None
        except (OSError, ValueError) as err:
            raise CL2CMError(f"video {str(path)!r} cannot be decoded ({type(err).__name__}: {err}); expected a readable video file") from None

    def _decode_and_sample_videos(self, videos, video_metadata=None, do_sample_frames=None, sample_indices_fn=None):
        """Files are decoded (sampled while decoding); arrays and lists of frames are sampled alike."""
        videos = list(videos) if isinstance(videos, (list, tuple)) else [videos]
        decoded, metadata = [], []
        for i, video in enumerate(videos):
            where = _describe(video, i)
            if isinstance(video, (str, os.PathLike)):
                frames, meta = self.fetch_videos(video, sample_indices_fn=sample_indices_fn)
                if not len(frames):
                    raise CL2CMError(f"{where} decoded to no frames; expected a video with at least one frame")
                decoded.append(frames)
                metadata.append(meta)
                continue
            frames = _as_array(video if isinstance(video, (list, tuple)) else list(video), where)
            meta = VideoMetadata(total_num_frames=len(frames), fps=None)
            if do_sample_frames:
                try:
                    meta.frames_indices = sample_indices_fn(metadata=meta)
                except CL2CMError as err:
                    raise CL2CMError(f"{where} {err}") from None
                frames = frames[meta.frames_indices]
            decoded.append(frames)
            metadata.append(meta)
        return decoded, metadata

    # --- pixels: each frame as transformers' PIL/NumPy image processors prepare an image -----------
    resize, center_crop, rescale, normalize = PilBackend.resize, PilBackend.center_crop, PilBackend.rescale, PilBackend.normalize

    def convert_to_rgb(self, video: torch.Tensor) -> torch.Tensor:
        """``(T, C, H, W)`` with C = 1 or 4 as three channels (greyscale repeated, alpha dropped)."""
        return video.expand(-1, 3, -1, -1) if video.shape[1] == 1 else video[:, :3]

    def _preprocess(self, videos, return_tensors=None, **kwargs) -> BatchFeature:
        """`PilBackend._preprocess` on every frame (resize with the same filter, crop, rescale,
        normalise), so a frame is exactly what the matching Pil image processor makes of it as an
        image; then the videos stacked and zero-padded with `visual_mask`."""
        kwargs = {"do_pad": None, "pad_size": None, **kwargs}
        lengths, frames = [], []
        for video in videos:
            lengths.append(len(video))
            frames += list(video.cpu().numpy())
        pixels = PilBackend._preprocess(self, frames, return_tensors=None, **kwargs)["pixel_values"]
        batch, mask = stack_frames(torch.from_numpy(np.stack(pixels)).float(), lengths)
        return BatchFeature({"pixel_values": batch, "visual_mask": mask}, tensor_type=return_tensors)


def video_processor_for(image_processor, num_frames: int = 8, fps: float | None = None, **kwargs) -> CL2CMVideoProcessor:
    """A `CL2CMVideoProcessor` that prepares frames as `image_processor` prepares images (same size,
    crop, rescale and normalisation), sampling `num_frames` frames (or `fps` per second, at most
    `num_frames`); `kwargs` set other fields (``do_sample_frames=False`` keeps every frame)."""
    settings = image_processor.to_dict()
    kept = {key: settings[key] for key in IMAGE_SETTINGS if settings.get(key) is not None}
    edge, crop_pct = (settings.get("size") or {}).get("shortest_edge"), settings.get("crop_pct")
    if edge and crop_pct:  # ConvNeXt's resize: to edge / crop_pct then a centre crop below 384 px, a square warp above
        square = {"height": edge, "width": edge}
        kept.update({"size": {"shortest_edge": int(edge / crop_pct)}, "crop_size": square, "do_center_crop": True} if edge < 384
                    else {"size": square})
    return CL2CMVideoProcessor(**{**kept, "num_frames": num_frames, "fps": fps, **kwargs})


__all__ = ["CL2CMVideoProcessor", "stack_frames", "video_processor_for"]
