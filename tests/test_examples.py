"""The report's example images: thumbnails from one decode, bottom-k example sets that merge in
any order, the page's picture sections and their size bound, and a build's page whatever its
bundling."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils

from coco_beam.pipelines.synth import COCO_CATEGORIES
from coco_beam.schemas.records import ImagePlan
from coco_beam.transforms.images.decode import inspect_image
from coco_beam.transforms.images.thumbnails import (
    CROP_SIDE,
    THUMB_SIDE,
    ThumbnailRequest,
    crop_instance,
    draw_masks,
    encode_jpeg,
    make_thumbnails,
    plain_thumbnail_of,
    shrink,
    thumbnails_of,
)
from coco_beam.transforms.stats.accumulators import merge, new_accumulator
from coco_beam.transforms.stats.examples import (
    EXIF_ROTATED,
    PRESELECT,
    ExamplePicker,
    ExampleSets,
    K,
    Preselection,
    example_pictures,
    examples_document,
    image_key,
)
from coco_beam.transforms.stats.report import render_report
from coco_beam.transforms.stats.summary import never_together, stats_document

from helpers import run_build


def _photo(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Noise over a gradient: about as hard to compress as a photo."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, w, dtype=np.float64)[None, :, None] + np.zeros((h, w, 3))
    pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _encoded(image: Image.Image, fmt: str = "JPEG", exif_orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _rle(h: int, w: int, box: tuple[int, int, int, int]) -> dict:
    """The compressed RLE of the rectangle ``box`` (x, y, w, h) in an ``h`` x ``w`` image."""
    m = np.zeros((h, w), np.uint8, order="F")
    x, y, bw, bh = box
    m[y : y + bh, x : x + bw] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": rle["counts"].decode()}


def _ann(ann_id: int, cat: int, box, *, w: int = 64, h: int = 48, crowd: int = 0, flags=()):
    return {
        "id": ann_id,
        "category_id": cat,
        "bbox": [float(v) for v in box],
        "area": float(box[2] * box[3]),
        "iscrowd": crowd,
        "rle": _rle(h, w, box),
        "flags": list(flags),
    }


def _plan(split: str, image_id: int, anns=(), flags=(), file_name: str | None = None):
    return ImagePlan(
        split=split,
        image_id=image_id,
        file_name=file_name or f"{image_id:012d}.jpg",
        width=64,
        height=48,
        path="",
        source="",
        annotations=list(anns),
        captions=[],
        flags=list(flags),
    )


# -- thumbnails --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "mode", "expected"),
    [
        pytest.param((640, 480), "RGB", (128, 96), id="landscape"),
        pytest.param((300, 1000), "L", (38, 128), id="tall-grey"),
        pytest.param((40, 30), "CMYK", (40, 30), id="small-kept"),
        pytest.param((500, 500), "P", (128, 128), id="palette"),
    ],
)
def test_shrink_fits_the_long_side_and_gives_rgb(size, mode, expected):
    thumb = shrink(_photo(*size, mode=mode))
    assert (thumb.size, thumb.mode) == (expected, "RGB")
    assert max(thumb.size) <= THUMB_SIDE


def test_jpeg_bytes_are_fixed_for_the_same_pixels():
    thumb = shrink(_photo(640, 480, seed=3))
    first = encode_jpeg(thumb)
    assert first == encode_jpeg(thumb.copy())
    assert first[:2] == b"\xff\xd8" and len(first) < 12_000
    with Image.open(io.BytesIO(first)) as back:
        assert (back.format, back.size, "exif" in back.info) == ("JPEG", (128, 96), False)


def test_masks_tint_the_instance_only():
    grey = Image.new("RGB", (200, 100), (100, 100, 100))
    mask = np.zeros((100, 200), np.uint8)
    mask[:, :100] = 1
    drawn = np.asarray(draw_masks(shrink(grey), mask)).astype(int)
    left, right = drawn[:, :60], drawn[:, 68:]
    assert (right == 100).all()
    assert (left[..., 0] > 150).all() and (left[..., 1] < 100).all()


@pytest.mark.parametrize(
    ("bbox", "expected_long_side"),
    [
        pytest.param([10, 10, 2, 3], CROP_SIDE, id="tiny-enlarged"),
        pytest.param([0, 0, 640, 480], CROP_SIDE, id="whole-image"),
        pytest.param([630, 470, 30, 30], CROP_SIDE, id="past-the-edge"),
        pytest.param([700, 500, 5, 5], CROP_SIDE, id="outside-the-image"),
    ],
)
def test_crop_instance_keeps_context_and_fits(bbox, expected_long_side):
    crop = crop_instance(_photo(640, 480), bbox)
    assert max(crop.size) == expected_long_side and crop.mode == "RGB"


def test_make_thumbnails_answers_the_request():
    image = _photo(64, 48)
    request = ThumbnailRequest(
        overlays=((3, (_rle(48, 64, (5, 5, 10, 10)),)),),
        crops=((7, (5.0, 5.0, 10.0, 10.0), _rle(48, 64, (5, 5, 10, 10))),),
    )
    thumbs = make_thumbnails(image, request, fmt="jpeg", orientation=None)
    assert thumbs.plain is None
    assert [c for c, _ in thumbs.overlays] == [3] and thumbs.overlay(3)[:2] == b"\xff\xd8"
    assert thumbs.crop(7)[:2] == b"\xff\xd8" and thumbs.crop(8) is None


@pytest.mark.parametrize(
    ("request_", "fmt", "orientation", "made"),
    [
        pytest.param(ThumbnailRequest(plain=True), "jpeg", None, True, id="plain"),
        pytest.param(ThumbnailRequest(plain_if_rotated=True), "jpeg", 6, True, id="rotated"),
        pytest.param(ThumbnailRequest(plain_if_rotated=True), "jpeg", 1, False, id="upright"),
        pytest.param(ThumbnailRequest(plain_if_format_not="jpeg"), "png", None, True, id="png"),
        pytest.param(ThumbnailRequest(plain_if_format_not="jpeg"), "jpeg", None, False, id="jpg"),
        pytest.param(ThumbnailRequest(plain_if_format_not=""), "jpeg", None, True, id="no-ext"),
    ],
)
def test_plain_thumbnail_only_when_decoding_finds_the_flag(request_, fmt, orientation, made):
    thumbs = make_thumbnails(_photo(64, 48), request_, fmt=fmt, orientation=orientation)
    assert (thumbs.plain is not None) == made


def test_the_decoder_makes_thumbnails_from_its_one_decode():
    data = _encoded(_photo(200, 150, seed=1), exif_orientation=6)
    bare = inspect_image(data, 200, 150)
    asked = inspect_image(data, 200, 150, thumbnail=ThumbnailRequest(plain_if_rotated=True))
    assert bare.thumbnails is None and asked == bare
    assert asked.pixel_sums == bare.pixel_sums
    # The same bytes as decoding them apart (what reused facts and publishing do).
    assert asked.thumbnails == thumbnails_of(data, ThumbnailRequest(plain=True))
    assert asked.thumbnails.plain is not None


@pytest.mark.parametrize(
    ("size", "fmt", "mode"),
    [
        pytest.param((640, 480), "JPEG", "RGB", id="jpeg-at-a-quarter"),
        pytest.param((300, 1000), "JPEG", "L", id="grey-jpeg-tall"),
        pytest.param((100, 80), "JPEG", "RGB", id="jpeg-smaller-than-a-thumbnail"),
        pytest.param((640, 480), "PNG", "RGB", id="png-decoded-whole"),
    ],
)
def test_a_read_back_thumbnail_looks_like_one_from_the_full_decode(size, fmt, mode):
    """What publishing makes of a duplicate group's image: the thumbnail's size, nearly the
    pixels of one made from the full decode (a reduced JPEG decode differs by rounding)."""
    data = _encoded(_photo(*size, seed=5, mode=mode), fmt=fmt)
    quick = plain_thumbnail_of(data)
    full = thumbnails_of(data, ThumbnailRequest(plain=True)).plain
    assert quick == plain_thumbnail_of(data)
    with Image.open(io.BytesIO(quick)) as a, Image.open(io.BytesIO(full)) as b:
        assert (a.format, a.mode, a.size) == ("JPEG", "RGB", b.size)
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        assert diff.mean() < 3, diff.mean()
    if fmt == "PNG":
        assert quick == full


# -- example sets ------------------------------------------------------------------------------


def _fake_thumbnails(request: ThumbnailRequest | None, facts):
    """What the decoder would answer, with small stand-in bytes (the sets only carry them)."""
    if request is None:
        return None
    from coco_beam.transforms.images.thumbnails import Thumbnails

    plain = request.wants_plain(facts.format, facts.exif_orientation)
    return Thumbnails(
        plain=b"p" if plain else None,
        overlays=tuple((cat, b"o%d" % cat) for cat, _ in request.overlays),
        crops=tuple((ann_id, b"c%d" % ann_id) for ann_id, _, _ in request.crops),
    )


class _Facts:
    def __init__(self, *, fmt="jpeg", orientation=None, flags=(), thumbnails=None):
        self.format, self.exif_orientation, self.flags = fmt, orientation, tuple(flags)
        self.thumbnails = thumbnails


def _random_images(seed: int, n: int, categories: int = 6):
    """``(plan, decoded format, EXIF orientation, decode flags)`` of ``n`` random images."""
    rng = random.Random(seed)
    images, next_ann = [], [1]
    for i in range(n):
        anns = []
        for _ in range(rng.randrange(4)):
            x, y = rng.randrange(0, 50), rng.randrange(0, 40)
            box = (x, y, rng.randrange(1, 64 - x), rng.randrange(1, 48 - y))
            flags = ["bbox_outside_image"] if rng.random() < 0.1 else []
            anns.append(
                _ann(next_ann[0], rng.randrange(1, categories + 1), box, crowd=rng.random() < 0.1)
            )
            anns[-1]["flags"] = flags
            next_ann[0] += 1
        plan = _plan(rng.choice(["train", "val"]), 1000 + i, anns)
        fmt = "png" if rng.random() < 0.1 else "jpeg"
        orientation = rng.choice([None, None, None, 1, 6])
        decode_flags = ["extension_mismatch"] if fmt == "png" else []
        images.append((plan, fmt, orientation, decode_flags))
    return images


def _pick(images, sets=None, lag: int = 0) -> ExampleSets:
    """Runs a picker as the shard writer does: requests are made ``lag`` images ahead of
    adding them (the read-ahead window)."""
    sets = sets if sets is not None else ExampleSets()
    picker = ExamplePicker(sets)
    pending = []
    for image in images + [None] * lag:
        if image is not None:
            plan, fmt, orientation, flags = image
            request = picker.request(plan, expected_format="jpeg")
            pending.append((plan, fmt, orientation, flags, request))
        if len(pending) > lag or (image is None and pending):
            plan, fmt, orientation, flags, request = pending.pop(0)
            facts = _Facts(fmt=fmt, orientation=orientation, flags=flags)
            facts.thumbnails = _fake_thumbnails(request, facts)
            picker.add(plan, facts)
    return sets


def _brute_force(images) -> dict:
    """The example sets as their definition states them, from every image at once."""
    categories, flags, smallest, largest = {}, {}, {}, {}
    for plan, _, orientation, decode_flags in images:
        key = image_key(plan.split, plan.image_id)
        for cat in {a["category_id"] for a in plan.annotations}:
            categories.setdefault(cat, []).append((key, plan.split, plan.image_id))
        names = set(decode_flags) | {f for a in plan.annotations for f in a["flags"]}
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            names.add(EXIF_ROTATED)
        for flag in names:
            flags.setdefault(flag, []).append((key, plan.split, plan.image_id))
        for a in plan.annotations:
            if a["iscrowd"]:
                continue
            smallest.setdefault(a["category_id"], []).append(((a["area"], a["id"]), a["id"]))
            largest.setdefault(a["category_id"], []).append(((-a["area"], a["id"]), a["id"]))

    def bottom(groups, k):
        return {g: [e[1:] for e in sorted(v)[:k]] for g, v in groups.items()}

    def areas(groups):
        return {g: sorted(v)[0][0][0] for g, v in groups.items()}

    return {
        "categories": bottom(categories, K["categories"]),
        "flags": bottom(flags, K["flags"]),
        "smallest": areas(smallest),
        "largest": areas(largest),
    }


def _as_brute(sets: ExampleSets) -> dict:
    return {
        "categories": {g: [e[1:3] for e in v] for g, v in sets.categories.items()},
        "flags": {g: [e[1:3] for e in v] for g, v in sets.flags.items()},
        "smallest": {g: v[0][0][0] for g, v in sets.smallest.items()},
        "largest": {g: v[0][0][0] for g, v in sets.largest.items()},
    }


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 60), st.integers(0, 8))
def test_picker_finds_the_bottom_k_even_with_reads_ahead(seed, n, lag):
    """Every image that belongs in a set was asked a thumbnail for, though the requests run
    ``lag`` images ahead of the adds; the sets are what their definition says."""
    images = _random_images(seed, n)
    assert _as_brute(_pick(images, lag=lag)) == _brute_force(images)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 50), st.integers(1, 6))
def test_three_ways_of_merging_examples_agree(seed, n, shards):
    """Sequential; one set per shard, then merged; merged in another order, in halves: the
    same sets. Merging changes only the set merged into."""
    images = _random_images(seed, n)
    sequential = _pick(images)
    parts = [_pick(images[i::shards]) for i in range(shards)]
    before = copy.deepcopy(parts)
    per_shard = ExampleSets()
    for part in parts:
        per_shard.merge(part)
    shuffled = parts[:]
    random.Random(seed).shuffle(shuffled)
    halves = [ExampleSets(), ExampleSets()]
    for i, part in enumerate(shuffled):
        halves[i % 2].merge(part)
    halves[1].merge(halves[0])
    assert parts == before
    assert per_shard == sequential and halves[1] == sequential
    # Through the statistics accumulator and its own merge, too.
    accs = []
    for part in parts:
        acc = new_accumulator()
        acc.examples = part
        accs.append(acc)
    assert merge(accs).examples == sequential


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 80), st.integers(1, 6))
def test_the_datasets_preselection_gives_the_same_sets_from_few_thumbnails(seed, n, shards):
    """Candidates chosen over the whole dataset before any read (``PreselectExamples``): its
    bottom-k merges in any order; shards that request thumbnails only for those end with the
    sets their definition says, and all shards together ask for at most ``PRESELECT * K``
    thumbnails per category, whatever the number of shards."""
    images = _random_images(seed, n)
    parts = [images[i::shards] for i in range(shards)]
    partial = []
    for part in parts:
        preselection = Preselection()
        preselection.add_plans([plan for plan, *_ in part])
        partial.append(preselection)
    merged = Preselection()
    for preselection in reversed(partial):
        merged.merge(preselection)
    at_once = Preselection()
    at_once.add_plans([plan for plan, *_ in images])
    assert merged.chosen() == at_once.chosen()
    chosen = at_once.chosen()
    sets, overlays, crops = ExampleSets(), 0, 0
    for part in parts:
        shard_sets = ExampleSets()
        picker = ExamplePicker(shard_sets)
        picker.preselect([plan for plan, *_ in part], chosen)
        for plan, fmt, orientation, flags in part:
            request = picker.request(plan, expected_format="jpeg")
            facts = _Facts(fmt=fmt, orientation=orientation, flags=flags)
            facts.thumbnails = _fake_thumbnails(request, facts)
            picker.add(plan, facts)
            overlays += len(request.overlays) if request else 0
            crops += len(request.crops) if request else 0
        sets.merge(shard_sets)
    assert _as_brute(sets) == _brute_force(images)
    categories = {a["category_id"] for plan, *_ in images for a in plan.annotations}
    assert overlays <= PRESELECT * K["categories"] * len(categories)
    assert crops <= PRESELECT * (K["smallest"] + K["largest"]) * len(categories)


def test_preselect_examples_in_a_pipeline_is_the_bottom_k_of_every_batch():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from coco_beam.schemas.records import PlanBatch
    from coco_beam.transforms.stats.gather import PreselectExamples

    images = _random_images(11, 120, categories=4)
    plans = [plan for plan, *_ in images]
    expected = Preselection()
    expected.add_plans(plans)
    batches = [
        PlanBatch(split, b, [p for p in plans[b::5] if p.split == split])
        for split in ("train", "val")
        for b in range(5)
    ]
    with TestPipeline() as p:
        chosen = p | beam.Create(batches, reshuffle=False) | PreselectExamples()
        assert_that(chosen, equal_to([expected.chosen()]))
    # Bounded: at most ``PRESELECT * K`` candidates per category and set.
    for name in ("categories", "smallest", "largest"):
        assert all(len(v) <= PRESELECT * K[name] for v in expected.chosen()[name].values())
    assert len(expected.chosen()["categories"]) == 4


def test_a_category_with_an_instance_of_no_area_keeps_every_instance_a_crop_candidate():
    # Before its mask is made, the instance has no area to rank by; once made, it has one.
    made = [_ann(1, 3, (1, 1, 5, 5)), _ann(2, 3, (1, 1, 30, 30)), _ann(3, 4, (1, 1, 9, 9))]
    joined = [dict(made[0], area=None), *made[1:]]
    preselection = Preselection()
    preselection.add_plans([_plan("train", 1, [a for a in joined if a["area"] is not None])])
    preselection.add_plans(
        [_plan("train", 2, [{k: v for k, v in joined[0].items() if k != "area"}])]
    )
    chosen = preselection.chosen()
    assert chosen["open"] == {3}
    picker = ExamplePicker(ExampleSets())
    picker.preselect([], chosen)
    request = picker.request(_plan("train", 2, [made[0]]), expected_format="jpeg")
    assert [ann_id for ann_id, _, _ in request.crops] == [1]  # category 3 is open
    # Category 4 is not: only its preselected instances (here its one) are candidates.
    assert chosen["smallest"][4] == {("train", 3)}


def test_examples_are_bounded_whatever_the_number_of_images():
    images = _random_images(5, 1200, categories=12)
    sets = _pick(images[:1000])
    for name in ExampleSets.__slots__:
        for entries in getattr(sets, name).values():
            assert len(entries) <= K[name]
    assert len(sets.categories) == 12
    # Once the sets hold 1,000 images, few new ones could enter any: a thumbnail is made for
    # them only (a request for a flag that decoding decides makes one only if it finds it).
    picker = ExamplePicker(sets)
    requests = [picker.request(p, expected_format="jpeg") for p, *_ in images[1000:]]
    made = sum(r is not None and bool(r.plain or r.overlays or r.crops) for r in requests)
    assert made < 40


def test_an_image_without_thumbnails_enters_no_set():
    plan = _plan("train", 1, [_ann(1, 3, (1, 1, 5, 5))], flags=["utf8_bom"])
    sets = ExampleSets()
    ExamplePicker(sets).add(plan, _Facts())
    assert sets == ExampleSets()


def test_the_examples_pickle_with_the_accumulator():
    acc = new_accumulator()
    _pick(_random_images(2, 40), sets=acc.examples)
    assert acc.examples.categories
    assert pickle.loads(pickle.dumps(acc, protocol=pickle.HIGHEST_PROTOCOL)) == acc


def test_examples_document_names_images_and_instances():
    images = _random_images(9, 40)
    sets = _pick(images)
    doc = examples_document(sets)
    brute = _brute_force(images)
    assert [c["id"] for c in doc["categories"]] == sorted(brute["smallest"])
    for entry in doc["categories"]:
        assert [tuple(i) for i in entry["images"]] == brute["categories"].get(entry["id"], [])
        assert entry["smallest"]["area"] == brute["smallest"][entry["id"]]
        assert entry["largest"]["area"] == -brute["largest"][entry["id"]]
    pictures = example_pictures(sets)
    assert len(pictures) == sum(
        len(v) for n in ExampleSets.__slots__ for v in getattr(sets, n).values()
    )


# -- never together ----------------------------------------------------------------------------


def test_never_together_lists_the_common_pairs_no_image_holds():
    cats = [
        {"id": 1, "num_images": 10},
        {"id": 2, "num_images": 8},
        {"id": 3, "num_images": 8},
        {"id": 4, "num_images": 1},  # not among the 3 most common
        {"id": 5, "num_images": 0},
    ]
    cooccurrence = [[1, 2, 4], [1, 4, 1], [2, 4, 1], [3, 4, 1]]
    assert never_together(cats, cooccurrence, top=3) == {
        "among": [1, 2, 3],
        "pairs": [[1, 3], [2, 3]],
    }
    assert never_together(cats, cooccurrence, top=4)["pairs"] == [[1, 3], [2, 3]]


# -- the page ----------------------------------------------------------------------------------


def _full_examples(num_categories: int = 80) -> tuple[dict, dict]:
    """A statistics document of COCO's 80 categories with every example set full, and its
    pictures made from photo-like images (the page's worst case)."""
    cats = COCO_CATEGORIES[:num_categories]
    acc = new_accumulator()
    from coco_beam.transforms.stats.accumulators import add_image

    sets = acc.examples
    flags = ["bbox_outside_image", "extension_mismatch", EXIF_ROTATED, "area_from_mask"]
    image_id = 0
    for cat in cats:
        for _ in range(K["categories"]):
            image_id += 1
            photo = _encoded(_photo(640, 480, seed=image_id))
            ann = _ann(image_id, cat["id"], (40, 30, 300, 200), w=640, h=480)
            request = ThumbnailRequest(
                plain=image_id <= len(flags) * K["flags"],
                overlays=((cat["id"], (ann["rle"],)),),
                crops=((ann["id"], tuple(ann["bbox"]), ann["rle"]),),
            )
            thumbs = thumbnails_of(photo, request)
            rank = (image_key("train", image_id),)
            sets.offer(
                "categories", cat["id"], (rank, "train", image_id, -1, thumbs.overlay(cat["id"]))
            )
            for name, sign in (("smallest", 1), ("largest", -1)):
                entry = (
                    (sign * ann["area"], image_id),
                    "train",
                    image_id,
                    ann["id"],
                    thumbs.crop(ann["id"]),
                )
                sets.offer(name, cat["id"], entry)
            if thumbs.plain is not None:
                flag = flags[(image_id - 1) // K["flags"]]
                sets.offer("flags", flag, (rank, "train", image_id, -1, thumbs.plain))
            add_image(
                acc,
                width=640,
                height=480,
                fmt="jpeg",
                mode="RGB",
                exif_orientation=None,
                num_bytes=len(photo),
                annotations=[ann],
                captions=[],
            )
    by_id = {c["id"]: c for c in cats}
    doc = stats_document({"train": acc}, {"train": by_id}, [])
    return doc, example_pictures(sets)


def test_page_with_80_full_categories_stays_under_3_mb_of_pictures():
    from plotly.offline import get_plotlyjs

    doc, pictures = _full_examples()
    assert len(doc["examples"]["categories"]) == 80
    page = render_report(doc, pictures=pictures)
    assert page == render_report(doc, pictures=pictures)
    # Every picture is on the page; what the pictures add beyond the plots is bounded.
    import base64

    for jpeg in pictures.values():
        assert base64.b64encode(jpeg).decode() in page
    without = render_report(doc)
    assert "<img" not in without
    added = len(page.encode()) - len(without.encode())
    assert 500_000 < added < 3_000_000, added
    assert len(page.encode()) - len(get_plotlyjs().encode()) < 3_000_000
    assert page.count("<img") == len(pictures) + min(10, 80) * K["categories"]  # rarest again


def test_a_build_gives_the_same_page_whatever_its_bundling(synth_root, tmp_path):
    """The same data in 1 shard or 5 per split: the same stats.json and report.html, with
    pictures of examples and of duplicates."""
    pages = []
    for shards in (1, 5):
        run_dir, _ = run_build(
            f"--coco-root={synth_root}",
            f"--output={tmp_path / str(shards)}",
            f"--num-shards={shards}",
        )
        with open(os.path.join(run_dir, "stats", "report.html"), "rb") as f:
            page = f.read()
        with open(os.path.join(run_dir, "stats", "stats.json"), "rb") as f:
            stats = f.read()
        pages.append((page, stats))
    assert pages[0] == pages[1]
    page, stats = pages[0]
    doc = json.loads(stats)
    assert doc["examples"]["categories"] and page.count(b"<img") >= 3 * len(
        doc["examples"]["categories"]
    )


def test_duplicate_groups_get_their_pictures_read_back(synth_root, tmp_path):
    """Publishing reads back one image of a group of identical bytes, from the Parquet shards,
    and the page draws it beside the group."""
    import shutil

    root = tmp_path / "root"
    shutil.copytree(synth_root, root)
    path = root / "annotations" / "instances_val2017.json"
    doc = json.loads(path.read_text())
    first = doc["images"][0]
    twin = dict(first, id=first["id"] + 100_000, file_name="twin-" + first["file_name"])
    shutil.copy(root / "val2017" / first["file_name"], root / "val2017" / twin["file_name"])
    doc["images"].append(twin)
    path.write_text(json.dumps(doc))
    run_dir, _ = run_build(f"--coco-root={root}", f"--output={tmp_path / 'out'}")
    with open(os.path.join(run_dir, "stats", "stats.json")) as f:
        stats = json.load(f)
    group = [["val2017", first["id"]], ["val2017", twin["id"]]]
    assert [d["images"] for d in stats["duplicates"]] == [group]
    with open(os.path.join(run_dir, "stats", "report.html")) as f:
        page = f.read()
    table = page[page.index("<table class='duplicates'>") :]
    table = table[: table.index("</table>")]
    assert table.count("<img src='data:image/jpeg;base64,") == 1
    assert f"alt='val2017: {first['id']}'" in table
