"""Near-duplicates: the perceptual hash, the banding that finds close pairs without comparing all
of them, the groups, and a build of real COCO images with planted copies."""

import collections
import io
import itertools
import json
import os
import random
import shutil

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance

from coco_beam.transforms.images.decode import inspect_image
from coco_beam.transforms.images.phash import HASH_BITS, dct_hash, dct_hash_of_grey, hamming
from coco_beam.transforms.runtime.packing import pack, unpack
from coco_beam.transforms.stats.compare import compare_stats, format_comparison
from coco_beam.transforms.stats.near_duplicates import (
    BANDS,
    MAX_DISTANCE,
    FindNearDuplicates,
    band_keys,
    distinct_pairs,
    member_paths,
    near_duplicate_groups,
    verify_candidates,
)

from helpers import require_coco_tiny, run_build


def _hex(value: int) -> str:
    return f"{value:016x}"


def _flip(value: int, bits) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def _pairs_through_bands(members) -> list:
    """What ``FindNearDuplicates`` does, without a pipeline: key, group, verify, one per pair."""
    groups = collections.defaultdict(list)
    for member in members:
        for key, value in band_keys(member):
            groups[key].append(value)
    return sorted({p for key, values in groups.items() for p in verify_candidates(key, values)})


def _brute_force_groups(members) -> list:
    pairs = [
        (*sorted((a, b)), hamming(a[2], b[2]))
        for a, b in itertools.combinations(members, 2)
        if hamming(a[2], b[2]) <= MAX_DISTANCE
    ]
    return near_duplicate_groups(pairs)


# ---- the hash ------------------------------------------------------------------------------


