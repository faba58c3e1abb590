"""The volume check: a run is not published when its data shrank too much since the last one.

A scheduled rebuild of a broken export (an ``images`` section that lost most of its records, a
split's file missing, a category dropped by a labelling tool) passes every per-record check:
it is just smaller. Compared with the run ``LATEST`` names, the run fails when

  * a split disappears, or its written images fall by more than ``--max-shrink`` (a fraction
    of the previous count; default 0.1);
  * a category of a split that had instances has none (compared by id, so a renamed category
    is the same category), when both runs computed statistics.

``--max-shrink 1`` allows anything. ``check_volume`` is pure: it takes both runs' figures and
returns the record the manifest keeps (``volume_check``: what was compared and the verdict);
``volume_failure`` turns a failed record into the message the run fails with.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_MAX_SHRINK", "check_volume", "volume_figures", "volume_failure"]

# A tenth: real exports of a living dataset grow or lose a few per cent between two nights; a
# broken export loses most of a split.
DEFAULT_MAX_SHRINK = 0.1


def volume_figures(run_id: str | None, splits: dict, stats: dict | None) -> dict:
    """A run's figures the check compares: written images per split (``splits`` as in the
    manifest) and, from its statistics document (None without statistics), instances per
    category id of each split."""
    instances = None
    if stats is not None:
        instances = {
            split: {
                str(cat["id"]): {"name": cat["name"], "instances": cat["num_instances"]}
                for cat in doc.get("categories", [])
            }
            for split, doc in sorted(stats.get("splits", {}).items())
        }
    return {
        "run": run_id,
        "images": {split: entry["images"] for split, entry in sorted(splits.items())},
        "instances": instances,
    }


def _shrink(before: int, after: int) -> float:
    return (before - after) / before if before else 0.0


def check_volume(previous: dict | None, current: dict, max_shrink: float) -> dict:
    """The ``volume_check`` record of ``current`` against ``previous`` (``volume_figures`` of
    each; None before any run): per split both image counts and the shrink, the categories
    that lost every instance, the problems found and the verdict (``passed``, ``failed``, or
    ``nothing to compare`` before any run)."""
    if previous is None:
        return {"previous_run": None, "max_shrink": max_shrink, "verdict": "nothing to compare"}
    splits, problems = {}, []
    for split in sorted(set(previous["images"]) | set(current["images"])):
        before, after = previous["images"].get(split, 0), current["images"].get(split)
        shrink = _shrink(before, after or 0)
        splits[split] = {"previous": before, "current": after, "shrink": round(shrink, 6)}
        if shrink > max_shrink:
            problems.append({"split": split, "previous": before, "current": after})
    lost = []
    compared = previous["instances"] is not None and current["instances"] is not None
    if compared:
        for split in sorted(current["instances"]):
            now = current["instances"][split]
            for cat_id, before in sorted(previous["instances"].get(split, {}).items()):
                after = now.get(cat_id, {}).get("instances", 0)
                if before["instances"] and not after:
                    lost.append(
                        {
                            "split": split,
                            "category_id": int(cat_id),
                            "name": before["name"],
                            "previous": before["instances"],
                            "current": 0,
                        }
                    )
    if max_shrink < 1:  # an emptied category is a shrink of 1
        problems += [{**entry, "category": True} for entry in lost]
    return {
        "previous_run": previous["run"],
        "max_shrink": max_shrink,
        "splits": splits,
        "categories_compared": compared,
        "categories_emptied": lost,
        "problems": problems,
        "verdict": "failed" if problems else "passed",
    }


def volume_failure(record: dict) -> str:
    """The message a run fails with when ``record``'s verdict is ``failed``."""
    parts = []
    for p in record["problems"]:
        if p.get("category"):
            parts.append(
                f"category {p['category_id']} ({p['name']}) of split {p['split']} has no "
                f"instances, {p['previous']} in run {record['previous_run']}"
            )
        elif p["current"] is None:
            parts.append(
                f"split {p['split']} disappeared ({p['previous']} images in run "
                f"{record['previous_run']})"
            )
        else:
            parts.append(
                f"split {p['split']} fell from {p['previous']} to {p['current']} written images "
                f"({_shrink(p['previous'], p['current']):.0%} fewer) since run "
                f"{record['previous_run']}, more than --max-shrink={record['max_shrink']}"
            )
    allow = max(
        1.0 if p.get("category") else _shrink(p["previous"], p["current"] or 0)
        for p in record["problems"]
    )
    # Rounded up to hundredths: the smallest such flag that allows every problem found.
    flag = f"{math.ceil(round(allow * 100, 6)) / 100:g}"
    return "; ".join(parts) + f". If this is intended, run again with --max-shrink={flag}"
