"""Importing ahead what a run's last step will need, while its shards are still written.

Publishing imports Plotly and the report's figure template, and pyiceberg's catalog and
Parquet readers: about a second that would otherwise come after the last shard. The shard
writer starts these imports on a daemon thread as it starts; decoding leaves the interpreter
free most of the time. Once per process; publishing works the same without it.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["prepare", "prepare_in_background"]

_LOGGER = logging.getLogger(__name__)

# What this process has imported already (read-only once set; guarded by the lock).
_PREPARED: set = set()
_PREPARING = threading.Lock()


def prepare(needs: tuple[str, ...]) -> None:
    """Imports what publishing needs (``"report"``: Plotly and the report's figure template;
    ``"lake"``: pyiceberg's catalog and Parquet readers), once per process. Publishing works
    without it; it only moves about a second of imports off the end of a run."""
    with _PREPARING:
        needs = tuple(n for n in needs if n not in _PREPARED)
        _PREPARED.update(needs)
    if "report" in needs:
        from coco_beam.transforms.stats.report import warm_up

        warm_up()
    if "lake" in needs:
        from coco_beam.transforms.runs.lake import warm_up as warm_lake

        warm_lake()


def prepare_in_background(needs: tuple[str, ...]) -> None:
    """``prepare`` on a daemon thread (the writer calls it as it starts: the images it decodes
    leave the interpreter free most of the time)."""

    def run():
        try:
            prepare(needs)
        except Exception:  # noqa: BLE001 - publishing imports again and reports any error
            _LOGGER.debug("preparing %s failed", needs, exc_info=True)

    threading.Thread(target=run, name="prepare-publish", daemon=True).start()
