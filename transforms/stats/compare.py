"""What changed between two builds' statistics: per split, per category, duplicates,
near-duplicates and leaks.

Pure: ``compare_stats(old, new)`` takes two ``stats.json`` documents and returns a JSON-ready
document; ``format_comparison`` renders it as text. Only what differs is listed, so two
identical builds compare as ``{"changed": false, ...}`` with empty lists.
"""

from __future__ import annotations

from coco_beam.schemas.stats import HEADLINE_COUNTS

__all__ = ["compare_stats", "format_comparison"]

_CATEGORY = (
    "num_instances",
    "num_images",
    "num_crowd",
    "area_small",
    "area_medium",
    "area_large",
)


def _scopes(doc: dict) -> dict:
    scopes = {"(all)": doc}
    scopes.update(doc.get("splits", {}))
    return scopes


def _headline(old: dict, new: dict) -> dict:
    out = {}
    for key in HEADLINE_COUNTS:
        a, b = old.get(key, 0), new.get(key, 0)
        if a != b:
            out[key] = {"old": a, "new": b, "delta": b - a}
    people = (
        old.get("keypoints", {}).get("people_with_keypoints", 0),
        new.get("keypoints", {}).get("people_with_keypoints", 0),
    )
    if people[0] != people[1]:
        out["people_with_keypoints"] = {
            "old": people[0],
            "new": people[1],
            "delta": people[1] - people[0],
        }
    for key in ("pixel_mean", "pixel_std"):
        a, b = old.get(key), new.get(key)
        if a != b:
            delta = None
            if a and b and None not in a and None not in b:
                delta = [y - x for x, y in zip(a, b, strict=True)]
            out[key] = {"old": a, "new": b, "delta": delta}
    return out


def _categories(old: dict, new: dict) -> list[dict]:
    a = {c["id"]: c for c in old.get("categories", [])}
    b = {c["id"]: c for c in new.get("categories", [])}
    changes = []
    for cat_id in sorted(set(a) | set(b)):
        before, after = a.get(cat_id), b.get(cat_id)
        entry = {"id": cat_id, "name": (after or before)["name"]}
        if before is None:
            entry["status"] = "added"
        elif after is None:
            entry["status"] = "removed"
        elif before["name"] != after["name"]:
            entry["status"] = "renamed"
            entry["old_name"] = before["name"]
        else:
            entry["status"] = "changed"
        fields = {}
        for key in _CATEGORY:
            x, y = (before or {}).get(key, 0), (after or {}).get(key, 0)
            if x != y:
                fields[key] = {"old": x, "new": y, "delta": y - x}
        if fields or entry["status"] != "changed":
            entry["fields"] = fields
            changes.append(entry)
    return changes


def _quantiles(old: dict, new: dict) -> dict:
    out = {}
    hists_a, hists_b = old.get("histograms", {}), new.get("histograms", {})
    for name in sorted(set(hists_a) | set(hists_b)):
        qa = hists_a.get(name, {}).get("quantiles", {})
        qb = hists_b.get(name, {}).get("quantiles", {})
        moved = {
            q: {"old": qa.get(q), "new": qb.get(q)} for q in ("0.5",) if qa.get(q) != qb.get(q)
        }
        if moved:
            out[name] = moved
    return out


def _panoptic(old: dict, new: dict) -> dict:
    """Panoptic figures that changed: images, segments, void pixels, and per category its
    segments and pixels."""
    a, b = old.get("panoptic") or {}, new.get("panoptic") or {}
    out = {}
    for key in ("num_images", "num_segments", "void_pixels"):
        x, y = a.get(key, 0), b.get(key, 0)
        if x != y:
            out[key] = {"old": x, "new": y, "delta": y - x}
    cats_a = {c["id"]: c for c in a.get("categories", [])}
    cats_b = {c["id"]: c for c in b.get("categories", [])}
    changed = []
    for cat_id in sorted(set(cats_a) | set(cats_b)):
        x, y = cats_a.get(cat_id, {}), cats_b.get(cat_id, {})
        fields = {
            key: {
                "old": x.get(key, 0),
                "new": y.get(key, 0),
                "delta": y.get(key, 0) - x.get(key, 0),
            }
            for key in ("num_segments", "pixels")
            if x.get(key, 0) != y.get(key, 0)
        }
        if fields:
            changed.append({"id": cat_id, "name": (y or x).get("name"), "fields": fields})
    if changed:
        out["categories"] = changed
    return out


def _near_duplicates(old: dict, new: dict) -> dict | None:
    """Near-duplicate groups before and after, and the groups that appeared: a group is known
    by its images (split and id), so one that gained or lost an image appears anew. None when
    either build did not search for them."""
    if old.get("near_duplicates", []) is None or new.get("near_duplicates", []) is None:
        return None

    def images(group):
        return tuple((s, i) for s, i, _ in group["images"])

    before = {images(g) for g in old.get("near_duplicates", [])}
    after = new.get("near_duplicates", [])
    added = [g for g in after if images(g) not in before]
    return {
        "old_groups": len(before),
        "new_groups": len(after),
        "groups_added": added,
        "old_leaks": sum(g["leak"] for g in old.get("near_duplicates", [])),
        "new_leaks": sum(g["leak"] for g in after),
        "leaks_added": [g for g in added if g["leak"]],
    }


