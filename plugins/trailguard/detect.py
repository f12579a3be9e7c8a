"""The "first seen" engine: baselines and detections for any spec of that kind.

Everything is "as of delivery": an event becomes *visible* at max(eventTime, delivered_at), the
delivery time in its object's name. At an evaluation time T (on the hour, UTC), S = snap_h(T - window):
- a key alerts when an occurrence of it became visible in [S, T): it happened in the window and
  was delivered before T, or happened earlier and was delivered in the window (late);
- and nothing knew of it before S: no baseline row for it visible before S (rows last seen before
  snap_d(T - forget) are forgotten) and no earlier alert;
- and the baseline covers at least the warm-up: its history starts on or before snap_d(T - warm-up).
Each key alerts once: the alert itself counts as an occurrence afterwards, and the alert
ledger's unique (detection, key, first_seen) guards concurrent runs.

The lake keeps one file per (event hour, delivery hour), so "visible in [S, T)" picks files, never
rows. docs/detections.md explains each choice and where it departs from ESCU's SPL.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from trailguard import store as st
from trailguard.derive import ROW_BUILDERS, Derived
from trailguard.errors import TrailguardError
from trailguard.geoip import GeoIP
from trailguard.lake import Lake, delivery_tag, partition_of, partition_of_path
from trailguard.specs import Spec, render_message

log = logging.getLogger(__name__)

MAX_ROWS_PER_ALERT = 50
MANY_PARTITIONS = 4  # more partitions to list than this: one LIST per date folder instead of one each
FILTER_COLUMNS = ("event_name", "error_code", "user_type", "delivered_at", "source_key")

Files = dict[str, str]  # delivery tag (YYYYMMDDTHH) -> path of that delivery hour's file


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


def merged_name(spec: Spec) -> str:
    """Objects the ingest ledger recorded up to this wall-clock time are in the baseline."""
    return f"baseline_merged/{spec.id}"


@dataclass
class Alert:
    spec: Spec
    key: dict[str, Any]  # the spec's key fields, in the spec's order
    first_seen: datetime
    fired_at: datetime
    rows: list[dict[str, Any]]  # the first MAX_ROWS_PER_ALERT matching rows, in event-time order
    rows_total: int
    known: list[Any] | None = None  # the key values known before the window (spec.list_known_as)

    def as_dict(self) -> dict[str, Any]:
        """The alert line and ledger payload: the issue's fields in its order, then the extras."""
        out = {
            "detection": self.spec.name,
            "detection_id": self.spec.id,
            "key": self.key,
            "first_seen": self.first_seen.isoformat(),
            "fired_at": self.fired_at.isoformat(),
            "risk_score": self.spec.risk_score,
            "message": render_message(self.spec, self.rows[0]),
            "rows": [_jsonable(r) for r in self.rows],
            "impact": self.spec.impact,
            "confidence": self.spec.confidence,
            "mitre_attack": list(self.spec.mitre_attack),
            "rows_total": self.rows_total,
        }
        if self.spec.list_known_as and self.known is not None:
            out[self.spec.list_known_as] = self.known
        return out


@dataclass
class DetectReport:
    spec: Spec
    at: datetime
    warmed_up: bool
    events: int = 0
    rows: int = 0
    not_evaluated: dict[str, int] = field(default_factory=dict)
    keys_in_window: int = 0
    new_keys: int = 0
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
    objects: int | None = None  # objects merged (updates)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "detection": self.spec.name,
            "at": self.at.isoformat(),
            "events": self.events,
            "rows": self.rows,
            "baseline_keys": self.keys_total,
            "aged_out": self.aged_out,
            "not_evaluated": self.not_evaluated,
        }
        if self.objects is not None:
            out["objects"] = self.objects
        return out


