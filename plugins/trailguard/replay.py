"""Replay: the DAGs' schedule, run in order over a past range, to reproduce or forecast alerts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from trailguard.detect import Alert, Engine, snap_h
from trailguard.specs import Spec
from trailguard.store import REPLAYED


def schedule(start: datetime, end: datetime) -> Iterator[datetime]:
    """Every hour in (start, end], as the hourly DAG's data-interval ends."""
    at = snap_h(start) + timedelta(hours=1)
    while at <= end:
        yield at
        at += timedelta(hours=1)


def replay(
    engine: Engine, specs: list[Spec], start: datetime, end: datetime, status: str = REPLAYED
) -> Iterator[Alert]:
    """At each midnight the daily baseline update, then at each hour every detection. Alerts go to
    the ledger as ``status``: 'replayed' (never delivered) unless the caller wants them sent."""
    for at in schedule(start, end):
        if at.hour == 0:
            for spec in specs:
                engine.baseline_update(spec, at)
        for spec in specs:
            yield from engine.detect(spec, at, status).alerts
