"""Pure core: read an image's bytes, check them, decode them once and report what they hold.

Guarantees of ``inspect_image``:
  * only JPEG and PNG are opened (Pillow does not sniff its other 40 parsers);
  * the pixel count is checked from the JSON and from the header before any decoding, and
    Pillow's decompression-bomb warning is an error;
  * the image is decoded fully; a truncated file is rejected, never padded (Pillow's
    ``LOAD_TRUNCATED_IMAGES`` is never set);
  * pixels are not rotated: COCO annotations live in the stored pixel space, so the EXIF
    orientation is recorded, and a size swapped by an orientation of 5 to 8 is flagged;
  * ``pixel_sums`` counts every pixel of the decoded image per RGB channel (from a 256-bin
    histogram each, so the sums are exact integers), under one conversion: grey images count
    their value in all three channels, every other mode goes through Pillow's
    ``convert("RGB")`` (palette looked up, alpha dropped, CMYK by Pillow's formula).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import Reason
from coco_beam.transforms.images.phash import dct_hash

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "FLAG_EXIF_SWAPPED",
    "ImageFacts",
    "inspect_image",
    "is_not_found",
    "pixel_sums",
]

ALLOWED_FORMATS = ("JPEG", "PNG")
# Far above any COCO image (640 px a side) and below what would exhaust a worker's memory
# (RGB at 100 Mpx is 300 MB decoded).
DEFAULT_MAX_PIXELS = 100_000_000
FLAG_EXIF_SWAPPED = "exif_dims_swapped"
_SUPPORTED_MODES = frozenset({"1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA"})
_EXIF_ORIENTATION = 0x0112


@dataclasses.dataclass(frozen=True)
class ImageFacts:
    """What decoding one image found."""

    sha256: str
    format: str  # "jpeg" or "png"
    mode: str  # Pillow's mode of the stored image, e.g. "RGB", "L", "CMYK"
    width: int
    height: int
    exif_orientation: int | None
    flags: tuple[str, ...]
    # ``pixel_sums`` of the decoded pixels: (pixels, [sum R, G, B], [sum of squares R, G, B])
    pixel_sums: tuple | None = dataclasses.field(default=None, compare=False, repr=False)
    # ``images.thumbnails.Thumbnails`` made from the decoded pixels when asked; else None.
    thumbnails: object = dataclasses.field(default=None, compare=False, repr=False)
    # ``phash.dct_hash`` of the decoded pixels (16 hex digits), made with ``pixel_sums``.
    phash: str | None = dataclasses.field(default=None, compare=False, repr=False)


def is_not_found(exc: BaseException) -> bool:
    """True for a permanent 'no such file' (local or object store); 5xx and timeouts are not."""
    if isinstance(exc, FileNotFoundError):
        return True
    return type(exc).__name__ == "NotFound" or getattr(exc, "code", None) == 404


def _decode(data: bytes, max_pixels: int, histogram: bool, thumbnail=None, phash=True):
    """Opens with the allowlist, checks the header, decodes every pixel once (and makes what
    ``thumbnail`` asks of them)."""
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        try:
            with Image.open(io.BytesIO(data)) as other:
                found = other.format
        except Exception:  # noqa: BLE001 - any failure means: not an image at all
            raise RecordError(Reason.IMAGE_CORRUPT, "not a decodable image") from exc
        raise RecordError(
            Reason.FORMAT_NOT_ALLOWED, f"{found} is not one of {ALLOWED_FORMATS}"
        ) from exc
    with image:
        if image.width * image.height > max_pixels:
            raise RecordError(Reason.IMAGE_TOO_LARGE, f"header says {image.width}x{image.height}")
        if image.mode not in _SUPPORTED_MODES:
            raise RecordError(Reason.UNSUPPORTED_MODE, f"mode {image.mode} is not supported")
        image.load()
        fmt, orientation = image.format.lower(), image.getexif().get(_EXIF_ORIENTATION)
        thumbs = None
        if thumbnail is not None:
            thumbs = thumbnail.make(image, fmt=fmt, orientation=orientation)
        return (
            fmt,
            image.mode,
            image.size,
            orientation,
            pixel_sums(rgb_histogram(image)) if histogram else None,
            thumbs,
            dct_hash(image) if histogram and phash else None,
        )


def rgb_histogram(image: Image.Image) -> np.ndarray:
    """768 pixel counts (int64): R, G and B, 256 values each (see the module's guarantees)."""
    if image.mode == "L":
        return np.tile(np.asarray(image.histogram(), np.int64), 3)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image.histogram(), np.int64)


_VALUES = np.arange(256, dtype=np.int64)
_POWERS = np.stack([np.ones(256, np.int64), _VALUES, _VALUES * _VALUES], axis=1)  # 256 x 3


def pixel_sums(histogram) -> tuple[int, list[int], list[int]]:
    """``(pixels, [sum of R, G, B], [sum of squares of R, G, B])`` from 768 per-channel counts
    (R, G, B; 256 values each), exact integers (int64 holds 255^2 times 2^47 pixels). Computed
    where the image is decoded, so seven integers travel instead of 768."""
    moments = np.asarray(histogram, np.int64).reshape(3, 256) @ _POWERS  # 3 x (n, sum, sq)
    return int(moments[0, 0]), [int(v) for v in moments[:, 1]], [int(v) for v in moments[:, 2]]


def inspect_image(
    data: bytes,
    width: int,
    height: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    histogram: bool = True,
    thumbnail=None,
    phash: bool = True,
) -> ImageFacts:
    """Decodes ``data`` once and checks it against the JSON's ``width`` and ``height``;
    ``histogram``: also count its pixels (``pixel_sums``) and, unless ``phash`` is off, hash
    them (``phash``); each is None otherwise. ``thumbnail``: an
    ``images.thumbnails.ThumbnailRequest``, made from the same decode (``thumbnails``).

    Raises ``RecordError`` with one of image_corrupt, image_truncated, image_too_large,
    format_not_allowed, unsupported_mode, dims_mismatch.
    """
    if width * height > max_pixels:
        raise RecordError(Reason.IMAGE_TOO_LARGE, f"{width}x{height} exceeds {max_pixels} pixels")
    digest = hashlib.sha256(data).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            fmt, mode, size, orientation, histogram, thumbs, phash = _decode(
                data, max_pixels, histogram, thumbnail, phash
            )
        except RecordError:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise RecordError(Reason.IMAGE_TOO_LARGE, str(exc)[:200]) from exc
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on hostile bytes
            text = str(exc)
            reason = Reason.IMAGE_TRUNCATED if "runcated" in text else Reason.IMAGE_CORRUPT
            raise RecordError(reason, f"{type(exc).__name__}: {text[:200]}") from exc
    flags: tuple[str, ...] = ()
    if size != (width, height):
        if size == (height, width) and orientation in (5, 6, 7, 8):
            flags = (FLAG_EXIF_SWAPPED,)
        else:
            raise RecordError(
                Reason.DIMS_MISMATCH, f"decoded {size[0]}x{size[1]}, JSON says {width}x{height}"
            )
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = None
    return ImageFacts(
        digest,
        fmt,
        mode,
        size[0],
        size[1],
        orientation,
        flags,
        histogram,
        thumbnails=thumbs,
        phash=phash,
    )
