"""Unit tests of image checks and decoding."""

import io

import numpy as np
import pytest
from google.api_core.exceptions import InternalServerError, NotFound, ServiceUnavailable
from PIL import Image

from coco_beam.schemas.errors import RecordError
from coco_beam.schemas.records import Reason
from coco_beam.transforms.annotations.checks import safe_relative_path
from coco_beam.transforms.images.decode import FLAG_EXIF_SWAPPED, inspect_image


def _encode(width=32, height=24, fmt="JPEG", mode="RGB", exif=None):
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    kwargs = {"exif": exif} if exif is not None else {}
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_jpeg_facts():
    facts = inspect_image(_encode(), 32, 24)
    assert (facts.format, facts.mode, facts.width, facts.height) == ("jpeg", "RGB", 32, 24)
    assert facts.exif_orientation is None and facts.flags == ()


def test_png_grayscale():
    facts = inspect_image(_encode(fmt="PNG", mode="L"), 32, 24)
    assert (facts.format, facts.mode) == ("png", "L")


def test_exif_swap_is_flagged_not_rejected():
    exif = Image.Exif()
    exif[0x0112] = 6
    facts = inspect_image(_encode(exif=exif), 24, 32)
    assert facts.flags == (FLAG_EXIF_SWAPPED,) and facts.exif_orientation == 6


@pytest.mark.parametrize(
    "name, data, width, height, reason",
    [
        ("truncated", _encode(200, 150)[:1500], 200, 150, Reason.IMAGE_TRUNCATED),
        ("garbage", b"not an image at all", 32, 24, Reason.IMAGE_CORRUPT),
        ("gif", _encode(fmt="GIF", mode="P"), 32, 24, Reason.FORMAT_NOT_ALLOWED),
        ("dims", _encode(), 33, 24, Reason.DIMS_MISMATCH),
        ("swapped_without_exif", _encode(), 24, 32, Reason.DIMS_MISMATCH),
        ("too_large_json", _encode(), 100_000, 100_000, Reason.IMAGE_TOO_LARGE),
        ("mode_16bit", None, 32, 24, Reason.UNSUPPORTED_MODE),
    ],
)
def test_rejections(name, data, width, height, reason):
    if data is None:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((24, 32), np.uint16) + 300).save(buf, format="PNG")
        data = buf.getvalue()
    with pytest.raises(RecordError) as info:
        inspect_image(data, width, height)
    assert info.value.reason == reason


def test_header_pixel_limit():
    with pytest.raises(RecordError) as info:
        inspect_image(_encode(64, 64), 64, 64, max_pixels=1000 + 0 * 64)
    assert info.value.reason == Reason.IMAGE_TOO_LARGE


@pytest.mark.parametrize(
    "name, ok",
    [
        ("000000000139.jpg", True),
        ("sub/dir/a.png", True),
        ("../etc/passwd", False),
        ("a/../../b.jpg", False),
        ("/etc/passwd", False),
        ("gs://bucket/x.jpg", False),
        ("c:\\x.jpg", False),
        ("a\\b.jpg", False),
        ("a\x00.jpg", False),
        ("a\n.jpg", False),
        ("", False),
        ("./a.jpg", False),
    ],
)
def test_safe_relative_path(name, ok):
    assert safe_relative_path(name) is ok


class _FlakyFilesystem:
    """A Beam filesystem stand-in whose reads fail as storage fails."""

    def __init__(self, exc):
        self._exc = exc

    def open(self, path, compression_type=None):
        raise self._exc


def _plan():
    from coco_beam.schemas.records import ImagePlan

    return ImagePlan("val", 1, "1.jpg", 32, 24, "gs://b/val/1.jpg", "a.json", [], [], [])


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError("read timed out"),
        ConnectionResetError("connection reset by peer"),
        ServiceUnavailable("503"),
        InternalServerError("500"),
    ],
)
def test_transient_storage_errors_are_raised_for_the_runner_to_retry(exc):
    """Never a rejection: the bundle fails and the runner retries it (a 503 proxy in front of a
    real GCS server shows the retries end to end, in test_gcs)."""
    from coco_beam.transforms.shards.load import load_image

    with pytest.raises(type(exc)):
        load_image(_plan(), 10**6, filesystem=_FlakyFilesystem(exc))


def test_a_missing_file_is_a_permanent_rejection():
    from coco_beam.transforms.shards.load import load_image

    for exc in (FileNotFoundError("gone"), NotFound("no such object")):
        rejected = load_image(_plan(), 10**6, filesystem=_FlakyFilesystem(exc))
        assert rejected.reason == Reason.IMAGE_MISSING
