"""Decoding a user's image file (or bytes) to RGB, or a `BadImage` with the reason the report gives."""

from __future__ import annotations

import io
import os
import warnings

from cl2cm_hf.data.image_paths import to_rgb
from cl2cm_hf.errors import CL2CMError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's decompression-bomb threshold (Image.MAX_IMAGE_PIXELS)


class BadImage(CL2CMError):
    """A file that cannot be turned into an RGB image; the message is the reason in the report."""


def open_image(source, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The RGB image in `source` (a path or bytes); `BadImage` with the reason if there is none."""
    from PIL import Image, UnidentifiedImageError

    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except PermissionError:
        raise BadImage("unreadable: permission denied") from None
    except FileNotFoundError:
        raise BadImage("file not found (deleted while indexing?)") from None
    except OSError as err:
        raise BadImage(f"unreadable: {err.strerror or err}") from None
    with handle:
        try:
            size = len(source) if isinstance(source, bytes) else os.fstat(handle.fileno()).st_size
            if size == 0:
                raise BadImage("empty file (0 bytes)")
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(handle)
            if image.width * image.height > max_pixels:
                raise BadImage(f"too many pixels: {image.width}x{image.height} (limit {max_pixels}; decompression bomb?)")
            image.load()
            return to_rgb(image)
        except BadImage:
            raise
        except UnidentifiedImageError:
            raise BadImage("not an image (PIL cannot identify the file)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadImage(f"too many pixels ({err})") from None
        except PermissionError:
            raise BadImage("unreadable: permission denied") from None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
            raise BadImage(f"truncated or corrupt image: {err}") from None
