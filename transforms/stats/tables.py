"""The statistics document (``stats.json``) as the flat tables of ``schemas.stats``.

Pure: a function of the document alone, so the tables and the JSON can never disagree. Each
table's rows are in a fixed order (scope, then keys), so the same statistics give the same
Parquet bytes.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from coco_beam.schemas.stats import HEADLINE_COUNTS, STATS_TABLES

__all__ = ["stats_tables", "table_bytes"]


def _scopes(doc: dict):
    """``(split or None, summary)`` for the whole dataset, then each split by name."""
    yield None, doc
    for split in sorted(doc.get("splits", {})):
        yield split, doc["splits"][split]


def stats_tables(doc: dict) -> dict[str, pa.Table]:
    rows: dict[str, list] = {name: [] for name in STATS_TABLES}
    for split, s in _scopes(doc):
        rows["summary"].append(
            {
                "split": split,
                **{k: s[k] for k in HEADLINE_COUNTS},
                "people_with_keypoints": s["keypoints"]["people_with_keypoints"],
                "pixel_mean": s["pixel_mean"] if s["num_images"] else None,
                "pixel_std": s["pixel_std"] if s["num_images"] else None,
                "num_duplicate_groups": len(s.get("duplicates", [])),
                "num_panoptic_images": s["panoptic"]["num_images"],
                "panoptic_void_pixels": s["panoptic"]["void_pixels"],
            }
        )
        rows["categories"].extend({"split": split, **cat} for cat in s["categories"])
        for name, hist in sorted(s["histograms"].items()):
            rows["histograms"].extend(
                {
                    "split": split,
                    "histogram": name,
                    "unit": hist["unit"],
                    "bin_start": float(start),
                    "bin_width": float(hist["bin_width"]),
                    "count": n,
                }
                for start, n in hist["bins"]
            )
            rows["quantiles"].extend(
                {"split": split, "histogram": name, "quantile": float(q), "value": float(v)}
                for q, v in sorted(hist["quantiles"].items(), key=lambda kv: float(kv[0]))
            )
        rows["cooccurrence"].extend(
            {"split": split, "category_a": a, "category_b": b, "num_images": n}
            for a, b, n in s["cooccurrence"]
        )
        heat = s["centre_heatmap"]
        rows["centre_heatmap"].extend(
            {"split": split, "grid": heat["grid"], "column": col, "row": row, "count": n}
            for row, counts in enumerate(heat["counts"])
            for col, n in enumerate(counts)
            if n
        )
        rows["image_sizes"].extend(
            {"split": split, "width_from": w, "height_from": h, "count": n}
            for w, h, n in s["image_sizes_2d"]
        )
        for prop, key in (
            ("format", "formats"),
            ("mode", "modes"),
            ("exif_orientation", "exif_orientations"),
        ):
            rows["image_properties"].extend(
                {"split": split, "property": prop, "value": value, "count": n}
                for value, n in sorted(s[key].items())
            )
        rows["panoptic_categories"].extend(
            {"split": split, **cat} for cat in s["panoptic"]["categories"]
        )
        rows["joint_visibility"].extend(
            {"split": split, **entry} for entry in s["keypoints"]["joint_visibility"]
        )
    for dup in doc.get("duplicates", []):
        across = len({split for split, _ in dup["images"]}) > 1
        rows["duplicates"].extend(
            {"sha256": dup["sha256"], "split": split, "image_id": image_id, "across_splits": across}
            for split, image_id in dup["images"]
        )
    for group, near in enumerate(doc.get("near_duplicates") or []):
        rows["near_duplicates"].extend(
            {
                "group": group,
                "split": split,
                "image_id": image_id,
                "distance": distance,
                "across_splits": near["leak"],
            }
            for split, image_id, distance in near["images"]
        )
    return {
        name: pa.Table.from_pylist(rows[name], schema=schema)
        for name, schema in STATS_TABLES.items()
    }


def table_bytes(table: pa.Table) -> bytes:
    """A table as one zstd Parquet file, in memory (statistics tables are small)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
