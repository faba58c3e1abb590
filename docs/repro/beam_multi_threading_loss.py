"""Beam's local runner in ``--direct_running_mode=multi_threading`` can lose elements: a
reproduction with Beam alone, no coco-beam code.

Why coco-beam refuses that mode (``pipelines/build.py``): in it, the FnApiRunner's worker
writes a bundle's output through ``TimeBasedBufferingClosableOutputStream``
(``apache_beam/runners/worker/data_plane.py``), which a timer thread flushes every second
(``DATA_BUFFER_TIME_LIMIT_MS`` in ``fn_api_runner/worker_handlers.py``) while the bundle's own
thread keeps writing into the same buffer without the flush's lock. The flush sends ``get()``
and then calls ``_clear()``: whatever the bundle wrote between the two is dropped, silently.
Runners that set no time-based flush (Dataflow, Flink, Spark and Prism, whose SDK workers
default ``data_buffer_time_limit_ms`` to 0; the in-process and multi-process modes of the local
runner) are not affected.

The pipeline: ``Create(range(n)) -> Reshuffle -> FlatMap (each element to its key and a
payload) -> GroupByKey -> count``; the count must be ``n``. Measured with Beam 2.77 on 2 cores:
at 192,000 elements, one run of three lost some (191,553 arrived; in another trial, 191,200).
The default here is small and fast (a few seconds, and it seldom loses anything); ``--large``
runs the 192,000-element case.

    python docs/repro/beam_multi_threading_loss.py [--large] [--runs N] [--mode MODE]

Exits 1 when any run lost or duplicated elements, 0 otherwise; ``--mode in_memory`` or
``multi_processing`` shows the same pipeline conserving every element.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

# A payload of some size makes the buffers fill and flush often.
_PAYLOAD = b"x" * 64
_KEYS = 16


def _spread(i: int):
    yield i % _KEYS, (i, _PAYLOAD)


def count_after_shuffle(elements: int, mode: str, workers: int) -> None:
    """Runs the pipeline once; raises ``BeamAssertException`` when the count is not
    ``elements``."""
    options = PipelineOptions(
        [
            "--runner=DirectRunner",
            f"--direct_running_mode={mode}",
            f"--direct_num_workers={workers}",
        ]
    )
    with beam.Pipeline(options=options) as p:
        total = (
            p
            | "Create" >> beam.Create(range(elements))
            | "Reshuffle" >> beam.Reshuffle()
            | "Spread" >> beam.FlatMap(_spread)
            | "GroupByKey" >> beam.GroupByKey()
            | "CountPerKey" >> beam.MapTuple(lambda _, values: sum(1 for _ in values))
            | "Sum" >> beam.CombineGlobally(sum)
        )
        assert_that(total, equal_to([elements]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="192,000 elements (slow)")
    parser.add_argument("--elements", type=int, default=None, help="default 20,000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--mode",
        default="multi_threading",
        choices=("multi_threading", "multi_processing", "in_memory"),
    )
    args = parser.parse_args(argv)
    # The failed assertion is raised to this loop; Beam's own tracebacks of it are noise here.
    logging.disable(logging.ERROR)
    elements = args.elements or (192_000 if args.large else 20_000)
    failed = 0
    for run in range(1, args.runs + 1):
        started = time.monotonic()
        try:
            count_after_shuffle(elements, args.mode, args.workers)
            verdict = "all arrived"
        except Exception as exc:  # noqa: BLE001 - the runner wraps the assertion in its own error
            failed += 1
            counted = re.search(r"Failed assert: \[(\d+)\] == \[(\d+)\]", str(exc))
            if counted is None:
                raise
            verdict = f"ONLY {int(counted.group(2)):,} ARRIVED"
        seconds = time.monotonic() - started
        what = f"{elements:,} elements, {args.mode}"
        print(f"run {run}/{args.runs} ({what}): {verdict}, {seconds:.1f} s")
    print(f"{failed} of {args.runs} runs did not conserve every element")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
