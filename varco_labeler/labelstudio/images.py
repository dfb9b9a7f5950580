"""Opening images safely and measuring them as Label Studio shows them."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

# Pillow's own bomb guard warns at ~89 Mpx and raises at twice that; we refuse at a set size.
MAX_PIXELS = 100_000_000
# EXIF orientations 5-8 turn the image a quarter: the shown width is the stored height.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


class ImageError(ValueError):
    """An image that cannot be used: unreadable, not an image, or too large."""


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image lazily (header only) and refuse decompression bombs before decoding."""
    try:
        image = Image.open(path)
    except FileNotFoundError as error:
        raise ImageError(f"{path}: no such file") from error
    except (Image.UnidentifiedImageError, OSError) as error:
        raise ImageError(f"{path}: not an image ({error})") from error
    if image.width * image.height > max_pixels:
        raise ImageError(
            f"{path}: {image.width}x{image.height} is over the {max_pixels:,} pixel limit"
        )
    return image


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """Width and height after EXIF orientation, i.e. as Label Studio and the model see it."""
    orientation = image.getexif().get(0x0112, 1)
    if orientation in _QUARTER_TURNS:
        return image.height, image.width
    return image.width, image.height


def upright(image: Image.Image) -> Image.Image:
    """The decoded image with its EXIF orientation applied, in RGB, ready for the model."""
    return ImageOps.exif_transpose(image).convert("RGB")
