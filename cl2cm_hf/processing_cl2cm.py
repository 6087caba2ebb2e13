"""Processors of the CL2CM dual encoders: raw texts and images in, model inputs out.

This file is copied into every cross-modal checkpoint, so it imports only the standard library,
torch and transformers, and ``AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)`` works
where cl2cm_hf is not installed. The model's ``text_prefix`` (e5 expects ``"query: "``) is added
here and nowhere else: whatever tokenizes for a CL2CM model (collators, evaluation, search) calls
a processor.

Two classes, because `ProcessorMixin` saves and loads exactly the sub-processors named in
``__init__`` (it has no optional ones): `CL2CMTextProcessor` (a tokenizer) for checkpoints that
read precomputed visual features, and `CL2CMProcessor` (a tokenizer and an image processor) for
checkpoints with a vision backbone. `build_processor` picks the one that fits.
"""

from collections.abc import Sequence

import torch
from transformers import BatchFeature, ProcessorMixin


def stack_frames(pixels: torch.Tensor, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of several videos, ``(sum(lengths), 3, H, W)`` in order, as ``pixel_values
    (B, T, 3, H, W)`` zero-padded to the longest video and ``visual_mask (B, T)`` (1 = a frame)."""
    if len(pixels) != sum(lengths):
        raise ValueError(f"stack_frames: {len(pixels)} frames but the lengths {list(lengths)} add up to {sum(lengths)}")
    longest = max(lengths)
    batch = pixels.new_zeros((len(lengths), longest, *pixels.shape[1:]))
    mask = torch.zeros((len(lengths), longest), dtype=torch.long)
    start = 0
    for i, length in enumerate(lengths):
        batch[i, :length] = pixels[start : start + length]
        mask[i, :length] = 1
        start += length
    return batch, mask


def pixel_inputs(image_processor, images=None, videos=None) -> dict[str, torch.Tensor]:
    """Images (PIL images or ``(H, W, C)`` arrays) -> ``{"pixel_values": (B, 3, H, W)}``; videos
    (each a list of frames) -> ``{"pixel_values": (B, T, 3, H, W), "visual_mask": (B, T)}``."""
    if (images is None) == (videos is None):
        raise ValueError("pass images or videos (exactly one of them)")
    if videos is not None:
        videos = [list(video) for video in videos]
        empty = [i for i, video in enumerate(videos) if not video]
        if empty:
            raise ValueError(f"video {empty[0]} has no frames")
        flat = [frame for video in videos for frame in video]
    else:
        flat = list(images) if isinstance(images, (list, tuple)) else [images]
    if not flat:
        raise ValueError("no images to process")
    pixels = image_processor(images=flat, return_tensors="pt")["pixel_values"].float()
    if videos is None:
        return {"pixel_values": pixels}
    pixels, mask = stack_frames(pixels, [len(video) for video in videos])
    return {"pixel_values": pixels, "visual_mask": mask}


class CL2CMTextProcessor(ProcessorMixin):
    r"""Processor of a CL2CM checkpoint without an image processor (precomputed visual features,
    or the stage-1 text model): the tokenizer and the model's ``text_prefix``.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The checkpoint's tokenizer.
        text_prefix (`str`, defaults to `""`):
            Put before every text (the config's ``text_prefix``).
    """

    image_processor = None  # no pixels: the visual side of these checkpoints is precomputed

    def __init__(self, tokenizer=None, text_prefix: str = "", **kwargs):
        if not isinstance(text_prefix, str):
            raise ValueError(f"{type(self).__name__}.text_prefix={text_prefix!r} is invalid; expected a string")
        self.text_prefix = text_prefix
        super().__init__(tokenizer, **kwargs)

    def __call__(self, text=None, images=None, videos=None, return_tensors=None, **text_kwargs) -> BatchFeature:
        """Model inputs for `text` (a string or a list; each gets ``text_prefix``; `text_kwargs` such as
        ``padding``, ``truncation``, ``max_length`` go to the tokenizer) and for `images` or
        `videos` (lists of frames), as `pixel_inputs` makes them (torch tensors)."""
        if text is None and images is None and videos is None:
            raise ValueError(f"{type(self).__name__}: pass text, images or videos")
        data = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            data.update(self.tokenizer([self.text_prefix + t for t in texts], return_tensors=return_tensors, **text_kwargs))
        if images is not None or videos is not None:
            if self.image_processor is None:
                raise ValueError(
                    f"{type(self).__name__} has no image processor: this checkpoint reads precomputed visual "
                    "features (pass them to get_image_features / get_video_features as visual_features)"
                )
            data.update(pixel_inputs(self.image_processor, images, videos))
        return BatchFeature(data, tensor_type=return_tensors)


class CL2CMProcessor(CL2CMTextProcessor):
    r"""Processor of a CL2CM checkpoint with a vision backbone: the tokenizer with the model's
    ``text_prefix``, and the backbone's image processor for images and video frames.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            The checkpoint's tokenizer.
        image_processor (`BaseImageProcessor`):
            The vision backbone's image processor.
        text_prefix (`str`, defaults to `""`):
            Put before every text (the config's ``text_prefix``).
    """

    def __init__(self, tokenizer=None, image_processor=None, text_prefix: str = "", **kwargs):
        # ProcessorMixin takes its sub-processors from this signature: tokenizer and image_processor.
        super().__init__(tokenizer, text_prefix=text_prefix, image_processor=image_processor, **kwargs)


def build_processor(tokenizer, text_prefix: str = "", image_processor=None) -> CL2CMTextProcessor:
    """`CL2CMProcessor` with an image processor, else `CL2CMTextProcessor`."""
    if image_processor is None:
        return CL2CMTextProcessor(tokenizer, text_prefix=text_prefix)
    return CL2CMProcessor(tokenizer, image_processor, text_prefix=text_prefix)


__all__ = ["CL2CMTextProcessor", "CL2CMProcessor", "build_processor", "pixel_inputs", "stack_frames"]
