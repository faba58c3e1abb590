"""Pure core: small JPEG thumbnails of a decoded image, for the report's example images.

``ThumbnailRequest`` says what to make of one image; ``make_thumbnails`` makes it from the
image already decoded (the decoder calls it, in the child process that decoded the image, so
nothing is decoded twice); ``thumbnails_of`` decodes bytes first, for images whose decode
facts were reused; ``plain_thumbnail_of`` decodes a JPEG at a reduced scale, for the few images
only the publishing step can choose (duplicate groups), which are never decoded elsewhere.

Guarantees:
  * a thumbnail is an RGB baseline JPEG of at most ``THUMB_SIDE`` px on its long side (an
    instance crop: ``CROP_SIDE``), encoded with fixed settings (quality ``JPEG_QUALITY``, 4:2:0,
    no EXIF, not optimized), so the same pixels give the same bytes;
  * pixels are shown as stored, not rotated by their EXIF orientation: COCO's annotations
    live in the stored pixel space, so masks drawn over them line up;
  * masks are drawn from the annotations' RLE (full resolution), reduced to the thumbnail's
    size: a tint over the instance's pixels and nothing else.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = [
    "CROP_SIDE",
    "JPEG_QUALITY",
    "THUMB_SIDE",
    "ThumbnailRequest",
    "Thumbnails",
    "crop_instance",
    "draw_masks",
    "encode_jpeg",
    "make_thumbnails",
    "plain_thumbnail_of",
    "shrink",
    "thumbnails_of",
]

# About 4 KB a photo at 128 px and quality 70: 80 categories with three examples each, the
# flags' examples and two instance crops per category stay within a few megabytes.
THUMB_SIDE = 128
CROP_SIDE = 96
JPEG_QUALITY = 70
# The tint drawn over an instance's pixels (RGB) and how much of it shows.
MASK_COLOUR = (255, 40, 160)
MASK_OPACITY = 0.55
# Context kept around an instance crop: a quarter of its box on each side, at least 4 px.
_CROP_MARGIN = 0.25
_CROP_MARGIN_MIN = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThumbnailRequest:
    """What to make of one decoded image. ``plain``: its thumbnail, whatever it turns out to
    hold; ``plain_if_rotated``: its thumbnail only when its EXIF orientation is one of 2 to 8;
    ``plain_if_format_not``: only when its decoded format is not this one (what its file name
    says; "" for a name that says no format); ``overlays``: ``(category id, (rle, ...))``, a
    thumbnail with those masks drawn; ``crops``: ``(annotation id, bbox, rle)``, the instance
    cut out at full resolution with its mask drawn."""

    plain: bool = False
    plain_if_rotated: bool = False
    plain_if_format_not: str | None = None
    overlays: tuple = ()
    crops: tuple = ()

    def wants_plain(self, fmt: str, orientation) -> bool:
        """Whether the image's plain thumbnail is made, given what decoding found."""
        return (
            self.plain
            or (self.plain_if_rotated and orientation in (2, 3, 4, 5, 6, 7, 8))
            or (self.plain_if_format_not is not None and fmt != self.plain_if_format_not)
        )

    def make(self, image: Image.Image, *, fmt: str, orientation) -> Thumbnails:
        """``make_thumbnails`` of this request (what the decoder calls)."""
        return make_thumbnails(image, self, fmt=fmt, orientation=orientation)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Thumbnails:
    """JPEG bytes made for one image: ``plain`` (or None), ``overlays`` as ``(category id,
    jpeg)`` and ``crops`` as ``(annotation id, jpeg)``, in the request's order."""

    plain: bytes | None = None
    overlays: tuple = ()
    crops: tuple = ()

    def overlay(self, category_id: int) -> bytes | None:
        return next((jpeg for cat, jpeg in self.overlays if cat == category_id), None)

    def crop(self, annotation_id: int) -> bytes | None:
        return next((jpeg for ann, jpeg in self.crops if ann == annotation_id), None)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _fit(width: int, height: int, side: int) -> tuple[int, int]:
    """The size of ``width`` x ``height`` with its long side ``side`` (at least 1 px each)."""
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def shrink(image: Image.Image, side: int = THUMB_SIDE) -> Image.Image:
    """``image`` in RGB, reduced so its long side is at most ``side`` (box filter: the mean of
    the pixels each thumbnail pixel covers); a smaller image is kept as it is."""
    if max(image.size) <= side:
        return _rgb(image).copy()
    # Reducing in a grey or RGB image's own mode, then converting, costs a fraction of
    # converting every pixel of a large image first.
    source = image if image.mode in ("L", "RGB") else _rgb(image)
    return _rgb(source.resize(_fit(*image.size, side), Image.Resampling.BOX))