def _photo(seed: int, size=(640, 480)) -> Image.Image:
    """A smooth random picture (low frequencies dominate, as in photographs)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)


def test_the_hash_is_64_bits_of_hex_and_the_same_for_the_same_pixels():
    image = _photo(1)
    h = dct_hash(image)
    assert len(h) == 16 and int(h, 16) < 2**HASH_BITS
    assert dct_hash(image.copy()) == h
    # Half the coefficients are above the median: 32 bits set.
    assert int(h, 16).bit_count() == 32


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "1"], ids=lambda m: f"mode_{m}")
def test_every_mode_the_decoder_accepts_is_hashed(mode):
    image = _photo(2).convert(mode)
    assert len(dct_hash(image)) == 16


def test_a_grey_image_hashes_as_its_rgb_copy_within_rounding():
    grey = _photo(3).convert("L")
    assert hamming(dct_hash(grey), dct_hash(grey.convert("RGB"))) <= 2


def test_a_thumbnail_of_another_size_is_refused():
    with pytest.raises(ValueError, match="32x32"):
        dct_hash_of_grey(np.zeros((16, 16), np.uint8))


def test_distinct_pictures_are_far_apart_and_copies_close():
    a, b = _photo(4), _photo(5)
    buf = io.BytesIO()
    a.save(buf, "JPEG", quality=60)
    copy = Image.open(io.BytesIO(buf.getvalue()))
    assert hamming(dct_hash(a), dct_hash(copy)) <= 4
    assert hamming(dct_hash(a), dct_hash(b)) > MAX_DISTANCE


def test_inspect_image_hashes_the_decoded_pixels_when_counting_them():
    buf = io.BytesIO()
    _photo(6, (64, 48)).save(buf, "PNG")
    facts = inspect_image(buf.getvalue(), 64, 48)
    assert facts.phash == dct_hash(Image.open(io.BytesIO(buf.getvalue())))
    assert inspect_image(buf.getvalue(), 64, 48, histogram=False).phash is None


# ---- banding -------------------------------------------------------------------------------


def test_bands_cover_the_64_bits_once_and_number_d_plus_one():
    assert len(BANDS) == MAX_DISTANCE + 1
    bits = sorted(b for shift, width in BANDS for b in range(shift, shift + width))
    assert bits == list(range(HASH_BITS))


@settings(max_examples=200, deadline=None)
@given(
    base=st.integers(0, 2**64 - 1),
    flips=st.sets(st.integers(0, 63), max_size=MAX_DISTANCE + 4),
)
def test_a_pair_is_found_once_exactly_when_it_is_close_enough(base, flips):
    a, b = ("train", 1, _hex(base)), ("val", 2, _hex(_flip(base, flips)))
    pairs = _pairs_through_bands([a, b])
    if len(flips) <= MAX_DISTANCE:
        assert pairs == [(a, b, len(flips))]
    else:
        assert pairs == []


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_banding_finds_the_groups_that_comparing_every_pair_finds(seed):
    rng = random.Random(seed)
    members = []
    for family in range(12):
        base = rng.getrandbits(64)
        for copy in range(rng.randint(1, 4)):
            flips = rng.sample(range(64), rng.randint(0, MAX_DISTANCE // 2 + 1))
            split = rng.choice(["train", "val"])
            members.append((split, family * 10 + copy, _hex(_flip(base, flips))))
    assert near_duplicate_groups(_pairs_through_bands(members)) == _brute_force_groups(members)


def test_a_very_common_hash_costs_one_pair_per_image_not_all_pairs():
    blank = ("train", 0, "0" * 16)
    members = [("train", i, blank[2]) for i in range(2_000)] + [("val", 5, _hex(0xFFFF_FFFF << 32))]
    pairs = _pairs_through_bands(members)
    assert len(pairs) == 1_999  # each blank joined to the first, at distance 0
    assert all(p[0] == ("train", 0, blank[2]) and p[2] == 0 for p in pairs)
    [group] = near_duplicate_groups(pairs)
    assert len(group["images"]) == 2_000 and not group["leak"]


def test_a_large_key_is_compared_in_bounded_blocks(monkeypatch):
    import coco_beam.transforms.stats.near_duplicates as nd

    rng = random.Random(3)
    members = [("train", i, _hex(rng.getrandbits(64) >> 5)) for i in range(300)]
    members += [
        ("val", 1000 + i, _hex(_flip(int(m[2], 16), [60, 61]))) for i, m in enumerate(members[:5])
    ]
    whole = _pairs_through_bands(members)
    monkeypatch.setattr(nd, "_BLOCK_CELLS", 1_000)  # 3 rows at a time
    assert _pairs_through_bands(members) == whole
    assert len([p for p in whole if p[0][0] != p[1][0]]) >= 5


def test_a_key_above_the_cap_is_compared_in_sub_groups_of_bounded_size(monkeypatch):
    import coco_beam.transforms.stats.near_duplicates as nd

    rng = random.Random(5)
    # 600 distinct hashes sharing band 0's value (0), so one key holds them all.
    width = BANDS[0][1]
    members = [("train", i, _hex(rng.getrandbits(64 - width))) for i in range(600)]
    # Copies 2 bits away, outside bands 0 and 1: they share both with their original.
    low = [b for b in range(BANDS[1][0])]
    members += [
        ("val", 1000 + i, _hex(_flip(int(m[2], 16), rng.sample(low, 2))))
        for i, m in enumerate(members[:20])
    ]
    sizes = []
    close_pairs = nd._close_pairs

    def recording(values, indices):
        sizes.append(len(indices))
        return close_pairs(values, indices)

    monkeypatch.setattr(nd, "_close_pairs", recording)
    whole = [p for p in verify_candidates((0, 0), members) if p[2] > 0]
    assert max(sizes) == 620  # under the cap: one group, every pair compared
    monkeypatch.setattr(nd, "KEY_CAP", 64)
    sizes.clear()
    capped = [p for p in verify_candidates((0, 0), members) if p[2] > 0]
    assert max(sizes) <= 64 and sum(sizes) == 620  # every hash in one sub-group of <= 64
    # Comparisons: at most the cap per hash, against 620 * 619 / 2 without it.
    assert sum(n * (n - 1) // 2 for n in sizes) <= 620 * 64 // 2
    # Capped, only pairs that share the next band too are found: every planted copy still is;
    # nothing is found that comparing every pair does not find.
    assert set(capped) <= set(whole)
    planted = [p for p in whole if p[0][0] != p[1][0]]
    assert len(planted) == 20 and set(planted) <= set(capped)


# ---- groups --------------------------------------------------------------------------------


def test_groups_are_connected_sorted_and_say_distance_and_leak():
    a = ("train", 7, _hex(0xFFFF_FFFF))
    b = ("train", 3, _hex(_flip(0xFFFF_FFFF, [40, 41])))
    c = ("val", 1, _hex(_flip(0xFFFF_FFFF, [40, 41, 50, 51, 52, 53])))
    d, e = ("val", 4, _hex(2**63)), ("val", 9, _hex(2**63 + 1))
    pairs = [(a, b, 2), (b, c, 4), (d, e, 1)]
    expected = [
        {"images": [["train", 3, 0], ["train", 7, 2], ["val", 1, 4]], "leak": True},
        {"images": [["val", 4, 0], ["val", 9, 1]], "leak": False},
    ]
    assert near_duplicate_groups(pairs) == expected
    assert near_duplicate_groups(reversed(pairs)) == expected


def test_find_near_duplicates_in_a_pipeline():
    base = 0x0123_4567_89AB_CDEF
    shard_a = [
        ("train", 1, _hex(base), "a/1.jpg"),
        ("train", 2, _hex(~base & (2**64 - 1)), "a/2.jpg"),
    ]
    shard_b = [
        ("val", 3, _hex(_flip(base, [0, 9, 33])), "b/3.jpg"),
        ("val", 4, _hex(base), "b/4.jpg"),
    ]
    options = PipelineOptions(runtime_type_check=True)
    with TestPipeline(options=options) as p:
        batches = (
            p
            | beam.Create([("train", pack(shard_a)), ("val", pack(shard_b))])
            | FindNearDuplicates()
        )
        found = batches | beam.combiners.ToList()
        # The pair 3 bits apart shares 10 of the 13 bands: it is in 10 batches, kept once.
        assert_that(
            found | "Copies" >> beam.Map(lambda b: sorted(q[2] for x in b for q in unpack(x))),
            equal_to([[0] + [3] * 10]),
            label="Copies",
        )
        assert_that(
            found | "Distinct" >> beam.Map(distinct_pairs),
            equal_to([[(shard_a[0], shard_b[0], 3), (shard_a[0], shard_b[1], 0)]]),
            label="Distinct",
        )
        assert_that(
            found | beam.Map(lambda b: member_paths(distinct_pairs(b))),
            equal_to([{("train", 1): "a/1.jpg", ("val", 3): "b/3.jpg", ("val", 4): "b/4.jpg"}]),
            label="Paths",
        )


# ---- a build with planted copies -----------------------------------------------------------


def _save(image: Image.Image, path: str, quality: int = 95) -> tuple[int, int]:
    image.save(path, "JPEG", quality=quality)
    return image.size


_COPIES = {
    "jpeg_q60": lambda im: (im, 60),
    "half": lambda im: (im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS), 95),
    "crop_3pc": lambda im: (
        im.crop(
            (
                round(im.width * 0.03),
                round(im.height * 0.03),
                im.width - round(im.width * 0.03),
                im.height - round(im.height * 0.03),
            )
        ),
        95,
    ),
    "bright_10pc": lambda im: (ImageEnhance.Brightness(im).enhance(1.1), 95),
}
# Copies placed in the other split than their original's: a leak each.
_MOVED = ("half", "bright_10pc")


def _plant_copies(tiny, root) -> dict:
    """coco-tiny under ``root`` (images linked), with four copies of two originals of each
    split added to the instances files; returns {original (split, id): [(split, id, kind)]}."""
    docs = {}
    for split in ("train2017", "val2017"):
        os.makedirs(root / split)
        for name in os.listdir(tiny / split):
            os.symlink(tiny / split / name, root / split / name)
        docs[split] = json.loads((tiny / "annotations" / f"instances_{split}.json").read_text())
    planted, next_id = {}, 900_000_000
    for split, other in (("train2017", "val2017"), ("val2017", "train2017")):
        for image in sorted(docs[split]["images"], key=lambda i: i["id"])[3:5]:
            original = Image.open(tiny / split / image["file_name"]).convert("RGB")
            copies = planted[(split, image["id"])] = []
            for kind, make in _COPIES.items():
                copy, quality = make(original)
                target = other if kind in _MOVED else split
                name = f"copy_{next_id}.jpg"
                width, height = _save(copy, str(root / target / name), quality)
                docs[target]["images"].append(
                    {"id": next_id, "file_name": name, "width": width, "height": height}
                )
                copies.append((target, next_id, kind))
                next_id += 1
    os.makedirs(root / "annotations")
    for split, doc in docs.items():
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return planted


def test_planted_copies_are_found_as_groups_and_leaks_and_nothing_else(tmp_path):
    tiny = require_coco_tiny()
    root = tmp_path / "coco"
    planted = _plant_copies(tiny, root)
    run_dir, _ = run_build(f"--coco-root={root}", f"--output={tmp_path / 'out'}")
    doc = json.loads(open(os.path.join(run_dir, "stats", "stats.json")).read())

    expected = sorted(
        sorted([original, *((s, i) for s, i, _ in copies)]) for original, copies in planted.items()
    )
    found = sorted([(s, i) for s, i, _ in g["images"]] for g in doc["near_duplicates"])
    # Every copy with its original, and no group of distinct originals.
    assert found == expected
    for group in doc["near_duplicates"]:
        assert group["leak"] == (len({s for s, _, _ in group["images"]}) > 1)
        assert all(0 <= d <= 2 * MAX_DISTANCE for _, _, d in group["images"])
    assert doc["near_duplicate_leaks"] == doc["near_duplicates"]  # each has a moved copy
    table = pq.read_table(os.path.join(run_dir, "stats", "near_duplicates.parquet")).to_pylist()
    assert len(table) == sum(len(c) + 1 for c in planted.values())
    assert {(r["split"], r["image_id"]) for r in table} == {m for g in expected for m in g}
    report = open(os.path.join(run_dir, "stats", "report.html")).read()
    assert f"{len(planted):,} groups of near-duplicate images" in report

    # A rebuild reuses every shard: the hashes come from the state, the groups are the same.
    rebuilt, manifest = run_build(f"--coco-root={root}", f"--output={tmp_path / 'out'}")
    assert manifest["changes"]["shards_rewritten"] == 0
    again = json.loads(open(os.path.join(rebuilt, "stats", "stats.json")).read())
    assert again["near_duplicates"] == doc["near_duplicates"]
    shutil.rmtree(root)


def test_a_build_without_the_search_hashes_nothing_and_says_so(synth_root, tmp_path):
    """``--no-near-duplicates``: no hash in the state, null in stats.json, said on the page; the
    next build that searches does not reuse a state without hashes, and finds the groups."""
    out = str(tmp_path / "out")
    run_dir, _ = run_build(f"--coco-root={synth_root}", f"--output={out}", "--no-near-duplicates")
    doc = json.loads(open(os.path.join(run_dir, "stats", "stats.json")).read())
    assert doc["near_duplicates"] is None and doc["near_duplicate_leaks"] is None
    assert doc["num_images"] > 0 and doc["pixel_mean"]  # the rest of the statistics are there
    states = pq.read_table(os.path.join(run_dir, "state")).to_pylist()
    assert states and {r["phash"] for r in states} == {None}
    assert pq.read_table(os.path.join(run_dir, "stats", "near_duplicates.parquet")).num_rows == 0
    report = open(os.path.join(run_dir, "stats", "report.html")).read()
    assert "Near-duplicates were not searched" in report

    searched_dir, manifest = run_build(f"--coco-root={synth_root}", f"--output={out}")
    assert manifest["changes"]["shards_reused"] == 0
    assert "settings changed" in manifest["changes"]["why_not_incremental"]
    searched = json.loads(open(os.path.join(searched_dir, "stats", "stats.json")).read())
    states = pq.read_table(os.path.join(searched_dir, "state")).to_pylist()
    assert None not in {r["phash"] for r in states}
    assert isinstance(searched["near_duplicates"], list)
    assert compare_stats(doc, searched)["near_duplicates"] is None
    assert "near-duplicates not compared" in format_comparison(compare_stats(doc, searched))
    assert compare_stats(searched, searched)["changed"] is False
