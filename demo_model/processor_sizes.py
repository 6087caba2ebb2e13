"""Image and video processor sizes that make sense, checked before any image is decoded.

A processor config asking for 10^6 x 10^6 pixels, a negative or fractional size, a crop larger
than the resized image or a billion frames would allocate without bound or fail deep inside the
image processor. `check_processor_sizes` refuses such settings naming the field; the processor
classes call it when built (so when loaded) and the checkpoint checks call it on the files
(`cl2cm_hf.checkpoint_safety.check_processor_config`, naming the file).

This file is copied into every checkpoint with the processor code: standard library (and `errors`) only.
"""

from .errors import CL2CMError


class ProcessorSizeError(CL2CMError):
    """A processor size or frame count out of range (the message names the field)."""


MAX_SIDE = 8192  # pixels per side: far beyond any vision backbone, and 8192**2 x 3 floats is 0.8 GB
MAX_FRAMES = 4096
_SIZE_FIELDS = ("size", "crop_size", "pad_size", "max_image_size")
_FRAME_FIELDS = ("num_frames", "max_frames", "min_frames")
_SIDE_KEYS = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")


def _count(where: str, value, limit: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ProcessorSizeError(f"{where} = {value!r} is refused: expected a whole number of {what} from 1 to {limit}")
    return value


def _sides(where: str, size) -> dict[str, int]:
    """The sides of a size field (an int or a mapping of `_SIDE_KEYS`), checked."""
    if not isinstance(size, dict):
        side = _count(where, size, MAX_SIDE, "pixels")
        return {"height": side, "width": side}
    unknown = sorted(set(size) - set(_SIDE_KEYS))
    if unknown or not size:
        raise ProcessorSizeError(f"{where} = {size!r} is refused: expected keys among {', '.join(_SIDE_KEYS)}")
    return {key: _count(f"{where}.{key}", value, MAX_SIDE, "pixels") for key, value in size.items() if value is not None}


def check_processor_sizes(fields: dict, where: str) -> None:
    """Raise `ProcessorSizeError` naming `where` and the field when the image or video processor
    settings `fields` (its config, or ``to_dict()``) ask for sizes that are not whole numbers from
    1 to `MAX_SIDE` pixels, a centre crop larger than the resized image, or frame counts outside
    1 to `MAX_FRAMES`."""
    sides = {name: _sides(f"{where}: {name}", fields[name]) for name in _SIZE_FIELDS if fields.get(name) is not None}
    for name in _FRAME_FIELDS:
        if fields.get(name) is not None:
            _count(f"{where}: {name}", fields[name], MAX_FRAMES, "frames")
    crop, size = sides.get("crop_size"), sides.get("size")
    if fields.get("do_center_crop") and crop and size:
        fits = {"height": size.get("height", size.get("shortest_edge")), "width": size.get("width", size.get("shortest_edge"))}
        for side, limit in fits.items():
            if limit is not None and crop.get(side, 0) > limit:
                raise ProcessorSizeError(
                    f"{where}: crop_size.{side} = {crop[side]} is refused: larger than the image after resizing "
                    f"(size {fields['size']!r}); expected at most {limit}"
                )


__all__ = ["MAX_FRAMES", "MAX_SIDE", "ProcessorSizeError", "check_processor_sizes"]
