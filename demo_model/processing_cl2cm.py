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
from transformers.processing_utils import ProcessingKwargs, Unpack

from .errors import CL2CMError
from .processor_sizes import check_processor_sizes


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


def _as_videos(videos) -> list[list]:
    """A batch of videos as lists of frames: a list of videos (each a list of frames or a
    ``(T, ...)`` array), or one video as a 4-D ``(T, ...)`` array or tensor, as transformers takes."""
    if getattr(videos, "ndim", None) == 4:
        return [list(videos)]
    return [list(video) for video in videos]


def pixel_inputs(image_processor, images=None, videos=None, **images_kwargs) -> dict[str, torch.Tensor]:
    """Images (PIL images or ``(H, W, C)`` arrays) -> ``{"pixel_values": (B, 3, H, W)}``; videos
    -> ``{"pixel_values": (B, T, 3, H, W), "visual_mask": (B, T)}``; both -> one frame batch, the
    images first as one-frame videos. `images_kwargs` go to the image processor."""
    if images is None and videos is None:
        raise CL2CMError("pass images or videos")
    clips = []
    if images is not None:
        clips += [[image] for image in (list(images) if isinstance(images, (list, tuple)) else [images])]
    if videos is not None:
        videos = _as_videos(videos)
        empty = [i for i, video in enumerate(videos) if not len(video)]
        if empty:
            raise CL2CMError(f"video {empty[0]} has no frames")
        clips += videos
    flat = [frame for clip in clips for frame in clip]
    if not flat:
        raise CL2CMError("no images to process")
    pixels = image_processor(images=flat, **{**images_kwargs, "return_tensors": "pt"})["pixel_values"].float()
    if videos is None:
        return {"pixel_values": pixels}
    pixels, mask = stack_frames(pixels, [len(clip) for clip in clips])
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

    def __init__(self, tokenizer=None, text_prefix: str = "", **kwargs):
        if not isinstance(text_prefix, str):
            raise CL2CMError(f"{type(self).__name__}.text_prefix={text_prefix!r} is invalid; expected a string")
        self.text_prefix = text_prefix
        super().__init__(tokenizer, **kwargs)

    def __getattr__(self, name: str):
        # `image_processor` is None here (precomputed visual features), without a class attribute
        # that CL2CMProcessor, whose __init__ takes one, would inherit.
        if name == "image_processor":
            return None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """`ProcessorMixin.save_pretrained`, without leaving the file's `auto_map` on the object
        (transformers sets it while saving custom code), so the processor saved equals the one loaded."""
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            self.__dict__.pop("auto_map", None)

    def __call__(self, text=None, **kwargs: Unpack[ProcessingKwargs]) -> BatchFeature:
        """Model inputs for `text` (a string or a list; each gets ``text_prefix``). Keyword arguments
        follow transformers' processors: flat (``padding``, ``truncation``, ``max_length``,
        ``return_tensors``) or per modality (``text_kwargs={...}``)."""
        if "images" in kwargs or "videos" in kwargs:
            raise CL2CMError(
                f"{type(self).__name__} has no image processor: this checkpoint reads precomputed visual "
                "features (pass them to get_image_features / get_video_features as visual_features)"
            )
        return self._encode(text, None, None, kwargs)

    def _encode(self, text, images, videos, kwargs) -> BatchFeature:
        if text is None and images is None and videos is None:
            raise CL2CMError(f"{type(self).__name__}: pass text, images or videos")
        merged = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        return_tensors = merged["text_kwargs"].pop("return_tensors", None)
        data = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            data.update(self.tokenizer([self.text_prefix + t for t in texts], return_tensors=return_tensors, **merged["text_kwargs"]))
        if images is not None or videos is not None:
            data.update(pixel_inputs(self.image_processor, images, videos, **merged["images_kwargs"]))
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
        if image_processor is not None:  # absurd sizes are refused when loaded, before any image is decoded
            check_processor_sizes(image_processor.to_dict(), f"{type(self).__name__}: image_processor")
        super().__init__(tokenizer, text_prefix=text_prefix, image_processor=image_processor, **kwargs)

    def __call__(self, text=None, images=None, videos=None, **kwargs: Unpack[ProcessingKwargs]) -> BatchFeature:
        """Model inputs for `text` (each gets ``text_prefix``), `images` and `videos` (each a list of
        frames or a ``(T, ...)`` array), as `pixel_inputs` makes them; keyword arguments as in
        `CL2CMTextProcessor.__call__`, image ones (``images_kwargs``) going to the image processor."""
        return self._encode(text, images, videos, kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return [*super().model_input_names, "visual_mask"]


def build_processor(tokenizer, text_prefix: str = "", image_processor=None) -> CL2CMTextProcessor:
    """`CL2CMProcessor` with an image processor, else `CL2CMTextProcessor`."""
    if image_processor is None:
        return CL2CMTextProcessor(tokenizer, text_prefix=text_prefix)
    return CL2CMProcessor(tokenizer, image_processor, text_prefix=text_prefix)


__all__ = ["CL2CMTextProcessor", "CL2CMProcessor", "build_processor", "pixel_inputs", "stack_frames"]
