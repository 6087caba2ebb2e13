"""Processors of the CL2CM dual encoders: raw texts and images in, model inputs out.

This file is copied into every cross-modal checkpoint, so it imports only the standard library,
torch and transformers, and ``AutoProcessor.from_pretrained(ckpt, trust_remote_code=True)`` works
where cl2cm_hf is not installed. The model's ``text_prefix`` (e5 expects ``"query: "``) is added
here and nowhere else: whatever tokenizes for a CL2CM model (collators, evaluation, search) calls
a processor.

Two classes, because `ProcessorMixin` saves and loads exactly the sub-processors named in
``__init__`` (it has no optional ones): `CL2CMTextProcessor` (a tokenizer) for checkpoints that
read precomputed visual features, and `CL2CMProcessor` (a tokenizer, an image processor and a video
processor, `video_processing_cl2cm.CL2CMVideoProcessor`, which decodes and samples video files) for
checkpoints with a vision backbone. `build_processor` picks the one that fits.
"""

import os

import torch
from transformers import AutoImageProcessor, BatchFeature, ProcessorMixin
from transformers.processing_utils import ProcessingKwargs, Unpack
from transformers.video_processing_utils import BaseVideoProcessor

from .errors import CL2CMError
from .processor_sizes import check_processor_sizes
from .video_processing_cl2cm import stack_frames, video_processor_for


def _as_videos(videos) -> list[list]:
    """A batch of videos as lists of frames: a list of videos (each a list of frames or a
    ``(T, ...)`` array), or one video as a 4-D ``(T, ...)`` array or tensor, as transformers takes."""
    if getattr(videos, "ndim", None) == 4:
        return [list(videos)]
    return [list(video) for video in videos]


def _as_list(images) -> list:
    return [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]


def _video_list(videos) -> list:
    """A batch of videos for a video processor: one file path or ``(T, ...)`` array, or a list of
    paths, arrays or frame lists."""
    if isinstance(videos, (str, os.PathLike)) or getattr(videos, "ndim", None) == 4:
        return [videos]
    return list(videos)


def pixel_inputs(image_processor, images=None, videos=None, **images_kwargs) -> dict[str, torch.Tensor]:
    """Images (PIL images or ``(H, W, C)`` arrays) -> ``{"pixel_values": (B, 3, H, W)}``; videos
    -> ``{"pixel_values": (B, T, 3, H, W), "visual_mask": (B, T)}``; both -> one frame batch, the
    images first as one-frame videos. `images_kwargs` go to the image processor."""
    if images is None and videos is None:
        raise CL2CMError("pass images or videos")
    clips = []
    if images is not None:
        clips += [[image] for image in _as_list(images)]
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
        # `image_processor` and `video_processor` are None here (precomputed visual features), without a class attribute
        # that CL2CMProcessor, whose __init__ takes one, would inherit.
        if name in ("image_processor", "video_processor"):
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
        if videos is not None and self.video_processor is not None:
            # Video files, arrays or frame lists through the video processor (images as one-frame videos).
            clips = [[image] for image in _as_list(images)] + _video_list(videos)
            merged["videos_kwargs"].pop("return_tensors", None)
            data.update(self.video_processor(clips, **merged["videos_kwargs"], return_tensors="pt"))
        elif images is not None or videos is not None:
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
        video_processor (`CL2CMVideoProcessor`, *optional*):
            Decodes video files and samples frames prepared as the image processor prepares images.
        text_prefix (`str`, defaults to `""`):
            Put before every text (the config's ``text_prefix``).
    """

    def __init__(self, tokenizer=None, image_processor=None, video_processor=None, text_prefix: str = "", **kwargs):
        # ProcessorMixin takes its sub-processors from this signature: tokenizer, image_processor, video_processor.
        if image_processor is not None:  # absurd sizes are refused when loaded, before any image is decoded
            check_processor_sizes(image_processor.to_dict(), f"{type(self).__name__}: image_processor")
        super().__init__(tokenizer, text_prefix=text_prefix, image_processor=image_processor, video_processor=video_processor, **kwargs)

    def check_argument_for_proper_class(self, argument_name, argument):
        """transformers checks a video processor against its torchvision-only class registry; this one
        is a `BaseVideoProcessor` that needs no torchvision (or None: videos go through the image processor)."""
        if argument_name != "video_processor":
            return super().check_argument_for_proper_class(argument_name, argument)
        if argument is not None and not isinstance(argument, BaseVideoProcessor):
            raise TypeError(f"Received a {type(argument).__name__} for argument video_processor, but a BaseVideoProcessor was expected.")
        return BaseVideoProcessor

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """The sub-processors; a checkpoint saved before video processors (no ``video_processor`` in its
        processor_config.json) gets one made from its image processor that keeps every frame, as its
        videos were read before."""
        if "video_processor" in (processor_dict or {}):
            return super()._get_arguments_from_pretrained(pretrained_model_name_or_path, processor_dict, **kwargs)
        subfolder = kwargs.pop("subfolder", "")
        tokenizer = cls._load_tokenizer_from_pretrained("tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        image_processor = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        return [tokenizer, image_processor, video_processor_for(image_processor, do_sample_frames=False)]

    def __call__(self, text=None, images=None, videos=None, **kwargs: Unpack[ProcessingKwargs]) -> BatchFeature:
        """Model inputs for `text` (each gets ``text_prefix``), `images` and `videos` (each a video file,
        a list of frames or a ``(T, ...)`` array; decoded and sampled by the video processor, or without
        one every frame through the image processor as `pixel_inputs` does); keyword arguments as in
        `CL2CMTextProcessor.__call__`, ``images_kwargs`` going to the image processor, ``videos_kwargs``
        (e.g. ``num_frames``, ``fps``) to the video processor."""
        return self._encode(text, images, videos, kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return [*super().model_input_names, "visual_mask"]


def build_processor(tokenizer, text_prefix: str = "", image_processor=None, video_processor=None) -> CL2CMTextProcessor:
    """`CL2CMProcessor` with an image processor and a video processor (default: `video_processor_for`
    the image processor, 8 frames sampled uniformly), else `CL2CMTextProcessor`."""
    if image_processor is None:
        return CL2CMTextProcessor(tokenizer, text_prefix=text_prefix)
    return CL2CMProcessor(tokenizer, image_processor, video_processor or video_processor_for(image_processor), text_prefix=text_prefix)


__all__ = ["CL2CMTextProcessor", "CL2CMProcessor", "build_processor", "pixel_inputs", "stack_frames"]
