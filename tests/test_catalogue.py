"""The catalogue of bad and unusual input, end to end: one case per row, in one dataset.

Every case sits in its own image (or record) beside good images. The build must reject each bad
record with its reason code (and nothing else), flag and count each warning, write the good
images exactly as a build of the good images alone writes them, and conserve every record kind
(read = written + rejected). It never fetches a URL from the data.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from coco_beam.pipelines.build import run

from helpers import IN_MEMORY, run_build

W, H = 32, 24
GOOD = list(range(1, 9))
PERSON, BOX = 1, 2
CATEGORIES = [
    {"id": PERSON, "name": "person", "supercategory": "person", "keypoints": ["a", "b"]},
    {"id": BOX, "name": "box", "supercategory": "thing"},
]
RING = [2.0, 2.0, 20.0, 2.0, 20.0, 15.0, 2.0, 15.0]


def _picture(seed: int, size=(W, H), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _encode(image: Image.Image, fmt="JPEG", **kw) -> bytes:
    sink = io.BytesIO()
    image.save(sink, format=fmt, **kw)
    return sink.getvalue()


def _ann(ann_id, image_id, **kw):
    ann = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": BOX,
        "bbox": [2.0, 2.0, 18.0, 13.0],
        "area": 234.0,
        "iscrowd": 0,
        "segmentation": [RING],
    }
    ann.update(kw)
    return ann


class _Dataset:
    def __init__(self, root):
        self.root = root
        self.images, self.files, self.anns, self.keypoints, self.captions = [], {}, [], [], []
        self.raw: list[tuple[str, str]] = []  # (placeholder JSON, literal text) in instances

    def image(self, image_id, data: bytes | None, *, file_name=None, width=W, height=H):
        name = file_name or f"{image_id:06d}.jpg"
        self.images.append(
            {
                "id": image_id,
                "file_name": name,
                "width": width,
                "height": height,
                "coco_url": URL_PLACEHOLDER,
                "flickr_url": URL_PLACEHOLDER,
            }
        )
        if data is not None:
            self.files[name] = data
        return image_id

    def write(self, url: str):
        ann_dir = os.path.join(self.root, "annotations")
        img_dir = os.path.join(self.root, "val2017")
        os.makedirs(ann_dir, exist_ok=True)
        os.makedirs(img_dir, exist_ok=True)
        images = json.loads(json.dumps(self.images).replace(URL_PLACEHOLDER, url))
        docs = {
            "instances": {"images": images, "annotations": self.anns, "categories": CATEGORIES},
            "person_keypoints": {
                "images": images,
                "annotations": self.keypoints,
                "categories": CATEGORIES[:1],
            },
            "captions": {"images": images, "annotations": self.captions},
        }
        for family, doc in docs.items():
            text = json.dumps(doc)
            if family == "instances":
                for placeholder, literal in self.raw:
                    text = text.replace(placeholder, literal)
            with open(os.path.join(ann_dir, f"{family}_val2017.json"), "w") as f:
                f.write(text)
        for name, data in self.files.items():
            with open(os.path.join(img_dir, name), "wb") as f:
                f.write(data)


URL_PLACEHOLDER = "URL-PLACEHOLDER"


def _good(ds: _Dataset) -> None:
    for i in GOOD:
        ds.image(i, _encode(_picture(i)))
        ds.anns.append(_ann(100 + i, i))
        ds.captions.append({"id": 200 + i, "image_id": i, "caption": f"good picture {i}"})
    # A person with keypoints (its instance in instances, its joints in person_keypoints).
    ds.anns.append(_ann(150, 1, category_id=PERSON))
    ds.keypoints.append(
        {**_ann(150, 1, category_id=PERSON), "keypoints": [3, 4, 2, 0, 0, 0], "num_keypoints": 1}
    )


def _carrier(ds: _Dataset, image_id: int) -> int:
    """A good image that carries one case's record."""
    return ds.image(image_id, _encode(_picture(image_id)))