class Engine:
    def __init__(self, lake: Lake, state: st.StateStore, geo: GeoIP) -> None:
        self.lake, self.state, self.geo = lake, state, geo
        # Caches for hourly runs in one process (replay), each checked against the partition's
        # version (lake_partitions.updated_at, moved by every write) and kept while a run uses it.
        self._listings: dict[str, tuple[datetime, Files]] = {}  # partition -> (version, files)
        self._events: dict[tuple[str, str], tuple[datetime, list[dict[str, Any]]]] = {}  # (spec, path)
        self._hours: dict[tuple, _Hour] = {}  # (spec, partition, version, tags) -> rows by key
        self._specs: dict[str, Spec] = {}  # the specs evaluated here: one file read serves them all

    # -- reading the lake ----------------------------------------------------------------------
    def _files(self, versions: dict[str, datetime]) -> dict[str, Files]:
        """Each partition's files; a partition is listed again only after it was written."""
        stale = [p for p, v in versions.items() if self._listings.get(p, (None, {}))[0] != v]
        if len(stale) > MANY_PARTITIONS:
            listed: dict[str, Files] = defaultdict(dict)
            for info in self.lake.file_infos(stale):
                listed[partition_of_path(info.path)][_tag(info.path)] = info.path
        else:
            listed = {p: self.lake.files(p) for p in stale}
        for p in stale:
            self._listings[p] = (versions[p], dict(listed.get(p, {})))
        return {p: self._listings[p][1] for p in versions}

    def _parquet(self, path: str) -> pq.ParquetFile:
        """Files are small: decoding in threads costs more than it saves; on S3, one request per file."""
        return pq.ParquetFile(path, filesystem=self.lake.fs, pre_buffer=not self.lake.local)

    def _read(self, specs: list[Spec], path: str) -> dict[str, list[dict[str, Any]]]:
        """spec id -> its events in one file (event names, success, identity types), reading the
        file once for all of them and only the columns they need: never ``raw``."""
        table = self._parquet(path).read(columns=read_columns(*specs), use_threads=False)
        out = {}
        for spec in specs:
            mask = pc.is_in(table["event_name"], value_set=pa.array(spec.event_names))
            if spec.success_only:
                mask = pc.and_(mask, pc.is_null(table["error_code"]))
            if spec.exclude_user_types:
                user_type = pc.coalesce(table["user_type"], pa.scalar(""))
                mask = pc.and_(mask, pc.invert(pc.is_in(user_type, value_set=pa.array(spec.exclude_user_types))))
            out[spec.id] = table.filter(mask).select(read_columns(spec)).to_pylist()
        return out

    def _file_events(self, spec: Spec, path: str, version: datetime, used: set | None) -> list[dict[str, Any]]:
        """``_read``, cached while runs use the file: ``used`` collects the keys (None: do not keep).
        A file read for one spec fills the cache for every spec this engine evaluates (replay)."""
        key = (spec.id, path)
        hit = self._events.get(key)
        if hit is None or hit[0] != version:
            if used is None:
                return self._read([spec], path)[spec.id]
            self._specs.setdefault(spec.id, spec)
            for spec_id, events in self._read(list(self._specs.values()), path).items():
                self._events[spec_id, path] = (version, events)
            hit = self._events[key]
        used.add(key)
        return hit[1]

    def _derive(self, spec: Spec, events: list[dict[str, Any]]) -> Derived:
        """Candidate rows, in event-time order, after the spec's allow-list."""
        events.sort(key=lambda e: (e["event_time"], e["event_id"]))
        kept = [e for e in events if not spec.allows(e)] if spec.allow else events
        derived = ROW_BUILDERS[spec.rows].build(kept, self.geo)
        if len(kept) < len(events):
            derived.not_evaluated["allow-listed"] += len(events) - len(kept)
        return derived

    def _window(self, spec: Spec, start: datetime, at: datetime) -> list[_Hour]:
        """Rows visible in [start, at): event hours of the window delivered before ``at``, and events
        from before the window delivered in it. One cached _Hour per partition and file set."""
        first, until, late_from = partition_of(start), delivery_tag(at), delivery_tag(start)
        versions = self.state.partition_versions(partition_of(at), start=first, delivered_since=start)
        listing = self._files(versions)
        used_files: set = set()
        used_hours: set = set()
        hours = []
        for partition in sorted(versions):
            low = late_from if partition < first else ""
            files = sorted((tag, path) for tag, path in listing[partition].items() if low <= tag < until)
            if not files:
                continue
            version = versions[partition]
            key = (spec.id, partition, version, tuple(tag for tag, _ in files))
            if key not in self._hours:
                events = [e for _, path in files for e in self._file_events(spec, path, version, used_files)]
                self._hours[key] = _Hour.of(spec, len(events), self._derive(spec, events))
            used_files.update((spec.id, path) for _, path in files)
            used_hours.add(key)
            hours.append(self._hours[key])
        self._events = {k: v for k, v in self._events.items() if k[0] != spec.id or k in used_files}
        self._hours = {k: v for k, v in self._hours.items() if k[0] != spec.id or k in used_hours}
        return hours

    def _raw_records(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """event_id -> the original record, for the rows an alert shows (only they need ``raw``)."""
        ids = pa.array(sorted({r["event_id"] for r in rows}))
        out: dict[str, dict[str, Any]] = {}
        for partition in sorted({partition_of(r["event_time"]) for r in rows}):
            for path in self._listings.get(partition, (None, {}))[1].values():
                table = self._parquet(path).read(columns=["event_id", "raw"], use_threads=False)
                table = table.filter(pc.is_in(table["event_id"], value_set=ids))
                for event_id, raw in zip(table["event_id"].to_pylist(), table["raw"].to_pylist(), strict=True):
                    out[event_id] = orjson.loads(raw) if raw else {}
        return out

    def _scan(
        self, spec: Spec, versions: dict[str, datetime], wanted: Callable[[str], bool], objects: set[str] | None = None
    ) -> _Scan:
        """Baseline rows from these partitions' files whose delivery tag is ``wanted`` (and, when
        given, rows of these objects only), one partition at a time: memory holds one event hour."""
        scan = _Scan()
        listing = self._files(versions)
        keep = set() if objects is not None else None  # an update's files: the next run reads them too
        for partition in sorted(versions):
            events = [
                e
                for tag, path in sorted(listing[partition].items())
                if wanted(tag)
                for e in self._file_events(spec, path, versions[partition], keep)
                if objects is None or e["source_key"] in objects
            ]
            scan.add(spec, len(events), self._derive(spec, events))
        return scan

    # -- baselines -----------------------------------------------------------------------------
    def baseline_initial(self, spec: Spec, at: datetime, days: int | None = None) -> BaselineReport:
        """Rebuild the baseline from the lake: events of [snap_d(T - days), T) delivered before T."""
        at = snap_h(at)
        since = snap_d(at - timedelta(days=days or spec.lookback_days))
        snapshot = st.now()  # objects the ledger records after this are the next update's
        versions = self.state.partition_versions(partition_of(at), start=partition_of(since))
        until = delivery_tag(at)
        scan = self._scan(spec, versions, lambda tag: tag < until)
        earliest = self._earliest_event(since, at)
        with self.state.begin() as conn:
            conn.execute(st.baselines.delete().where(st.baselines.c.detection_id == spec.id))
            _merge(conn, spec, scan.baseline)
            aged = _age_out(conn, spec, at)
            _set_watermark(conn, watermark_name(spec), at)
            _set_watermark(conn, coverage_name(spec), max(since, earliest or at))
            _set_watermark(conn, merged_name(spec), snapshot)
            total = _count(conn, spec)
        return scan.report(spec, at, total, aged)

    def baseline_update(self, spec: Spec, at: datetime) -> BaselineReport:
        """Merge every object the ingest ledger holds that the previous update did not: delivered
        since it, or ingested after it ran (a late object, history onboarded later). A missed day
        is caught up; each object is merged by exactly one update."""
        at = snap_h(at)
        marks = self._watermarks(spec)
        if watermark_name(spec) not in marks:
            raise BaselineMissing(
                f"{spec.name}: no baseline yet; build it first (DAG baseline_initial, or "
                f"`trailguard baseline-initial --at {at.isoformat()}`)"
            )
        previous, previous_run = marks[watermark_name(spec)]
        if previous >= at:
            return BaselineReport(spec, at, 0, 0, self._count(spec), 0, {}, 0)
        merged_until = marks.get(merged_name(spec), (previous_run,))[0]  # stores from before 0004: the run time
        snapshot = st.now()
        objects = self.state.objects_to_merge(previous, at, merged_until, snapshot)
        scan = _Scan()
        if objects:
            tags = {delivery_tag(d) for d in objects.values()}
            versions = self.state.partition_versions(partition_of(at), delivered_since=snap_h(min(objects.values())))
            scan = self._scan(spec, versions, tags.__contains__, set(objects))
        with self.state.begin() as conn:
            _merge(conn, spec, scan.baseline)
            aged = _age_out(conn, spec, at)
            _set_watermark(conn, watermark_name(spec), at)
            _set_watermark(conn, merged_name(spec), snapshot)
            total = _count(conn, spec)
        return scan.report(spec, at, total, aged, len(objects))

    # -- detection -----------------------------------------------------------------------------
    def detect(self, spec: Spec, at: datetime, status: str = st.PENDING) -> DetectReport:
        """Evaluate the window ending at ``at``; new alerts go to the ledger with ``status``."""
        at = snap_h(at)
        marks = self._watermarks(spec)
        self._require_fresh_baseline(spec, at, marks.get(watermark_name(spec), (None,))[0])
        start = snap_h(at - timedelta(hours=spec.window_hours))
        forget = snap_d(at - timedelta(days=spec.forget_days))
        report = DetectReport(spec, at, _warmed_up(spec, at, marks.get(coverage_name(spec), (None,))[0]))
        by_key: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
        not_evaluated: Counter = Counter()
        for hour in self._window(spec, start, at):
            report.events += hour.events
            report.rows += hour.rows
            not_evaluated.update(hour.not_evaluated)
            for key, rows in hour.by_key.items():
                by_key[key].append(rows)
        report.not_evaluated, report.keys_in_window = dict(not_evaluated), len(by_key)
        if not by_key:
            return report
        known = self._known(spec, list(by_key), start, forget)
        new = {k: [r for rows in groups for r in rows] for k, groups in by_key.items() if k not in known}
        report.new_keys = len(new)
        if not report.warmed_up or not new:
            return report
        values = self._known_values(spec, start, forget) if spec.list_known_as else None
        shown = {key: rows[:MAX_ROWS_PER_ALERT] for key, rows in new.items()}
        records = (
            self._raw_records([r for rows in shown.values() for r in rows])
            if ROW_BUILDERS[spec.rows].alert_fields
            else {}
        )
        alerts = [self._alert(spec, rows, shown[key], records, at, values) for key, rows in sorted(new.items())]
        report.alerts = self._record(alerts, status)
        return report

    def _alert(
        self,
        spec: Spec,
        rows: list[dict[str, Any]],
        shown: list[dict[str, Any]],
        records: dict[str, dict[str, Any]],
        at: datetime,
        known: list[Any] | None,
    ) -> Alert:
        """One alert for a new key: the rows it shows get the fields only an alert needs (from ``raw``,
        read once for all of a run's alerts)."""
        extra = ROW_BUILDERS[spec.rows].alert_fields
        if extra is not None:
            shown = [{**r, **extra(r, records.get(r["event_id"], {}))} for r in shown]
        key = {f: rows[0].get(f) for f in spec.key}
        return Alert(spec, key, rows[0]["event_time"], at, shown, len(rows), known)

    def _require_fresh_baseline(self, spec: Spec, at: datetime, updated: datetime | None) -> None:
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
        """Keys visible before the window start (baseline) or already alerted."""
        b, a = st.baselines.c, st.alerts.c
        known: set[str] = set()
        with self.state.engine.connect() as conn:
            for chunk in _chunks(keys):
                known.update(
                    conn.execute(
                        sa.select(b.alert_key)
                        .where(b.detection_id == spec.id, b.alert_key.in_(chunk))
                        .where(b.visible_from < start, b.last_seen >= forget)
                    ).scalars()
                )
                known.update(
                    conn.execute(
                        sa.select(a.key).where(a.detection_id == spec.id, a.key.in_(chunk), a.first_seen >= forget)
                    ).scalars()
                )
        return known

    def _known_values(self, spec: Spec, start: datetime, forget: datetime) -> list[Any]:
        """The values of the spec's one key field that the baseline knew before the window."""
        (name,) = spec.key
        b = st.baselines.c
        with self.state.engine.connect() as conn:
            keys = conn.execute(
                sa.select(b.alert_key)
                .distinct()
                .where(b.detection_id == spec.id, b.visible_from < start, b.last_seen >= forget)
            ).scalars()
            return sorted({orjson.loads(k).get(name) for k in keys} - {None})

    def _record(self, alerts: list[Alert], status: str) -> list[Alert]:
        """Insert into the alert ledger/outbox; only the alerts this call inserted are returned."""
        inserted = []
        now = st.now()
        with self.state.begin() as conn:
            for alert in alerts:
                stmt = st.insert_ignore(conn, st.alerts).values(
                    detection_id=alert.spec.id,
                    key=key_json(alert.spec.key, alert.key),
                    first_seen=alert.first_seen,
                    fired_at=alert.fired_at,
                    created_at=now,
                    payload=orjson.dumps(alert.as_dict()).decode(),
                    status=status,
                    attempts=0,
                    possible_duplicate=False,
                )
                if conn.execute(stmt).rowcount:
                    inserted.append(alert)
        return inserted

    # -- state helpers -------------------------------------------------------------------------
    def baseline_watermark(self, spec: Spec) -> datetime | None:
        """T of the spec's last baseline build or update (None: no baseline)."""
        return self._watermarks(spec).get(watermark_name(spec), (None,))[0]

    def _watermarks(self, spec: Spec) -> dict[str, tuple[datetime, datetime]]:
        """name -> (value, updated_at) of the spec's watermarks, in one query."""
        w = st.watermarks.c
        names = [watermark_name(spec), coverage_name(spec), merged_name(spec)]
        with self.state.engine.connect() as conn:
            rows = conn.execute(sa.select(w.name, w.value, w.updated_at).where(w.name.in_(names)))
            return {name: (value, updated) for name, value, updated in rows}

    def _count(self, spec: Spec) -> int:
        with self.state.engine.connect() as conn:
            return _count(conn, spec)

    def _earliest_event(self, since: datetime, at: datetime) -> datetime | None:
        """The first hour with events in [since, at): how much history the baseline really covers."""
        first = self.state.first_partition(partition_of(since))
        if first is None or first >= partition_of(at):
            return None
        return datetime.strptime(first, "%Y-%m-%dT%H").replace(tzinfo=timezone.utc)


def _warmed_up(spec: Spec, at: datetime, coverage: datetime | None) -> bool:
    """The baseline's history starts on or before snap_d(T - warm-up)."""
    return coverage is not None and coverage <= snap_d(at - timedelta(days=spec.warmup_days))


def read_columns(*specs: Spec) -> list[str]:
    """What specs read from the lake: their builders' columns, the filters', their allow-lists'."""
    wanted = [
        column
        for spec in specs
        for column in (*ROW_BUILDERS[spec.rows].columns, *FILTER_COLUMNS, *(rule.field for rule in spec.allow))
    ]
    return list(dict.fromkeys(wanted))


def _tag(path: str) -> str:
    """The delivery tag in a data file's name (``delivered-YYYYMMDDTHH.parquet``)."""
    return path.rsplit("/", 1)[-1][len("delivered-") : -len(".parquet")]


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class _Hour:
    """One event hour's candidate rows for a spec (from one set of files), grouped by alert key."""

    events: int
    rows: int
    not_evaluated: Counter
    by_key: dict[str, list[dict[str, Any]]]

    @classmethod
    def of(cls, spec: Spec, events: int, derived: Derived) -> _Hour:
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in derived.rows:
            by_key[key_json(spec.key, row)].append(row)
        return cls(events, len(derived.rows), derived.not_evaluated, dict(by_key))


@dataclass
class _BaselineRow:
    alert_key: str
    first_seen: datetime
    last_seen: datetime
    count: int
    visible_from: datetime
    attrs: dict[str, Any]


@dataclass
class _Scan:
    events: int = 0
    rows: int = 0
    not_evaluated: Counter = field(default_factory=Counter)
    baseline: dict[str, _BaselineRow] = field(default_factory=dict)

    def add(self, spec: Spec, events: int, derived: Derived) -> None:
        self.events += events
        self.rows += len(derived.rows)
        self.not_evaluated.update(derived.not_evaluated)
        _aggregate(spec, derived.rows, self.baseline)

    def report(self, spec: Spec, at: datetime, total: int, aged: int, objects: int | None = None) -> BaselineReport:
        return BaselineReport(spec, at, self.events, self.rows, total, aged, dict(self.not_evaluated), objects)


def _aggregate(spec: Spec, rows: list[dict[str, Any]], out: dict[str, _BaselineRow]) -> None:
    """Fold rows into per-key first and last time, count, when it became visible, and what was
    known at first sight (the spec's ``baseline_attrs``)."""
    for row in rows:
        key = key_json(spec.baseline_key, row)
        at, visible = row["event_time"], max(row["event_time"], row["delivered_at"])
        seen = out.get(key)
        if seen is None:
            attrs = {f: row.get(f) for f in spec.baseline_attrs}
            out[key] = _BaselineRow(key_json(spec.key, row), at, at, 1, visible, attrs)
            continue
        if at < seen.first_seen:
            seen.alert_key, seen.attrs = key_json(spec.key, row), {f: row.get(f) for f in spec.baseline_attrs}
        seen.first_seen, seen.last_seen = min(seen.first_seen, at), max(seen.last_seen, at)
        seen.visible_from = min(seen.visible_from, visible)
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
            new.visible_from = min(new.visible_from, old["visible_from"])
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
                    "visible_from": r.visible_from,
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
