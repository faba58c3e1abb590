"""Statistics as tables (read back with DuckDB) and as a report (opened in headless Chromium)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import duckdb
import pyarrow.parquet as pq
import pytest

from coco_beam.schemas.stats import STATS_TABLES
from coco_beam.transforms.stats.report import PLOT_IDS, render_report
from coco_beam.transforms.stats.tables import stats_tables

from helpers import REPO
from stats_docs import small_doc

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("COCO_BEAM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _stats(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "stats", "stats.json")) as f:
        return json.load(f)


def test_build_writes_every_statistics_table_with_its_schema(synth_build):
    run_dir, manifest = synth_build
    listed = {f["path"] for f in manifest["stats"]["files"]}
    for name, schema in STATS_TABLES.items():
        path = os.path.join(run_dir, "stats", f"{name}.parquet")
        assert f"stats/{name}.parquet" in listed
        assert pq.read_schema(path).remove_metadata() == schema


def test_duckdb_reads_the_tables_and_they_agree_with_stats_json(synth_build):
    run_dir, _ = synth_build
    doc = _stats(run_dir)
    folder = os.path.join(run_dir, "stats")

    con = duckdb.connect()

    def q(sql):
        return con.execute(
            sql.replace("T(", f"read_parquet('{folder}/").replace(")!", ".parquet')")
        )

    summary = q("SELECT split, num_images, num_annotations, pixel_mean FROM T(summary)!").fetchall()
    by_split = {row[0]: row for row in summary}
    assert by_split[None][1:3] == (doc["num_images"], doc["num_annotations"])
    assert by_split[None][3] == pytest.approx(doc["pixel_mean"])
    for split, s in doc["splits"].items():
        assert by_split[split][1:3] == (s["num_images"], s["num_annotations"])
    # Per-category instances summed over the splits equal the overall figure.
    rows = q(
        "SELECT id, sum(num_instances) FILTER (WHERE split IS NOT NULL), "
        "sum(num_instances) FILTER (WHERE split IS NULL) FROM T(categories)! GROUP BY id"
    ).fetchall()
    assert rows and all(per_split == overall for _, per_split, overall in rows)
    assert sum(r[2] for r in rows) == doc["num_annotations"]
    hist = q(
        "SELECT sum(count) FROM T(histograms)! "
        "WHERE split IS NULL AND histogram = 'objects_per_image'"
    ).fetchone()[0]
    assert hist == doc["num_images"]
    centres = q("SELECT sum(count) FROM T(centre_heatmap)! WHERE split IS NULL").fetchone()[0]
    assert centres == doc["num_annotations"]
    pairs = q("SELECT category_a, category_b, num_images FROM T(cooccurrence)! WHERE split IS NULL")
    assert sorted(list(r) for r in pairs.fetchall()) == doc["cooccurrence"]


def test_tables_hold_duplicates_one_row_per_image():
    doc = small_doc()
    tables = stats_tables(doc)
    dups = tables["duplicates"].to_pylist()
    assert {(d["split"], d["image_id"], d["across_splits"]) for d in dups} == {
        ("train", 1, True),
        ("val", 9, True),
        ("train", 4, False),
        ("train", 5, False),
    }


def test_report_is_self_contained_and_deterministic():
    doc = small_doc()
    page = render_report(doc)
    assert page == render_report(doc)
    for plot_id in PLOT_IDS:
        assert f"data-plot='{plot_id}'" in page
    # Nothing to fetch: no external scripts, styles, images or fonts.
    lowered = page.lower()
    assert "<script src" not in lowered and "<link" not in lowered and "@import" not in lowered


_PREPARE_IN_A_FRESH_PROCESS = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from coco_beam.transforms.runtime.warmup import prepare
from coco_beam.transforms.stats.report import render_report
from stats_docs import small_doc

wanted = ("pyiceberg.catalog.sql", "plotly.graph_objects")
before = [m in sys.modules for m in wanted]
prepare(("report", "lake"))
after = [m in sys.modules for m in wanted]
prepare(("report", "lake"))  # once a process: a second call does nothing
page = hashlib.sha256(render_report(small_doc()).encode()).hexdigest()
print(json.dumps({"before": before, "after": after, "page": page}))
"""


def test_preparing_for_publishing_loads_what_publishing_needs_and_changes_nothing():
    """The writer warms the report and the lake up in the background. In a fresh process
    (this one may have imported Plotly already): neither is loaded before, both are after,
    and the page is the one this process renders."""
    import hashlib
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _PREPARE_IN_A_FRESH_PROCESS, str(REPO / "tests")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    page = hashlib.sha256(render_report(small_doc()).encode()).hexdigest()
    assert seen == {"before": [False, False], "after": [True, True], "page": page}


