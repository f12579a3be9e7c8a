"""The "first seen" engine: baselines and detections for any spec of that kind.

At an evaluation time T (on the hour, UTC) a key alerts when
- it occurs in the window [snap_h(T - window), T) among events delivered by T,
- neither the baseline nor an earlier alert holds an occurrence of it before the window start
  (occurrences last seen before snap_d(T - forget) are forgotten), and
- the baseline covers at least the warm-up: its history starts on or before snap_d(T - warm-up).
Each key alerts once: the alert itself counts as an occurrence afterwards, and the alert
ledger's unique (detection, key, first_seen) guards concurrent runs.
docs/detections.md explains each choice and where it departs from ESCU's SPL.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import sqlalchemy as sa

from trailguard import store as st
from trailguard.derive import ROW_BUILDERS
from trailguard.errors import TrailguardError
from trailguard.geoip import GeoIP
from trailguard.lake import Lake, partition_of, partition_of_path
from trailguard.specs import Spec, render_message

log = logging.getLogger(__name__)

MAX_ROWS_PER_ALERT = 50
FETCH_ROWS = 20_000
HOUR_CACHE_SIZE = 96  # two detections x 48 hours
GEO_ATTRS = ("country", "country_name", "city", "region")


class BaselineMissing(TrailguardError):
    """The detection cannot say what is new: there is no baseline, or it is too old."""


def snap_h(t: datetime) -> datetime:
    return t.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def snap_d(t: datetime) -> datetime:
    return snap_h(t).replace(hour=0)


def key_json(fields: tuple[str, ...], row: dict[str, Any]) -> str:
    return orjson.dumps({f: row.get(f) for f in fields}, option=orjson.OPT_SORT_KEYS).decode()


def watermark_name(spec: Spec) -> str:
    return f"baseline/{spec.id}"


def coverage_name(spec: Spec) -> str:
    return f"baseline_since/{spec.id}"


@dataclass
class Alert:
    spec: Spec
    key: dict[str, Any]
    first_seen: datetime
    fired_at: datetime
    rows: list[dict[str, Any]]
    known_countries: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "detection": self.spec.name,
            "detection_id": self.spec.id,
            "key": self.key,
            "first_seen": self.first_seen.isoformat(),
            "fired_at": self.fired_at.isoformat(),
            "risk_score": self.spec.risk_score,
            "impact": self.spec.impact,
            "confidence": self.spec.confidence,
            "mitre_attack": list(self.spec.mitre_attack),
            "message": render_message(self.spec, self.rows[0]),
            "rows": [_jsonable(r) for r in self.rows[:MAX_ROWS_PER_ALERT]],
            "rows_total": len(self.rows),
        }
        if self.known_countries is not None:
            out["known_countries"] = self.known_countries
        return out


@dataclass
class DetectReport:
    spec: Spec
    at: datetime
    events: int = 0
    rows: int = 0
    not_evaluated: dict[str, int] = field(default_factory=dict)
    keys_in_window: int = 0
    new_keys: int = 0
    warmed_up: bool = True
    alerts: list[Alert] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "detection": self.spec.name,
            "at": self.at.isoformat(),
            "events": self.events,
            "rows": self.rows,
            "not_evaluated": self.not_evaluated,
            "keys_in_window": self.keys_in_window,
            "new_keys": self.new_keys,
            "warmed_up": self.warmed_up,
            "alerts": len(self.alerts),
        }


@dataclass
class BaselineReport:
    spec: Spec
    at: datetime
    events: int
    rows: int
    keys_total: int
    aged_out: int
    not_evaluated: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "detection": self.spec.name,
            "at": self.at.isoformat(),
            "events": self.events,
            "rows": self.rows,
            "baseline_keys": self.keys_total,
            "aged_out": self.aged_out,
            "not_evaluated": self.not_evaluated,
        }


class Engine:
    def __init__(self, lake: Lake, state: st.StateStore, geo: GeoIP) -> None:
        self.lake, self.state, self.geo = lake, state, geo
        self._hour_cache: dict[tuple, list[dict[str, Any]]] = {}

    # -- reading the lake ----------------------------------------------------------------------
    def _select(self, spec: Spec, partitions: list[str], where: str, params: list[Any]) -> list[dict[str, Any]]:
        """The spec's events (success, event names, identity types), only the columns it needs."""
        _builder, columns = ROW_BUILDERS[spec.rows]
        columns = [*columns, "delivered_at"]
        conditions = [f"event_name IN ({', '.join('?' * len(spec.event_names))})", where]
        params = [*spec.event_names, *params]
        if spec.success_only:
            conditions.append("error_code IS NULL")
        if spec.exclude_user_types:
            conditions.append(f"coalesce(user_type, '') NOT IN ({', '.join('?' * len(spec.exclude_user_types))})")
            params += list(spec.exclude_user_types)
        sql = f"SELECT {', '.join(columns)} FROM events WHERE {' AND '.join(conditions)} ORDER BY event_time, event_id"
        con = self.lake.connect(partitions)
        try:
            return list(_fetch(con.execute(sql, params), columns))
        finally:
            con.close()

    def _scan(self, spec: Spec, partitions: list[str], where: str, params: list[Any]) -> _Scan:
        """Baseline rows aggregated over many partitions, a day at a time: memory holds one day's
        selected events, never the history (a call's copies share an event hour, so no pair is split)."""
        scan = _Scan()
        ordered = sorted(partitions)
        for i in range(0, len(ordered), 24):
            events = self._select(spec, ordered[i : i + 24], where, params)
            derived = ROW_BUILDERS[spec.rows][0](events, self.geo)
            scan.events += len(events)
            scan.rows += len(derived.rows)
            scan.not_evaluated.update(derived.not_evaluated)
            _aggregate(spec, derived.rows, scan.baseline)
        return scan

    def _window_events(self, spec: Spec, start: datetime, at: datetime) -> list[dict[str, Any]]:
        """Events of [start, at) delivered by ``at``. Each hour's selection is cached while its
        files are unchanged, so hourly runs in one process (replay) read each hour once."""
        infos: dict[str, list[Any]] = defaultdict(list)
        for info in self.lake.file_infos(_hours(start, at)):
            infos[partition_of_path(info.path)].append((info.path, info.size, info.mtime_ns))
        events: list[dict[str, Any]] = []
        for partition, files in sorted(infos.items()):
            key = (spec.id, partition, tuple(files))
            cached = self._hour_cache.pop(key, None)
            if cached is None:
                cached = self._select(spec, [partition], "TRUE", [])
            self._hour_cache[key] = cached  # most recently used last
            events += [e for e in cached if e["delivered_at"] <= at and start <= e["event_time"] < at]
        while len(self._hour_cache) > HOUR_CACHE_SIZE:
            del self._hour_cache[next(iter(self._hour_cache))]
        events.sort(key=lambda e: (e["event_time"], e["event_id"]))
        return events

    # -- baselines -----------------------------------------------------------------------------
    def baseline_initial(self, spec: Spec, at: datetime, days: int | None = None) -> BaselineReport:
        """Rebuild the baseline from the lake: events in [snap_d(T - days), T) delivered by T."""
        at = snap_h(at)
        since = snap_d(at - timedelta(days=days or spec.lookback_days))
        scan = self._scan(
            spec, _hours(since, at), "event_time >= ? AND event_time < ? AND delivered_at <= ?", [since, at, at]
        )
        earliest = self._earliest_event(since, at)
        with self.state.begin() as conn:
            conn.execute(st.baselines.delete().where(st.baselines.c.detection_id == spec.id))
            _merge(conn, spec, scan.baseline)
            aged = _age_out(conn, spec, at)
            _set_watermark(conn, watermark_name(spec), at)
            _set_watermark(conn, coverage_name(spec), max(since, earliest or at))
            total = _count(conn, spec)
        return scan.report(spec, at, total, aged)

    def baseline_update(self, spec: Spec, at: datetime) -> BaselineReport:
        """Merge everything delivered since the previous update (a missed day is caught up)."""
        at = snap_h(at)
        previous = self._watermark(watermark_name(spec))
        if previous is None:
            raise BaselineMissing(
                f"{spec.name}: no baseline yet; build it first (DAG baseline_initial, or "
                f"`trailguard baseline-initial --at {at.isoformat()}`)"
            )
        if previous >= at:
            return BaselineReport(spec, at, 0, 0, self._count(spec), 0, {})
        # Partitions that got events after the last update; hours from T on cannot hold events before T.
        partitions = [p for p in self.state.partitions_delivered_after(previous) if p < partition_of(at)]
        forget = snap_d(at - timedelta(days=spec.forget_days))
        scan = self._scan(
            spec,
            partitions,
            "delivered_at > ? AND delivered_at <= ? AND event_time >= ? AND event_time < ?",
            [previous, at, forget, at],
        )
        with self.state.begin() as conn:
            _merge(conn, spec, scan.baseline)
            aged = _age_out(conn, spec, at)
            _set_watermark(conn, watermark_name(spec), at)
            total = _count(conn, spec)
        return scan.report(spec, at, total, aged)

    # -- detection -----------------------------------------------------------------------------
    def detect(self, spec: Spec, at: datetime) -> DetectReport:
        at = snap_h(at)
        self._require_fresh_baseline(spec, at)
        start = snap_h(at - timedelta(hours=spec.window_hours))
        forget = snap_d(at - timedelta(days=spec.forget_days))
        report = DetectReport(spec, at)
        events = self._window_events(spec, start, at)
        report.events, derived = len(events), ROW_BUILDERS[spec.rows][0](events, self.geo)
        report.rows, report.not_evaluated = len(derived.rows), dict(derived.not_evaluated)
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in derived.rows:
            by_key[key_json(spec.key, row)].append(row)
        report.keys_in_window = len(by_key)
        if not by_key:
            return report
        coverage = self._watermark(coverage_name(spec))
        report.warmed_up = coverage is not None and coverage <= snap_d(at - timedelta(days=spec.warmup_days))
        known = self._known(spec, list(by_key), start, forget)
        new = {k: rows for k, rows in by_key.items() if k not in known}
        report.new_keys = len(new)
        if not report.warmed_up or not new:
            return report
        countries = self._known_countries(spec, start, forget) if "country" in spec.key else None
        alerts = [
            Alert(spec, orjson.loads(k), rows[0]["event_time"], at, rows, countries) for k, rows in sorted(new.items())
        ]
        report.alerts = self._record(alerts)
        return report

    def _require_fresh_baseline(self, spec: Spec, at: datetime) -> None:
        updated = self._watermark(watermark_name(spec))
        if updated is None:
            raise BaselineMissing(
                f"{spec.name}: no baseline, so nothing can be called new. Run the baseline_initial DAG "
                f"(or `trailguard baseline-initial --at {at.isoformat()}`) first."
            )
        if at - updated > timedelta(hours=spec.max_age_hours):
            raise BaselineMissing(
                f"{spec.name}: the baseline was last updated at {updated.isoformat()}, more than "
                f"{spec.max_age_hours} h before {at.isoformat()}. Run the baseline_update DAG "
                f"(or `trailguard baseline-update --at {at.isoformat()}`), which catches up every missed day."
            )

    def _known(self, spec: Spec, keys: list[str], start: datetime, forget: datetime) -> set[str]:
        """Keys with an occurrence before the window start (baseline) or an alert already raised."""
        b, a = st.baselines.c, st.alerts.c
        known: set[str] = set()
        with self.state.engine.connect() as conn:
            for chunk in _chunks(keys):
                known.update(
                    conn.execute(
                        sa.select(b.alert_key)
                        .where(b.detection_id == spec.id, b.alert_key.in_(chunk))
                        .where(b.first_seen < start, b.last_seen >= forget)
                    ).scalars()
                )
                known.update(
                    conn.execute(
                        sa.select(a.key).where(a.detection_id == spec.id, a.key.in_(chunk), a.first_seen >= forget)
                    ).scalars()
                )
        return known

    def _known_countries(self, spec: Spec, start: datetime, forget: datetime) -> list[str]:
        b = st.baselines.c
        with self.state.engine.connect() as conn:
            keys = conn.execute(
                sa.select(b.alert_key)
                .distinct()
                .where(b.detection_id == spec.id, b.first_seen < start, b.last_seen >= forget)
            ).scalars()
            return sorted({orjson.loads(k).get("country") for k in keys} - {None})

    def _record(self, alerts: list[Alert]) -> list[Alert]:
        """Insert into the alert ledger/outbox; only the alerts this call inserted are returned."""
        inserted = []
        now = st.now()
        with self.state.begin() as conn:
            for alert in alerts:
                payload = alert.as_dict()
                stmt = st.insert_ignore(conn, st.alerts).values(
                    detection_id=alert.spec.id,
                    key=key_json(alert.spec.key, alert.rows[0]),
                    first_seen=alert.first_seen,
                    fired_at=alert.fired_at,
                    created_at=now,
                    payload=orjson.dumps(payload).decode(),
                    status="pending",
                    attempts=0,
                    possible_duplicate=False,
                )
                if conn.execute(stmt).rowcount:
                    inserted.append(alert)
        return inserted

    # -- state helpers -------------------------------------------------------------------------
    def _watermark(self, name: str) -> datetime | None:
        with self.state.engine.connect() as conn:
            return conn.execute(sa.select(st.watermarks.c.value).where(st.watermarks.c.name == name)).scalar()

    def _count(self, spec: Spec) -> int:
        with self.state.engine.connect() as conn:
            return _count(conn, spec)

    def _earliest_event(self, since: datetime, at: datetime) -> datetime | None:
        """The first hour with events in [since, at): how much history the baseline really covers."""
        first = self.state.first_partition(partition_of(since))
        if first is None or first >= partition_of(at):
            return None
        return datetime.strptime(first, "%Y-%m-%dT%H").replace(tzinfo=timezone.utc)


