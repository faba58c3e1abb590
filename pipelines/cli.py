"""The ``coco-beam`` command: ``build``, ``stats`` and ``synth``.

``coco-beam build`` takes the options of ``pipelines.options.BuildOptions``; every other
argument is a Beam pipeline option, passed through. Run locally, it shows a progress bar of
images done out of images known, and a summary at the end. ``coco-beam stats`` runs the same
pipeline writing statistics only, or compares two builds' statistics (``--compare OLD NEW``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from tqdm import tqdm

from coco_beam.pipelines.layout import LayoutError
from coco_beam.pipelines.options import BuildOptions
from coco_beam.transforms.runs.incremental import latest_run
from coco_beam.transforms.runtime.packing import relax_gc
from coco_beam.transforms.runtime.progress import read_progress

__all__ = ["main"]

_LOCAL_RUNNERS = (None, "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner")


class _ProgressBar:
    """Polls the progress folder the local workers write into, until stopped."""

    def __init__(self, folder: str):
        self._folder = folder
        self._stop = threading.Event()
        self._bar = tqdm(total=0, unit="img", desc="images", dynamic_ncols=True, leave=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def _update(self):
        totals = read_progress(self._folder)
        known, done = totals.get("known", 0), totals.get("done", 0)
        if known != self._bar.total:
            self._bar.total = known
        self._bar.n = min(done, known) if known else done
        self._bar.refresh()

    def _loop(self):
        while not self._stop.wait(0.5):
            self._update()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._update()
        self._bar.close()


def _read_manifest(output: str, run_id: str) -> dict:
    path = FileSystems.join(output, "runs", run_id, "manifest.json")
    with FileSystems.open(path) as f:
        return json.loads(f.read())


def _summary(manifest: dict, run_dir: str, seconds: float) -> str:
    counts = manifest["counts"]
    rejected = sum(v["rejected"] for v in counts.values())
    total_bytes = sum(s["bytes"] for s in manifest["shards"])
    lines = [
        f"published {run_dir}",
        f"  images       {counts['image']['written']:>10,} written of {counts['image']['read']:,}",
        f"  annotations  {counts['annotation']['written']:>10,} written of "
        f"{counts['annotation']['read']:,}",
        f"  captions     {counts['caption']['written']:>10,} written of "
        f"{counts['caption']['read']:,}",
        *(
            [
                f"  panoptic     {counts['panoptic']['written']:>10,} written of "
                f"{counts['panoptic']['read']:,}"
            ]
            if counts.get("panoptic", {}).get("read")
            else []
        ),
        f"  shards       {len({(s['split'], s['index']) for s in manifest['shards']}):>10,} "
        f"({', '.join(sorted({s['format'] for s in manifest['shards']}))}; "
        f"{total_bytes / 1e6:,.1f} MB)"
        if manifest["shards"]
        else "  shards       none (statistics only)",
        f"  rejected     {rejected:>10,}"
        + (
            f"  ({', '.join(f'{k}: {v}' for k, v in manifest['rejected_reasons'].items())})"
            if rejected
            else ""
        ),
        f"  seconds      {seconds:>10,.1f}",
    ]
    changes = manifest.get("changes")
    if changes:
        if changes["incremental"]:
            done = (
                f"{changes['shards_reused']:,} shards reused, {changes['shards_rewritten']:,} "
                "rewritten"
            )
        else:
            done = f"rebuilt in full ({changes['why_not_incremental']})"
        lines.append(
            f"  changes      {changes['images_added']:>10,} added, "
            f"{changes['images_removed']:,} removed, {changes['images_modified']:,} modified, "
            f"{changes['annotations_changed']:,} reannotated since {changes['previous_run']}; "
            + done
        )
    if manifest["stats"]:
        lines.append(f"  report       {run_dir}/{manifest['stats']['report']}")
    return "\n".join(lines)


def _build_help() -> str:
    parser = argparse.ArgumentParser(
        prog="coco-beam build",
        usage="coco-beam build (--coco-root ROOT | --annotations FILE... --images DIR) "
        "--output OUT [options] [Beam pipeline options]",
        description="Shard a COCO-format dataset into Parquet. Every argument not listed here "
        "is a Beam pipeline option (--runner, --direct_num_workers, --project, ...).",
    )
    BuildOptions._add_argparse_args(parser)
    return parser.format_help()


# Failures raised inside a worker reach the launcher wrapped in the runner's own error; these
# are the ones that speak to the user, and their message is what to print.
_USER_ERRORS = ("RunFailed", "LeaseHeld", "CocoFileError")


def _user_error(exc: BaseException) -> str | None:
    text = f"{type(exc).__name__}: {exc}"
    for name in _USER_ERRORS:
        marker = f"{name}: "
        if marker in text:
            return text[text.rindex(marker) + len(marker) :].split("\n")[0].split(" [while")[0]
    return None


def _raised_by_a_step(exc: BaseException) -> bool:
    """Beam names the step in the message of an exception raised while running one."""
    return " [while running " in str(exc)


def _build(argv: list[str], *, command: str = "build", statistics_only: bool = False) -> int:
    from coco_beam.pipelines import build

    if "-h" in argv or "--help" in argv:
        print(_stats_help() if statistics_only else _build_help())
        return 0
    options = PipelineOptions(argv)
    runner = options.view_as(StandardOptions).runner
    started = time.monotonic()
    progress = None
    if runner in _LOCAL_RUNNERS and "--progress-dir" not in " ".join(argv):
        progress = tempfile.TemporaryDirectory(prefix="coco-beam-progress-")
        argv = [*argv, f"--progress-dir={progress.name}"]
    try:
        if progress is not None and sys.stderr.isatty():
            with _ProgressBar(progress.name):
                result, plan = build.run(argv, statistics_only=statistics_only)
        else:
            result, plan = build.run(argv, statistics_only=statistics_only)
    except Exception as exc:
        # A failed run (too many rejections, an unreadable annotation file) exits 1, whether
        # it was raised in this process or reached it wrapped by a worker process; bad
        # arguments and layouts, found before the pipeline runs, exit 2; anything else is a
        # bug and keeps its traceback.
        message = _user_error(exc)
        if message is not None:
            print(f"coco-beam {command}: error: {message}", file=sys.stderr)
            return 1
        if isinstance(exc, (LayoutError, ValueError)) and not _raised_by_a_step(exc):
            print(f"coco-beam {command}: error: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        if progress is not None:
            progress.cleanup()
    manifest = _read_manifest(plan.output, plan.run_id)
    print(_summary(manifest, plan.run_dir, time.monotonic() - started))
    return 0


def _stats_help() -> str:
    parser = argparse.ArgumentParser(
        prog="coco-beam stats",
        usage="coco-beam stats (--coco-root ROOT | --annotations FILE... --images DIR) "
        "--output OUT [options] [Beam pipeline options]\n"
        "       coco-beam stats --compare OLD NEW [--json FILE]",
        description="Compute a COCO-format dataset's statistics (OUT/runs/<id>/stats/: "
        "stats.json, Parquet tables, report.html) without writing shards; or compare the "
        "statistics of two builds (an output folder, a run folder or a stats.json each).",
    )
    BuildOptions._add_argparse_args(parser)
    return parser.format_help()


def load_stats(location: str) -> dict:
    """The statistics document of an output folder (its latest run), a run folder, or a
    ``stats.json`` itself; local or on any Beam filesystem."""
    location = location.rstrip("/")
    if location.endswith(".json"):
        path = location
    else:
        latest = latest_run(location)
        if latest is not None:
            location = latest[1]
        path = FileSystems.join(location, "stats", "stats.json")
    if not FileSystems.exists(path):
        raise FileNotFoundError(
            f"no statistics at {location}: expected an output folder with LATEST, a run "
            "folder with stats/stats.json, or a stats.json"
        )
    with FileSystems.open(path) as f:
        return json.loads(f.read())


def _compare(argv: list[str]) -> int:
    from coco_beam.transforms.stats.compare import compare_stats, format_comparison

    parser = argparse.ArgumentParser(
        prog="coco-beam stats --compare",
        description="What changed between two builds' statistics, per split and category.",
    )
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), required=True)
    parser.add_argument("--json", dest="json_path", help="Also write the comparison here.")
    args = parser.parse_args(argv)
    try:
        old, new = (load_stats(p) for p in args.compare)
    except (FileNotFoundError, ValueError) as exc:
        print(f"coco-beam stats: error: {exc}", file=sys.stderr)
        return 2
    diff = compare_stats(old, new)
    if args.json_path:
        with FileSystems.create(args.json_path) as f:
            f.write((json.dumps(diff, indent=1, sort_keys=True) + "\n").encode())
    print(format_comparison(diff))
    return 0


def _stats(argv: list[str]) -> int:
    if any(a.split("=", 1)[0] == "--compare" for a in argv):
        return _compare(argv)
    if any(a.split("=", 1)[0] == "--formats" for a in argv):
        print("coco-beam stats: error: --formats belongs to coco-beam build", file=sys.stderr)
        return 2
    return _build(argv, command="stats", statistics_only=True)


def _synth(argv: list[str]) -> int:
    from coco_beam.pipelines.synth import synthesize

    parser = argparse.ArgumentParser(
        prog="coco-beam synth", description="Write a synthetic COCO dataset."
    )
    parser.add_argument("--output", required=True, help="Root folder of the dataset.")
    parser.add_argument("--images", type=int, required=True, help="Number of images.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-panoptic", dest="panoptic", action="store_false", help="Leave out panoptic files."
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    splits = synthesize(args.output, args.images, args.seed, panoptic=args.panoptic)
    print(
        f"wrote {sum(splits.values())} images ({', '.join(f'{k}: {v}' for k, v in splits.items())})"
        f" to {args.output} in {time.monotonic() - started:.1f} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"build": _build, "stats": _stats, "synth": _synth}
    if not argv or argv[0] not in commands:
        usage = (
            "usage: coco-beam {build,stats,synth} [options]  (coco-beam COMMAND --help for more)"
        )
        if argv and argv[0] in ("-h", "--help"):
            print(usage)
            return 0
        print(usage, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Beam logs a failing step's traceback before raising it; the run ends with one line
    # saying why instead (worker processes are told the same by ``build.default_runner``).
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    relax_gc()  # the in-process runner holds every shuffled record in this process
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