def compare_stats(old: dict, new: dict) -> dict:
    """The differences of two statistics documents, per scope (``(all)`` and each split)."""
    old_scopes, new_scopes = _scopes(old), _scopes(new)
    scopes = {}
    for name in ["(all)", *sorted((set(old_scopes) | set(new_scopes)) - {"(all)"})]:
        a, b = old_scopes.get(name, {}), new_scopes.get(name, {})
        entry = {
            "status": "added" if not a else "removed" if not b else "present",
            "headline": _headline(a, b),
            "categories": _categories(a, b),
            "medians": _quantiles(a, b),
            "panoptic": _panoptic(a, b),
        }
        scopes[name] = entry
    old_dups = {d["sha256"] for d in old.get("duplicates", [])}
    old_leaks = {d["sha256"] for d in old.get("leaks", [])}
    new_leaks = [d for d in new.get("leaks", []) if d["sha256"] not in old_leaks]
    duplicates = {
        "old_groups": len(old.get("duplicates", [])),
        "new_groups": len(new.get("duplicates", [])),
        "groups_added": [d for d in new.get("duplicates", []) if d["sha256"] not in old_dups],
        "old_leaks": len(old_leaks),
        "new_leaks": len(new.get("leaks", [])),
        "leaks_added": new_leaks,
    }
    changed = (
        any(
            s["status"] != "present"
            or s["headline"]
            or s["categories"]
            or s["medians"]
            or s["panoptic"]
            for s in scopes.values()
        )
        or duplicates["old_groups"] != duplicates["new_groups"]
        or bool(duplicates["groups_added"])
    )
    near = _near_duplicates(old, new)
    if near is not None:
        changed = changed or near["old_groups"] != near["new_groups"] or bool(near["groups_added"])
    return {
        "changed": changed,
        "scopes": scopes,
        "duplicates": duplicates,
        "near_duplicates": near,
    }


def _num(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, list):
        return "[" + ", ".join(_num(v) for v in value) + "]"
    if value is None:
        return "-"
    return f"{value:,}"


def _delta(value) -> str:
    if isinstance(value, int | float):
        return f"{value:+,}" if isinstance(value, int) else f"{value:+,.3f}"
    return _num(value)


def format_comparison(diff: dict, *, max_categories: int = 25) -> str:
    """A plain-text rendering of ``compare_stats``'s document, for a terminal or a log."""
    unsearched = "near_duplicates" in diff and diff["near_duplicates"] is None
    skipped = "near-duplicates not compared: a build was made with --no-near-duplicates"
    if not diff["changed"]:
        return "no differences in the statistics" + (f" ({skipped})" if unsearched else "")
    lines = [skipped] if unsearched else []
    for name, scope in diff["scopes"].items():
        if scope["status"] == "present" and not (
            scope["headline"] or scope["categories"] or scope["medians"] or scope["panoptic"]
        ):
            continue
        lines.append(f"{name}: {scope['status'] if scope['status'] != 'present' else 'changed'}")
        for key, v in scope["headline"].items():
            lines.append(
                f"  {key:<32} {_num(v['old']):>16} -> {_num(v['new']):<16} {_delta(v['delta'])}"
            )
        cats = sorted(
            scope["categories"],
            key=lambda c: -abs(c["fields"].get("num_instances", {}).get("delta", 0)),
        )
        for cat in cats[:max_categories]:
            fields = ", ".join(
                f"{k} {_num(v['old'])} -> {_num(v['new'])}" for k, v in cat["fields"].items()
            )
            status = "" if cat["status"] == "changed" else f" [{cat['status']}]"
            lines.append(f"  category {cat['name']} ({cat['id']}){status}: {fields}")
        if len(cats) > max_categories:
            lines.append(f"  ... and {len(cats) - max_categories} more categories changed")
        for hist, moved in scope["medians"].items():
            m = moved["0.5"]
            lines.append(f"  median {hist:<25} {_num(m['old'])} -> {_num(m['new'])}")
        pan = scope["panoptic"]
        for key in ("num_images", "num_segments", "void_pixels"):
            if key in pan:
                v = pan[key]
                lines.append(f"  panoptic {key:<23} {_num(v['old'])} -> {_num(v['new'])}")
        for cat in pan.get("categories", [])[:max_categories]:
            fields = ", ".join(
                f"{k} {_num(v['old'])} -> {_num(v['new'])}" for k, v in cat["fields"].items()
            )
            lines.append(f"  panoptic category {cat['name']} ({cat['id']}): {fields}")
    d = diff["duplicates"]
    if d["old_groups"] != d["new_groups"] or d["groups_added"]:
        lines.append(
            f"duplicates: {d['old_groups']} -> {d['new_groups']} groups, "
            f"leaks across splits: {d['old_leaks']} -> {d['new_leaks']}"
        )
        for leak in d["leaks_added"][:max_categories]:
            images = ", ".join(f"{s}:{i}" for s, i in leak["images"])
            lines.append(f"  new leak {leak['sha256'][:16]}: {images}")
    near = diff.get("near_duplicates")
    if near and (near["old_groups"] != near["new_groups"] or near["groups_added"]):
        lines.append(
            f"near-duplicates: {near['old_groups']} -> {near['new_groups']} groups, "
            f"leaks across splits: {near['old_leaks']} -> {near['new_leaks']}"
        )
        for group in near["groups_added"][:max_categories]:
            images = ", ".join(f"{s}:{i} ({d})" for s, i, d in group["images"])
            lines.append(f"  new {'leak' if group['leak'] else 'group'}: {images}")
        if len(near["groups_added"]) > max_categories:
            lines.append(f"  ... and {len(near['groups_added']) - max_categories} more groups")
    return "\n".join(lines)