def _fetch(cursor: Any, columns: list[str]) -> Iterator[dict[str, Any]]:
    while batch := cursor.fetchmany(FETCH_ROWS):
        for values in batch:
            yield dict(zip(columns, values, strict=True))


def _hours(start: datetime, end: datetime) -> list[str]:
    out, hour = [], snap_h(start)
    while hour < end:
        out.append(partition_of(hour))
        hour += timedelta(hours=1)
    return out


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class _BaselineRow:
    alert_key: str
    first_seen: datetime
    last_seen: datetime
    count: int
    attrs: dict[str, Any]


@dataclass
class _Scan:
    events: int = 0
    rows: int = 0
    not_evaluated: Counter = field(default_factory=Counter)
    baseline: dict[str, _BaselineRow] = field(default_factory=dict)

    def report(self, spec: Spec, at: datetime, total: int, aged: int) -> BaselineReport:
        return BaselineReport(spec, at, self.events, self.rows, total, aged, dict(self.not_evaluated))


def _aggregate(spec: Spec, rows: list[dict[str, Any]], out: dict[str, _BaselineRow]) -> None:
    """Fold rows (in event_time order) into per-key first and last time, count, and what was
    known at first sight."""
    for row in rows:
        key = key_json(spec.baseline_key, row)
        seen = out.get(key)
        if seen is None:
            attrs = {f: row.get(f) for f in GEO_ATTRS} if "country" in spec.key else {}
            out[key] = _BaselineRow(key_json(spec.key, row), row["event_time"], row["event_time"], 1, attrs)
        else:
            seen.last_seen = max(seen.last_seen, row["event_time"])
            seen.count += 1