def _cases(ds: _Dataset) -> tuple[list, dict, dict]:
    """Adds every case; returns the expected rejections ``[(kind, key, reason)]``, image flags
    ``{image_id: flag}`` and annotation flags ``{annotation_id: flag}``."""
    rejected, image_flags, ann_flags = [], {}, {}

    def reject(kind, key, reason):
        rejected.append((kind, str(key), reason))

    # --- images
    good_jpeg = _encode(_picture(301))
    ds.image(301, good_jpeg[: len(good_jpeg) // 2])
    reject("image", 301, "image_truncated")
    ds.image(302, os.urandom(700))
    reject("image", 302, "image_corrupt")
    ds.image(303, _encode(_picture(303), "TIFF"))
    reject("image", 303, "format_not_allowed")
    ds.image(304, _encode(_picture(304, mode="L")))  # grayscale: kept, mode L
    ds.image(305, _encode(_picture(305, mode="CMYK")))  # CMYK: kept, mode CMYK
    sixteen = Image.fromarray(np.full((H, W), 40000, np.uint16))
    ds.image(306, _encode(sixteen, "PNG"), file_name="000306.png")
    reject("image", 306, "unsupported_mode")
    exif = Image.Exif()
    exif[0x0112] = 6
    ds.image(307, _encode(_picture(307, size=(H, W)), exif=exif))  # stored 24x32, JSON 32x24
    image_flags[307] = "exif_dims_swapped"
    ds.image(308, _encode(_picture(308)), width=W + 1)
    reject("image", 308, "dims_mismatch")
    # Decompression bombs: JSON's size over the limit; and a small file whose header is.
    ds.image(309, _encode(_picture(309)), width=4000, height=4000)
    reject("image", 309, "image_too_large")
    bomb = _encode(Image.new("L", (3000, 3000)), "PNG")
    ds.image(310, bomb, file_name="000310.png")
    reject("image", 310, "image_too_large")
    ds.image(311, None)  # no file
    reject("image", 311, "image_missing")
    ds.image(312, _encode(_picture(312)))
    ds.image(312, _encode(_picture(312)))  # listed twice: one image, rejected, both copies
    reject("image", 312, "duplicate_image_id")
    ds.image(313, _encode(_picture(313), "PNG"))  # a PNG named .jpg: kept, flagged
    image_flags[313] = "extension_mismatch"
    for image_id, name in [
        (320, "../outside.jpg"),
        (321, "/etc/passwd"),
        (322, "gs://bucket/x.jpg"),
        (323, "sub\\x.jpg"),
        (324, "nul\x00.jpg"),
        (325, "line\nbreak.jpg"),
    ]:
        ds.image(image_id, None, file_name=name)
        reject("image", image_id, "unsafe_path")
    ds.image(330, _encode(_picture(330)))  # an image without annotations: kept
    ds.files["unlisted.jpg"] = _encode(_picture(331))  # a file no record names

    # --- annotations, each on its own good carrier image
    def case(ann_id, **kw):
        _carrier(ds, ann_id)
        ds.anns.append(_ann(ann_id, ann_id, **kw))

    _carrier(ds, 401)
    _carrier(ds, 402)
    ds.anns += [_ann(4000, 401), _ann(4000, 402)]
    reject("annotation", 4000, "duplicate_annotation_id")
    reject("annotation", 4000, "duplicate_annotation_id")
    ds.anns.append(_ann(403, 99999))
    reject("annotation", 403, "orphan_annotation")
    case(404, category_id=77)
    reject("annotation", 404, "unknown_category")
    case(405, segmentation=[RING, [1.0, 1.0, 3.0, 3.0]])
    ann_flags[405] = "degenerate_ring_dropped"
    case(406, segmentation=[[1.0, 1.0, 3.0, 3.0]])
    reject("annotation", 406, "degenerate_polygon")
    case(407, segmentation=[RING + [5.0]])
    reject("annotation", 407, "odd_polygon_length")
    case(408, segmentation=[[2.0, 2.0, "@NAN@", 2.0, 20.0, 15.0]])
    ds.raw.append(('"@NAN@"', "NaN"))
    reject("annotation", 408, "non_finite_value")
    case(409, bbox=[2.0, 2.0, "@INF@", 13.0])
    ds.raw.append(('"@INF@"', "Infinity"))
    reject("annotation", 409, "non_finite_value")
    case(410, bbox=[20.0, 20.0, 30.0, 30.0])
    ann_flags[410] = "bbox_outside_image"
    case(411, bbox=[2.0, 2.0, 0.0, 5.0])
    ann_flags[411] = "bbox_zero_size"
    case(412, bbox=[2.0, 2.0, -3.0, 5.0])
    reject("annotation", 412, "invalid_bbox")
    case(413, iscrowd=1, segmentation={"size": [H, W], "counts": [10, 20]})
    reject("annotation", 413, "invalid_rle")
    case(414, iscrowd=1, segmentation={"size": [H, W], "counts": "\x01\x02garbage"})
    reject("annotation", 414, "invalid_rle")
    case(415, iscrowd=2)
    reject("annotation", 415, "schema_violation")
    case(416, iscrowd=1)  # polygons flagged crowd: the mask follows the polygons
    ann_flags[416] = "iscrowd_mismatch"
    case(417, id="417")
    reject("annotation", 417, "schema_violation")
    case(418, category_id="@DUP@")
    ds.raw.append(('"category_id": "@DUP@"', f'"category_id": {BOX}, "category_id": {BOX}'))
    reject("annotation", 418, "duplicate_key")
    # Keypoints: the person instance in instances, its joints in person_keypoints.
    for ann_id, keypoints, num in [
        (420, [3, 4, 2, 5, 6, 2, 7, 8, 2], 3),  # 3 joints, the category has 2
        (421, [3, 4, 3, 0, 0, 0], 1),  # visibility 3
        (422, [3, 4, 2, 5, 6, 1], 1),  # two visible, num_keypoints says 1
    ]:
        case(ann_id, category_id=PERSON)
        ds.keypoints.append(
            {
                **_ann(ann_id, ann_id, category_id=PERSON),
                "keypoints": keypoints,
                "num_keypoints": num,
            }
        )
    reject("annotation", 420, "invalid_keypoints")
    reject("annotation", 421, "invalid_keypoints")
    ann_flags[422] = "num_keypoints_mismatch"

    # --- captions
    _carrier(ds, 501)
    ds.captions.append({"id": 5001, "image_id": 501, "caption": "a lone \ud800 surrogate"})
    reject("caption", 5001, "invalid_unicode")
    ds.captions.append({"id": 5002, "image_id": 501, "caption": 42})
    reject("caption", 5002, "schema_violation")
    return rejected, image_flags, ann_flags


class _Counting(http.server.BaseHTTPRequestHandler):
    requests = 0

    def do_GET(self):  # noqa: N802 - the standard library's name
        type(self).requests += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/img.jpg"
    root = tmp_path_factory.mktemp("catalogue")
    ds = _Dataset(str(root / "bad"))
    _good(ds)
    expected = _cases(ds)
    ds.write(url)
    good = _Dataset(str(root / "good"))
    _good(good)
    good.write(url)
    args = ["--num-shards=1", "--max-pixels=1000000", "--max-rejected-fraction=0.9"]
    bad_run = run_build(f"--coco-root={ds.root}", f"--output={root / 'bad-out'}", *args)
    good_run = run_build(f"--coco-root={good.root}", f"--output={root / 'good-out'}", *args)
    server.shutdown()
    return {"bad": bad_run, "good": good_run, "expected": expected, "root": ds.root}


def _rows(run_dir: str) -> dict:
    table = pq.read_table(os.path.join(run_dir, "data", "val2017-00000-of-00001.parquet"))
    return {row["image_id"]: row for row in table.to_pylist()}


def test_every_bad_record_is_rejected_with_its_reason_and_nothing_else(catalogue):
    run_dir, manifest = catalogue["bad"]
    expected, _, _ = catalogue["expected"]
    with open(os.path.join(run_dir, "rejected", "rejected.jsonl")) as f:
        rejected = [json.loads(line) for line in f]
    got = sorted((r["kind"], r["key"], r["reason"]) for r in rejected)
    assert got == sorted(expected)
    for r in rejected:
        fields = {"kind", "key", "reason", "error_type", "message", "source", "payload_sha256"}
        assert fields <= set(r)
        assert "coco-beam:" not in json.dumps(r)  # no internal marker leaks out
    # Conservation, per kind, as the manifest records it.
    for kind, c in manifest["counts"].items():
        assert c["read"] == c["written"] + c["rejected"], kind
    assert manifest["counts"]["image"]["rejected"] == sum(1 for e in expected if e[0] == "image")
    # The file no record names, and the file of the image listed twice (rejected before any
    # file is opened: files are counted as found only by the step that opens them).
    assert manifest["unlisted_files"] == {"val2017": 2}


def test_good_images_are_written_exactly_as_without_the_bad_ones(catalogue):
    bad, good = _rows(catalogue["bad"][0]), _rows(catalogue["good"][0])
    assert set(good) == set(GOOD)
    for image_id in GOOD:
        assert bad[image_id] == good[image_id]


def test_warnings_are_flagged_on_the_row_and_counted(catalogue):
    run_dir, _ = catalogue["bad"]
    _, image_flags, ann_flags = catalogue["expected"]
    rows = _rows(run_dir)
    for image_id, flag in image_flags.items():
        assert flag in rows[image_id]["flags"], image_id
    anns = {a["id"]: a for row in rows.values() for a in row["annotations"]}
    for ann_id, flag in ann_flags.items():
        assert flag in anns[ann_id]["flags"], ann_id
    assert rows[304]["mode"] == "L" and rows[305]["mode"] == "CMYK"
    assert rows[313]["format"] == "png"
    assert rows[330]["annotations"] == []
    with open(os.path.join(run_dir, "stats", "stats.json")) as f:
        stats = json.load(f)
    for flag in [*image_flags.values(), *ann_flags.values()]:
        assert stats["flags"].get(flag, 0) >= 1, flag
    assert stats["num_images_without_annotations"] >= 1


def test_no_url_from_the_data_is_fetched(catalogue):
    assert _Counting.requests == 0


def test_deeply_nested_json_fails_that_file_with_a_clear_message(tmp_path):
    ds = _Dataset(str(tmp_path / "coco"))
    _good(ds)
    ds.write("http://127.0.0.1:9/")
    path = os.path.join(ds.root, "annotations", "captions_val2017.json")
    with open(path, "w") as f:
        f.write('{"annotations": [' + "[" * 50_000 + "]" * 50_000 + "]}")
    with pytest.raises(Exception, match=r"captions_val2017.json.*deeper than 64 levels"):
        run([f"--coco-root={ds.root}", f"--output={tmp_path / 'out'}", *IN_MEMORY])
    assert not (tmp_path / "out" / "LATEST").exists()
