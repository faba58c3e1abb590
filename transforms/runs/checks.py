"""The checks a run passes before anything is published: pure functions, no Beam, no I/O.

  * ``choose_shards``: one result per expected shard (a retried bundle may have left another);
    a shard that no attempt wrote fails the run;
  * ``conservation`` and ``check_conservation``: for every record kind, read == written +
    rejected, else records were lost or invented and the run fails;
  * ``check_rejected_fraction``: past ``--max-rejected-fraction`` of any kind the run fails,
    naming the commonest reasons.

Each check raises ``RunFailed`` with a message meant for the person running the build; the
command line prints it as the run's one line of error.
"""

from __future__ import annotations

import collections

from coco_beam.schemas.records import KINDS

__all__ = [
    "RunFailed",
    "check_conservation",
    "check_rejected_fraction",
    "choose_shards",
    "conservation",
]


class RunFailed(RuntimeError):
    """The run's output is incomplete or untrustworthy; it was not published."""


def choose_shards(shards: list, num_shards: dict) -> tuple[list, list]:
    """``(chosen, extra)``: for every shard of every split in ``num_shards`` (``{split: n}``),
    the result of its first attempt (by attempt id, so the choice does not depend on arrival
    order), and the results of the other attempts, whose files are to be deleted."""
    by_key = collections.defaultdict(list)
    for shard in shards:
        by_key[(shard.split, shard.index)].append(shard)
    chosen, extra = [], []
    for split in sorted(num_shards):
        for index in range(num_shards[split]):
            results = sorted(by_key.get((split, index), []), key=lambda s: s.attempt)
            if not results:
                raise RunFailed(f"shard {index} of split {split} was not written")
            chosen.append(results[0])
            extra.extend(results[1:])
    return chosen, extra


def conservation(counts: dict, shards: list, rejected: list) -> dict:
    """``{kind: {read, written, rejected}}`` for every record kind; ``counts`` holds
    ``("read", kind) -> n``."""
    written = collections.Counter()
    for shard in shards:
        written.update(shard.written)
    rejected_by_kind = collections.Counter(r.kind for r in rejected)
    return {
        kind: {
            "read": counts.get(("read", kind), 0),
            "written": written[kind],
            "rejected": rejected_by_kind[kind],
        }
        for kind in KINDS
    }


def check_conservation(totals: dict) -> None:
    """Fails the run where a kind's records read are not those written plus those rejected."""
    broken = {k: v for k, v in totals.items() if v["read"] != v["written"] + v["rejected"]}
    if broken:
        raise RunFailed(f"records were lost or invented (read != written + rejected): {broken}")


def check_rejected_fraction(
    totals: dict, rejected: list, max_fraction: float, *, rejected_path: str
) -> None:
    """Fails the run where more than ``max_fraction`` of a kind's records were rejected, naming
    the three commonest reasons and where the rejected records are."""
    for kind, t in totals.items():
        if not t["read"] or t["rejected"] / t["read"] <= max_fraction:
            continue
        reasons = collections.Counter(r.reason for r in rejected if r.kind == kind)
        common = ", ".join(f"{reason} ({n})" for reason, n in reasons.most_common(3))
        raise RunFailed(
            f"{t['rejected']} of {t['read']} {kind} records were rejected, more than "
            f"--max-rejected-fraction={max_fraction}; commonest reasons: {common}. "
            f"Rejected records: {rejected_path}"
        )