def _merge(conn: sa.Connection, spec: Spec, rows: dict[str, _BaselineRow]) -> None:
    """Merge with min/max/sum; the earlier first sight keeps its alert key and attributes."""
    b = st.baselines.c
    keys = list(rows)
    for chunk in _chunks(keys):
        existing = conn.execute(sa.select(st.baselines).where(b.detection_id == spec.id, b.key.in_(chunk))).mappings()
        for old in existing:
            new = rows[old["key"]]
            if old["first_seen"] <= new.first_seen:
                new.alert_key, new.attrs = old["alert_key"], orjson.loads(old["attrs"])
            new.first_seen = min(new.first_seen, old["first_seen"])
            new.last_seen = max(new.last_seen, old["last_seen"])
            new.count += old["count"]
        conn.execute(st.baselines.delete().where(b.detection_id == spec.id, b.key.in_(chunk)))
    if rows:
        conn.execute(
            st.baselines.insert(),
            [
                {
                    "detection_id": spec.id,
                    "key": key,
                    "alert_key": r.alert_key,
                    "first_seen": r.first_seen,
                    "last_seen": r.last_seen,
                    "count": r.count,
                    "attrs": orjson.dumps(r.attrs).decode(),
                }
                for key, r in rows.items()
            ],
        )


def _age_out(conn: sa.Connection, spec: Spec, at: datetime) -> int:
    cutoff = snap_d(at - timedelta(days=spec.forget_days))
    b = st.baselines.c
    return conn.execute(st.baselines.delete().where(b.detection_id == spec.id, b.last_seen < cutoff)).rowcount


def _count(conn: sa.Connection, spec: Spec) -> int:
    return conn.execute(
        sa.select(sa.func.count()).select_from(st.baselines).where(st.baselines.c.detection_id == spec.id)
    ).scalar_one()


def _set_watermark(conn: sa.Connection, name: str, value: datetime) -> None:
    w = st.watermarks
    conn.execute(w.delete().where(w.c.name == name))
    conn.execute(w.insert().values(name=name, value=value, updated_at=st.now()))


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