def encode_jpeg(image: Image.Image) -> bytes:
    """The thumbnail's JPEG bytes, under fixed settings (see the module's guarantees)."""
    out = io.BytesIO()
    _rgb(image).save(out, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0", optimize=False)
    return out.getvalue()


def _mask(rles, size: tuple[int, int]) -> np.ndarray:
    """The union of ``rles`` (compressed COCO RLE dicts) as a uint8 0/1 array, height x width."""
    width, height = size
    union = np.zeros((height, width), np.uint8)
    for rle in rles:
        counts = rle["counts"]
        counts = counts.encode() if isinstance(counts, str) else counts
        m = mask_utils.decode({"size": list(rle["size"]), "counts": counts})
        if m.shape == union.shape:
            union |= m
    return union


def draw_masks(thumb: Image.Image, mask: np.ndarray) -> Image.Image:
    """``thumb`` (RGB) with ``mask`` (0/1, any size: reduced to the thumbnail's) tinted."""
    alpha = Image.fromarray(np.ascontiguousarray(mask, np.uint8) * np.uint8(255))
    if alpha.size != thumb.size:
        alpha = alpha.resize(thumb.size, Image.Resampling.BOX)
    alpha = alpha.point(lambda v: round(v * MASK_OPACITY))
    tint = Image.new("RGB", thumb.size, MASK_COLOUR)
    return Image.composite(tint, thumb, alpha)


def crop_instance(image: Image.Image, bbox, mask: np.ndarray | None = None) -> Image.Image:
    """The instance of ``bbox`` (COCO ``[x, y, w, h]``) cut out of the full-resolution
    ``image`` with some context around it, its ``mask`` (full image size) drawn, scaled so its
    long side is ``CROP_SIDE`` (a tiny instance is enlarged with square pixels, as it is)."""
    x, y, w, h = bbox
    margin = max(_CROP_MARGIN * max(w, h), _CROP_MARGIN_MIN)
    left = max(0, int(np.floor(x - margin)))
    top = max(0, int(np.floor(y - margin)))
    right = min(image.width, int(np.ceil(x + w + margin)))
    bottom = min(image.height, int(np.ceil(y + h + margin)))
    if right <= left or bottom <= top:  # a box past the edge: the nearest pixels instead
        left, top = min(left, image.width - 1), min(top, image.height - 1)
        right, bottom = left + 1, top + 1
    box = (left, top, right, bottom)
    piece = _rgb(image.crop(box))
    if mask is not None:
        piece = draw_masks(piece, mask[top:bottom, left:right])
    size = _fit(*piece.size, CROP_SIDE)
    enlarge = size[0] > piece.width
    return piece.resize(size, Image.Resampling.NEAREST if enlarge else Image.Resampling.BOX)


def make_thumbnails(
    image: Image.Image, request: ThumbnailRequest, *, fmt: str, orientation
) -> Thumbnails:
    """What ``request`` asks of the decoded ``image`` (loaded; any mode), as JPEG bytes.
    ``fmt`` and ``orientation``: what decoding found (for the conditional plain thumbnail)."""
    small = None
    plain = None
    if request.wants_plain(fmt, orientation):
        small = shrink(image)
        plain = encode_jpeg(small)
    overlays = []
    for category_id, rles in request.overlays:
        small = small if small is not None else shrink(image)
        overlays.append((category_id, encode_jpeg(draw_masks(small, _mask(rles, image.size)))))
    crops = []
    for annotation_id, bbox, rle in request.crops:
        mask = _mask([rle], image.size) if rle is not None else None
        crops.append((annotation_id, encode_jpeg(crop_instance(image, bbox, mask))))
    return Thumbnails(plain=plain, overlays=tuple(overlays), crops=tuple(crops))


def thumbnails_of(data: bytes, request: ThumbnailRequest) -> Thumbnails:
    """``make_thumbnails`` of encoded image bytes (JPEG or PNG, decoded here): for an image
    whose decode facts were known already, or one read back by the publishing step."""
    with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as image:
        image.load()
        exif = image.getexif().get(0x0112)
        return make_thumbnails(image, request, fmt=image.format.lower(), orientation=exif)


def plain_thumbnail_of(data: bytes) -> bytes:
    """The plain thumbnail of encoded image bytes (JPEG or PNG). A JPEG is decoded at the
    smallest of libjpeg's scales (1/8 to 1) that still covers the thumbnail (Pillow's
    ``draft``), about a third less work than a full decode; the pixels then go through
    ``shrink`` as any other. Deterministic, but not the bytes ``thumbnails_of`` would make."""
    with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as image:
        image.draft(None, _fit(*image.size, THUMB_SIDE))
        image.load()
        return encode_jpeg(shrink(image))