def _open_in_chromium(path: pathlib.Path, screenshot: pathlib.Path) -> dict:
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium")
    seen = {"requests": [], "blocked": [], "errors": []}
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
            page = context.new_page()

            def route(r):
                url = r.request.url
                seen["requests"].append(url)
                if url.startswith(("file://", "data:")):
                    r.continue_()
                else:
                    seen["blocked"].append(url)
                    r.abort()

            page.route("**/*", route)
            page.on(
                "console",
                lambda m: m.type in ("error", "warning") and seen["errors"].append(m.text),
            )
            page.on("pageerror", lambda e: seen["errors"].append(str(e)))
            page.goto(path.as_uri())
            page.wait_for_function(
                "n => document.querySelectorAll('.plotly-graph-div .main-svg').length >= n",
                arg=len(PLOT_IDS),
                timeout=60_000,
            )
            seen["plots"] = page.evaluate(
                """() => Array.from(document.querySelectorAll('section.plot')).map(s => {
                    const div = s.querySelector('.plotly-graph-div');
                    const box = div.getBoundingClientRect();
                    return {id: s.dataset.plot, width: box.width, height: box.height,
                            svgs: div.querySelectorAll('.main-svg').length,
                            marks: div.querySelectorAll(
                                '.point, .bars path, .heatmaplayer image, .annotation').length};
                })"""
            )
            seen["title"] = page.title()
            # Every picture, once decoded: its natural size (0 for one that did not load).
            seen["images"] = page.evaluate(
                """() => Promise.all(Array.from(document.images).map(i => i.decode().then(
                    () => ({width: i.naturalWidth, height: i.naturalHeight, alt: i.alt}),
                    () => ({width: 0, height: 0, alt: i.alt}))))"""
            )
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return seen


def test_report_renders_every_plot_offline_in_chromium(synth_build):
    run_dir, manifest = synth_build
    report = pathlib.Path(run_dir) / manifest["stats"]["report"]
    seen = _open_in_chromium(report, ARTIFACTS / "report.png")
    assert seen["errors"] == []
    assert seen["blocked"] == []
    assert seen["requests"] == [report.as_uri()]
    assert [p["id"] for p in seen["plots"]] == list(PLOT_IDS)
    for plot in seen["plots"]:
        assert plot["svgs"] >= 1 and plot["width"] > 300 and plot["height"] > 300, plot
        assert plot["marks"] > 0, plot  # bars, points, a heatmap or a "no data" note
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000


def test_report_of_empty_families_says_so(tmp_path):
    """A dataset without keypoints or captions still renders every plot, with a note."""
    doc = small_doc()
    path = tmp_path / "report.html"
    path.write_text(render_report(doc))
    seen = _open_in_chromium(path, ARTIFACTS / "report-small.png")
    assert seen["errors"] == [] and seen["blocked"] == []
    assert [p["id"] for p in seen["plots"]] == list(PLOT_IDS)
    assert all(p["marks"] > 0 for p in seen["plots"]), seen["plots"]
    assert "no keypoints in this dataset" in path.read_text()


def test_report_pictures_load_offline_in_chromium(synth_build):
    """Every example thumbnail of a build's page is inlined: each one loads with the network
    cut, and the page asks for nothing but itself."""
    run_dir, manifest = synth_build
    report = pathlib.Path(run_dir) / manifest["stats"]["report"]
    doc = _stats(run_dir)
    seen = _open_in_chromium(report, ARTIFACTS / "report-pictures.png")
    assert seen["errors"] == [] and seen["blocked"] == []
    assert seen["requests"] == [report.as_uri()]
    named = sum(len(c["images"]) for c in doc["examples"]["categories"])
    assert len(seen["images"]) >= named > 0
    assert all(0 < i["width"] <= 128 and 0 < i["height"] <= 128 for i in seen["images"]), [
        i for i in seen["images"] if not 0 < i["width"] <= 128
    ]
    assert (ARTIFACTS / "report-pictures.png").stat().st_size > 50_000


def _with_near_duplicates(doc: dict) -> dict:
    from coco_beam.transforms.stats.near_duplicates import near_duplicate_groups

    a, b = ("train", 2, "00000000ffffffff"), ("val", 7, "00000003fffffffc")
    c, d = ("train", 3, "ffffffff00000000"), ("train", 4, "ffffffff00000000")
    doc["near_duplicates"] = near_duplicate_groups([(a, b, 4), (c, d, 0)])
    doc["near_duplicate_leaks"] = [g for g in doc["near_duplicates"] if g["leak"]]
    return doc


def test_near_duplicates_in_their_table_and_the_report_leaks_first():
    doc = _with_near_duplicates(small_doc())
    rows = stats_tables(doc)["near_duplicates"].to_pylist()
    assert rows == [
        {"group": 0, "split": "train", "image_id": 2, "distance": 0, "across_splits": True},
        {"group": 0, "split": "val", "image_id": 7, "distance": 4, "across_splits": True},
        {"group": 1, "split": "train", "image_id": 3, "distance": 0, "across_splits": False},
        {"group": 1, "split": "train", "image_id": 4, "distance": 0, "across_splits": False},
    ]
    page = render_report(doc)
    assert "2 groups of near-duplicate images" in page and "1 of them across splits" in page
    assert page.index("train: 2 (0), val: 7 (4)") < page.index("train: 3 (0), train: 4 (0)")
    assert "No two images are near-duplicates." in render_report(small_doc())
