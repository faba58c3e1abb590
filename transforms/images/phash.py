"""Pure core: a perceptual hash of a decoded image, and the Hamming distance of two hashes.

``dct_hash`` is a 64-bit DCT hash (pHash's method): the image in grey, reduced to 32 x 32
pixels, its 2-D DCT-II, and one bit per low-frequency coefficient: set when the coefficient is
above their median. Re-encoding, resizing, a slight crop and a change of brightness move the
low frequencies little, so copies land a few bits apart while unrelated photos differ in about
half of the 64 (``transforms.stats.near_duplicates`` measures both).

Guarantees:
  * the same pixels give the same hash on every machine with the same Pillow: the reduction
    is Pillow's fixed-point code (an integer ``reduce`` to within 4 times the thumbnail, then
    its box filter) and the DCT runs in exact integer arithmetic (an integer-scaled DCT
    matrix, int64 products that cannot overflow), so no floating-point summation order or
    BLAS can flip a bit near the median;
  * the 64 bits are the 64 lowest-frequency coefficients after the DC term, in zigzag order
    (by ``u + v``, then ``u``): the DC term is the mean grey, always the largest, and its bit
    would carry nothing;
  * any Pillow mode ``inspect_image`` accepts is hashed (grey under Pillow's ``convert``);
  * the hash is 16 lower-case hex digits: a string travels through JSON, Parquet and Beam's
    coders without a sign or a 64-bit limit; ``hamming`` compares two of them.

Cost: 0.26-0.27 ms of CPU per 640-pixel image (coco-tiny's and the synthetic ones alike),
6-8% of a build's CPU: the grey conversion (0.13-0.15 ms) and the reduction to 32 x 32 (about
0.1 ms) each touch every pixel once, the DCT takes 0.02 ms. Reducing in two steps
(``reducing_gap=4``) costs 15% less than one box filter over the whole image and moves no copy
of coco-tiny's farther from its original. Cheaper thumbnails were measured on coco-tiny and not
taken: a ``reducing_gap`` of 2 saves 10-15% and lets half-size copies drift to 6 bits and two
distinct images come to 14; reducing the RGB image first, or sampling its pixels, saves 25-65%
and lets half-size or cropped copies drift to 14-20 bits, past the threshold; the green channel
instead of the grey conversion saves 40%, and a copy turned grey then lies up to 12 bits from
its original instead of 2.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["HASH_BITS", "dct_hash", "dct_hash_of_grey", "hamming"]

HASH_BITS = 64
_SIDE = 32  # pixels a side of the grey thumbnail the DCT runs on (pHash's choice)
# The integer DCT matrix is the real one times 2^12 (entries under 2^11): a row times 32
# pixels of 255 is under 2^24, times 32 more entries under 2^40: exact in int64.
_SCALE_BITS = 12
# The integer ``reduce`` before the box filter leaves at least this many pixels per thumbnail
# pixel: as robust as one box filter over the whole image (measured), 15% cheaper.
_REDUCING_GAP = 4.0


def _zigzag(count: int) -> list[tuple[int, int]]:
    """The first ``count`` coefficients after the DC term, by ``u + v`` then ``u``."""
    order = sorted(
        ((u, v) for u in range(_SIDE) for v in range(_SIDE) if 0 < u + v <= 11),
        key=lambda uv: (uv[0] + uv[1], uv[0]),
    )
    return order[:count]


_ORDER = _zigzag(HASH_BITS)
_ROWS = max(max(u, v) for u, v in _ORDER) + 1  # 11: only these DCT rows are needed


def _dct_matrix() -> np.ndarray:
    """The first ``_ROWS`` rows of the orthonormal DCT-II matrix of size 32, scaled to
    integers (rounded once, here, with a fixed formula)."""
    n = np.arange(_SIDE)
    k = np.arange(_ROWS)[:, None]
    basis = np.cos(np.pi * (2 * n + 1) * k / (2 * _SIDE)) * np.sqrt(2.0 / _SIDE)
    basis[0] /= np.sqrt(2.0)
    return np.rint(basis * (1 << _SCALE_BITS)).astype(np.int64)


_DCT = _dct_matrix()
_U = np.array([u for u, _ in _ORDER])
_V = np.array([v for _, v in _ORDER])
_WEIGHTS = np.left_shift(np.uint64(1), np.arange(HASH_BITS - 1, -1, -1, dtype=np.uint64))


def dct_hash_of_grey(grey: np.ndarray) -> str:
    """The hash of a 32 x 32 grey thumbnail (integers 0-255)."""
    pixels = np.asarray(grey, np.int64)
    if pixels.shape != (_SIDE, _SIDE):
        raise ValueError(f"expected a {_SIDE}x{_SIDE} thumbnail, got {pixels.shape}")
    coefficients = (_DCT @ pixels @ _DCT.T)[_U, _V]
    ordered = np.sort(coefficients)
    # Above the median, in integers: 2c > (32nd + 33rd smallest).
    middle = ordered[HASH_BITS // 2 - 1] + ordered[HASH_BITS // 2]
    bits = (2 * coefficients > middle).astype(np.uint64)
    return f"{int(np.sum(bits * _WEIGHTS, dtype=np.uint64)):016x}"


def dct_hash(image: Image.Image) -> str:
    """The hash of a decoded Pillow image, in its stored pixel space (no EXIF rotation, as
    COCO's annotations)."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # palette looked up, alpha dropped, as the histogram's
    grey = image if image.mode == "L" else image.convert("L")
    thumbnail = grey.resize((_SIDE, _SIDE), Image.Resampling.BOX, reducing_gap=_REDUCING_GAP)
    return dct_hash_of_grey(np.asarray(thumbnail))


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
