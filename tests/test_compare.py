"""``coco-beam stats``: statistics without shards, and the comparison of two builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from coco_beam.transforms.stats.compare import compare_stats, format_comparison

from stats_docs import small_doc


def test_identical_statistics_compare_equal():
    diff = compare_stats(small_doc(), small_doc())
    assert diff["changed"] is False
    assert format_comparison(diff) == "no differences in the statistics"


def test_a_changed_category_is_reported_per_split_and_overall():
    diff = compare_stats(small_doc(), small_doc(extra_car=True))
    assert diff["changed"]
    for scope, before in (("(all)", 5), ("train", 3)):
        headline = diff["scopes"][scope]["headline"]
        assert headline["num_annotations"] == {"old": before, "new": before + 1, "delta": 1}
        (car,) = diff["scopes"][scope]["categories"]
        assert (car["id"], car["status"]) == (3, "changed")
        assert car["fields"]["num_instances"] == {"old": 1, "new": 2, "delta": 1}
        assert car["fields"]["num_images"] == {"old": 1, "new": 2, "delta": 1}
    assert diff["scopes"]["val"]["categories"] == [] and diff["scopes"]["val"]["headline"] == {}
    text = format_comparison(diff)
    assert "category car (3): num_instances 1 -> 2" in text
    assert "val:" not in text


def test_leaks_and_splits_that_appear_or_go():
    old, new = small_doc(leak=False), small_doc()
    diff = compare_stats(old, new)
    assert [d["sha256"] for d in diff["duplicates"]["leaks_added"]] == ["a" * 64]
    assert "new leak aaaaaaaaaaaaaaaa: train:1, val:9" in format_comparison(diff)
    del new["splits"]["val"]
    assert compare_stats(old, new)["scopes"]["val"]["status"] == "removed"
    assert compare_stats(new, old)["scopes"]["val"]["status"] == "added"


def _coco_beam(*args):
    return subprocess.run(
        [sys.executable, "-m", "coco_beam.pipelines.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_stats_alone_equal_the_builds_and_compare_finds_an_edit(synth_root, synth_build, tmp_path):
    """``coco-beam stats`` writes the statistics a build writes, and no shards; after one
    annotation changes category, ``--compare`` names that category in that split."""
    run_dir, _ = synth_build
    out = tmp_path / "stats-out"
    result = _coco_beam(
        "stats", f"--coco-root={synth_root}", f"--output={out}", "--direct_num_workers=1"
    )
    assert result.returncode == 0, result.stderr
    assert "shards       none (statistics only)" in result.stdout
    stats_run = out / "runs" / (out / "LATEST").read_text().strip()
    assert not (stats_run / "data").exists()
    with open(os.path.join(run_dir, "stats", "stats.json"), "rb") as f:
        assert (stats_run / "stats" / "stats.json").read_bytes() == f.read()
    manifest = json.loads((stats_run / "manifest.json").read_text())
    assert manifest["shards"] == [] and manifest["settings"]["formats"] == []

    # Edit: one train annotation changes category.
    edited = tmp_path / "edited"
    subprocess.run(["cp", "-r", synth_root, str(edited)], check=True)
    path = edited / "annotations" / "instances_train2017.json"
    doc = json.loads(path.read_text())
    ann = next(a for a in doc["annotations"] if a["category_id"] != 1 and not a["iscrowd"])
    old_cat = ann["category_id"]
    new_cat = next(c["id"] for c in doc["categories"] if c["id"] not in (1, old_cat))
    ann["category_id"] = new_cat
    path.write_text(json.dumps(doc))
    out2 = tmp_path / "stats-edited"
    result = _coco_beam(
        "stats", f"--coco-root={edited}", f"--output={out2}", "--direct_num_workers=1"
    )
    assert result.returncode == 0, result.stderr

    compare_json = tmp_path / "compare.json"
    result = _coco_beam("stats", "--compare", str(out), str(out2), "--json", str(compare_json))
    assert result.returncode == 0, result.stderr
    diff = json.loads(compare_json.read_text())
    assert diff["changed"]
    for scope in ("(all)", "train2017"):
        changed = {c["id"]: c["fields"] for c in diff["scopes"][scope]["categories"]}
        assert changed[old_cat]["num_instances"]["delta"] == -1
        assert changed[new_cat]["num_instances"]["delta"] == 1
        assert diff["scopes"][scope]["headline"] == {}  # same number of everything
    assert diff["scopes"]["val2017"]["categories"] == []
    assert f"({new_cat}): num_instances" in result.stdout

    missing = _coco_beam("stats", "--compare", str(out), str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no statistics at" in missing.stderr


def test_panoptic_changes_are_listed():
    old, new = small_doc(), small_doc()
    assert compare_stats(old, new)["scopes"]["(all)"]["panoptic"] == {}
    sky = {"id": 187, "name": "sky", "isthing": False, "num_segments": 2, "pixels": 900}
    new["panoptic"] = dict(new["panoptic"], num_images=1, num_segments=2, categories=[sky])
    diff = compare_stats(old, new)
    pan = diff["scopes"]["(all)"]["panoptic"]
    assert diff["changed"] and pan["num_segments"] == {"old": 0, "new": 2, "delta": 2}
    assert pan["categories"] == [
        {
            "id": 187,
            "name": "sky",
            "fields": {
                "num_segments": {"old": 0, "new": 2, "delta": 2},
                "pixels": {"old": 0, "new": 900, "delta": 900},
            },
        }
    ]
    assert "panoptic category sky (187): num_segments 0 -> 2, pixels 0 -> 900" in (
        format_comparison(diff)
    )


def test_near_duplicate_groups_that_appear_are_listed():
    from coco_beam.transforms.stats.near_duplicates import near_duplicate_groups

    a, b = ("train", 2, "00000000ffffffff"), ("val", 7, "00000003fffffffc")
    c = ("train", 3, "00000000fffffffe")
    old, new = small_doc(), small_doc()
    old["near_duplicates"] = near_duplicate_groups([(a, c, 1)])
    new["near_duplicates"] = near_duplicate_groups([(a, c, 1), (a, b, 4)])
    diff = compare_stats(old, new)
    near = diff["near_duplicates"]
    assert diff["changed"] is True
    assert (near["old_groups"], near["new_groups"], near["old_leaks"], near["new_leaks"]) == (
        1,
        1,
        0,
        1,
    )
    # The group gained an image: it appears anew, as a leak.
    assert near["groups_added"] == near["leaks_added"] == new["near_duplicates"]
    text = format_comparison(diff)
    assert "near-duplicates: 1 -> 1 groups, leaks across splits: 0 -> 1" in text
    assert "new leak: train:2 (0), train:3 (1), val:7 (4)" in text
    assert compare_stats(new, new)["near_duplicates"]["groups_added"] == []
