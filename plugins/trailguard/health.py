"""Pipeline health: is CloudTrail still arriving, is ingest keeping up, is quarantine growing,
are the baselines fresh, do alerts reach Slack?

The checks are pure functions over facts read from the state store, evaluated at a ``now``
the caller passes (the run's data interval end), so a run can be replayed and tested. An
incident state machine over ``store.health_incidents`` turns findings into one notice when a
condition starts and one when it clears, instead of one message every hour::

    finding appears -> row opened (open_notified=false) --posted--> open_notified=true
    finding gone    -> closed_at set (close_notified=false) --posted--> close_notified=true

Quarantine growth counts a one-hour window, so a burst every other hour would open and clear
it each hour: it clears only after ``Thresholds.quarantine_quiet`` without the finding.

A notice Slack did not take stays owed and the next run posts it. Before each post the notice
is recorded as attempted, so one Slack may have taken (a timeout after the request went out, a
task killed mid-post) is re-posted marked as a possible duplicate, as the alert outbox does.
The daily summary is posted once per day the same way. Runs are expected one at a time (the
DAG has ``max_active_runs=1``); a run whose ``now`` is older than what the incidents already
record does nothing.

No Airflow here: the DAG passes ``now`` and a ``send`` callable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from trailguard.settings import Settings
from trailguard.slack import POSSIBLE_DUPLICATE, Message, SendResult, redact, render_ops
from trailguard.store import (
    FAILED,
    PENDING,
    REPLAYED,
    SENDING,
    WHOLE_OBJECT,
    StateStore,
    alerts,
    health_incidents,
    insert_ignore,
    objects,
    quarantine,
    watermarks,
)
from trailguard.store import now as store_now

log = logging.getLogger(__name__)

DELIVERY_GAP, INGEST_LAG, QUARANTINE_GROWTH, BASELINE_AGE = (
    "delivery_gap",
    "ingest_lag",
    "quarantine_growth",
    "baseline_age",
)
FAILED_ALERTS, ALERT_BACKLOG = "failed_alerts", "alert_backlog"
OPEN, CLOSE = "open", "close"
BASELINE_PREFIX = "baseline/"
SUMMARY_PREFIX = "daily_summary/"  # watermarks: daily_summary/<day>/attempted and .../posted
INGEST_SUBJECT = "ingest"
RECORDS_SUBJECT, OBJECTS_SUBJECT = "records", "whole objects"
ALERTS_SUBJECT = "all detections"
MAX_LISTED = 5  # whole-object quarantines named in one finding

Sender = Callable[[Message], SendResult]
Key = tuple[str, str]

_LABELS = {
    DELIVERY_GAP: "CloudTrail delivery gap",
    INGEST_LAG: "Ingest lag",
    QUARANTINE_GROWTH: "Quarantine growth",
    BASELINE_AGE: "Stale baseline",
    FAILED_ALERTS: "Alerts Slack rejected",
    ALERT_BACKLOG: "Alerts not reaching Slack",
}
_HINTS = {
    DELIVERY_GAP: "Check that the trail still logs for this account and region (trail status, a StopLogging "
    "or DeleteTrail call, S3 bucket policy or KMS key changes) and that its prefix still receives objects.",
    INGEST_LAG: "Check the cloudtrail_ingest DAG: paused, failing, or unable to list the source "
    "(AWS connection, credentials, bucket policy).",
    QUARANTINE_GROWTH: "See the quarantine table for the reasons (docs/schema.md): "
    "a format change, truncated deliveries or objects that are not CloudTrail.",
    BASELINE_AGE: "The daily baseline update of this detection has not completed: check its DAG runs. "
    "Alerts keep firing against an old baseline until it catches up.",
    FAILED_ALERTS: "Slack rejected these messages (the alerts table has each one's last_error). Fix the cause, "
    "then re-queue them: docs/alerts.md.",
    ALERT_BACKLOG: "Check the detections DAG's deliver task: Slack down or throttling, or a connection, token or "
    "channel problem. The alerts are kept and posted once delivery works.",
}


@dataclass(frozen=True)
class Thresholds:
    """When a check fires (``from_settings``: the TRAILGUARD_HEALTH_* settings)."""

    gap: timedelta = timedelta(hours=2)  # no delivery from an account/region for this long
    lag: timedelta = timedelta(hours=3)  # the newest ingested delivery is this old
    history: timedelta = timedelta(hours=24)  # "used to deliver": another object this long before the silence
    quarantine_records: int = 100  # more quarantined records than this per window
    quarantine_window: timedelta = timedelta(hours=1)
    baseline_age: timedelta = timedelta(hours=36)  # daily update missing
    lookback: timedelta = timedelta(days=7)  # how far back deliveries are read
    quarantine_quiet: timedelta = timedelta(hours=3)  # without the finding before it clears (hysteresis)
    pending_age: timedelta = timedelta(hours=3)  # an alert waiting this long to reach Slack

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            gap=timedelta(hours=settings.health_gap_hours),
            lag=timedelta(hours=settings.health_lag_hours),
            quarantine_records=settings.health_quarantine_records,
            baseline_age=timedelta(hours=settings.health_baseline_age_hours),
            pending_age=timedelta(hours=settings.health_pending_alert_hours),
        )


DEFAULTS = Thresholds()


@dataclass(frozen=True)
class Finding:
    """A condition a check found at ``now``; (kind, subject) identifies it across runs."""

    kind: str
    subject: str
    details: str

    @property
    def key(self) -> Key:
        return (self.kind, self.subject)


@dataclass(frozen=True)
class Incident:
    """A ``health_incidents`` row. ``uncertain``: notices Slack may already have posted."""

    id: int | None
    kind: str
    subject: str
    opened_at: datetime
    last_seen_at: datetime
    details: str
    closed_at: datetime | None = None
    open_notified: bool = False
    close_notified: bool = False
    uncertain: frozenset[str] = frozenset()

    @property
    def key(self) -> Key:
        return (self.kind, self.subject)


@dataclass(frozen=True)
class Activity:
    """The newest delivery of a source and the one before it, within the look-back."""

    last: datetime
    previous: datetime | None = None


@dataclass(frozen=True)
class Facts:
    """Everything the checks read, at one ``now``."""

    pairs: Mapping[tuple[str | None, str | None], Activity] = field(default_factory=dict)
    quarantined_records: int = 0
    whole_objects: tuple[tuple[str, str], ...] = ()  # (object uri, reason), newest first
    baselines: Mapping[str, datetime] = field(default_factory=dict)  # detection id -> T of the last update
    ongoing: frozenset[Key] = frozenset()  # keys of the open incidents
    failed_alerts: int = 0
    pending_alerts: int = 0
    oldest_pending: datetime | None = None  # created_at of the oldest alert waiting to post


@dataclass(frozen=True)
class Notice:
    """A Slack message owed for an incident: that it opened, or that it cleared."""

    incident: Incident
    event: str  # OPEN or CLOSE


@dataclass(frozen=True)
class HealthReport:
    """What one ``run_health`` call found and did."""

    findings: tuple[Finding, ...] = ()
    opened: int = 0
    kept: int = 0
    closed: int = 0
    sent: int = 0
    unsent: int = 0
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "findings": [asdict(f) for f in self.findings]}


# -- checks (pure) -------------------------------------------------------------------------------
def delivery_gaps(
    pairs: Mapping[tuple[str | None, str | None], Activity],
    now: datetime,
    limits: Thresholds = DEFAULTS,
    ongoing: frozenset[Key] = frozenset(),
) -> list[Finding]:
    """Account/region pairs that delivered regularly and have been silent for ``limits.gap``.

    An open gap stays a finding while the pair is silent, even once its last delivery falls
    out of the look-back: only a new delivery clears it.
    """
    findings: list[Finding] = []
    seen: set[str] = set()
    for (account, region), activity in sorted(pairs.items(), key=lambda item: str(item[0])):
        if not account or not region:
            continue
        subject = f"{account}/{region}"
        seen.add(subject)
        if silent(activity, now, limits.gap, limits.history, (DELIVERY_GAP, subject) in ongoing):
            findings.append(Finding(DELIVERY_GAP, subject, f"no object delivered since {_since(activity.last, now)}"))
    for kind, subject in sorted(ongoing):
        if kind == DELIVERY_GAP and subject not in seen:
            findings.append(
                Finding(DELIVERY_GAP, subject, f"no object delivered for more than {_span(limits.lookback)}")
            )
    return findings


def ingest_lag(
    newest: Activity | None, now: datetime, limits: Thresholds = DEFAULTS, ongoing: bool = False
) -> list[Finding]:
    """The newest ingested delivery is older than ``limits.lag`` while objects used to arrive."""
    if newest is None:
        detail = f"no object ingested for more than {_span(limits.lookback)}"
        return [Finding(INGEST_LAG, INGEST_SUBJECT, detail)] if ongoing else []
    if not silent(newest, now, limits.lag, limits.history, ongoing):
        return []
    return [Finding(INGEST_LAG, INGEST_SUBJECT, f"newest ingested object was delivered {_since(newest.last, now)}")]


def quarantine_growth(
    records: int, whole_objects: Sequence[tuple[str, str]], limits: Thresholds = DEFAULTS
) -> list[Finding]:
    """Too many quarantined records in the window, or any object quarantined as a whole."""
    window = _span(limits.quarantine_window)
    findings: list[Finding] = []
    if records > limits.quarantine_records:
        detail = f"{records} records quarantined in the last {window} (more than {limits.quarantine_records})"
        findings.append(Finding(QUARANTINE_GROWTH, RECORDS_SUBJECT, detail))
    if whole_objects:
        listed = "; ".join(f"{uri} ({reason})" for uri, reason in whole_objects[:MAX_LISTED])
        more = f" and {len(whole_objects) - MAX_LISTED} more" if len(whole_objects) > MAX_LISTED else ""
        detail = f"{len(whole_objects)} whole object(s) quarantined in the last {window}: {listed}{more}"
        findings.append(Finding(QUARANTINE_GROWTH, OBJECTS_SUBJECT, detail))
    return findings


def baseline_age(baselines: Mapping[str, datetime], now: datetime, limits: Thresholds = DEFAULTS) -> list[Finding]:
    """Detections whose last baseline update evaluated more than ``limits.baseline_age`` ago."""
    return [
        Finding(BASELINE_AGE, detection_id, f"last baseline update evaluated the data up to {_since(value, now)}")
        for detection_id, value in sorted(baselines.items())
        if now - value > limits.baseline_age
    ]


def alert_delivery(
    failed: int, pending: int, oldest_pending: datetime | None, now: datetime, limits: Thresholds = DEFAULTS
) -> list[Finding]:
    """Alerts Slack rejected (they stay failed until re-queued), and alerts waiting too long."""
    findings: list[Finding] = []
    if failed:
        findings.append(Finding(FAILED_ALERTS, ALERTS_SUBJECT, f"{failed} alert(s) marked failed"))
    if oldest_pending is not None and now - oldest_pending >= limits.pending_age:
        detail = f"{pending} alert(s) pending; the oldest was created {_since(oldest_pending, now)}"
        findings.append(Finding(ALERT_BACKLOG, ALERTS_SUBJECT, detail))
    return findings


def evaluate(facts: Facts, now: datetime, limits: Thresholds = DEFAULTS) -> list[Finding]:
    """Every check over one set of facts."""
    return [
        *delivery_gaps(facts.pairs, now, limits, facts.ongoing),
        *ingest_lag(newest(facts.pairs), now, limits, (INGEST_LAG, INGEST_SUBJECT) in facts.ongoing),
        *quarantine_growth(facts.quarantined_records, facts.whole_objects, limits),
        *baseline_age(facts.baselines, now, limits),
        *alert_delivery(facts.failed_alerts, facts.pending_alerts, facts.oldest_pending, now, limits),
    ]


def silent(activity: Activity, now: datetime, limit: timedelta, history: timedelta, ongoing: bool) -> bool:
    """Nothing for ``limit`` from a source that was active: another delivery within ``history``
    before the last one. An ongoing incident needs only the silence (no re-judging its past)."""
    if now - activity.last < limit:
        return False
    if ongoing:
        return True
    return activity.previous is not None and activity.last - activity.previous <= history


def activities(
    rows: Iterable[tuple[str | None, str | None, datetime]],
) -> dict[tuple[str | None, str | None], Activity]:
    """(account, region, delivered_at) rows, newest first per pair -> each pair's two newest deliveries."""
    out: dict[tuple[str | None, str | None], Activity] = {}
    for account, region, delivered_at in rows:
        pair = (account, region)
        current = out.get(pair)
        if current is None:
            out[pair] = Activity(delivered_at)
        elif current.previous is None:
            out[pair] = Activity(current.last, delivered_at)
    return out


def newest(pairs: Mapping[Any, Activity]) -> Activity | None:
    """The two newest deliveries over all pairs (they are among each pair's two newest)."""
    times = sorted((t for a in pairs.values() for t in (a.last, a.previous) if t is not None), reverse=True)
    if not times:
        return None
    return Activity(times[0], times[1] if len(times) > 1 else None)


# -- the incident state machine (pure) -----------------------------------------------------------
def reconcile(
    open_incidents: Sequence[Incident], findings: Sequence[Finding], now: datetime, limits: Thresholds = DEFAULTS
) -> tuple[list[Incident], list[Incident], list[Incident]]:
    """(to_open, to_keep, to_close): new incidents for new findings, open ones still found
    (last seen now, details refreshed), and open ones no longer found (closed now, unless their
    kind must stay quiet for a while first: they are kept as they are)."""
    current: dict[Key, Finding] = {}
    for finding in findings:
        current.setdefault(finding.key, finding)
    to_keep: list[Incident] = []
    to_close: list[Incident] = []
    for incident in open_incidents:
        finding = current.pop(incident.key, None)
        if finding is not None:
            to_keep.append(replace(incident, last_seen_at=now, details=finding.details))
        elif now - incident.last_seen_at < quiet_before_close(incident.kind, limits):
            to_keep.append(incident)
        else:
            to_close.append(replace(incident, closed_at=now))
    to_open = [Incident(None, f.kind, f.subject, now, now, f.details) for f in current.values()]
    return to_open, to_keep, to_close


def quiet_before_close(kind: str, limits: Thresholds = DEFAULTS) -> timedelta:
    """How long an incident must go unfound before it clears: quarantine growth is counted per
    hour and bursty, the other conditions clear as soon as they are gone."""
    return limits.quarantine_quiet if kind == QUARANTINE_GROWTH else timedelta(0)


def owed_notices(incidents: Iterable[Incident]) -> list[Notice]:
    """Notices not yet posted: clearings first (a flapping condition reads in order), then openings.

    A closed incident owes one notice only, even when its opening was never posted: the
    clearing message says when it started.
    """
    incidents = sorted(incidents, key=lambda i: (i.id or 0, i.opened_at))
    closes = [Notice(i, CLOSE) for i in incidents if i.closed_at is not None and not i.close_notified]
    opens = [Notice(i, OPEN) for i in incidents if i.closed_at is None and not i.open_notified]
    return closes + opens


def render_notice(notice: Notice) -> Message:
    """The ops message for one notice (``render_ops`` escapes every line)."""
    incident = notice.incident
    label = _LABELS.get(incident.kind, incident.kind)
    lines: list[str] = [POSSIBLE_DUPLICATE] if notice.event in incident.uncertain else []
    if notice.event == OPEN:
        title = f":warning: {label}: {incident.subject}"
        lines += [incident.details, f"detected at {_iso(incident.opened_at)}"]
        if incident.kind in _HINTS:
            lines.append(_HINTS[incident.kind])
        return render_ops(title, lines)
    closed = incident.closed_at or incident.last_seen_at
    title = f":white_check_mark: Cleared: {label}: {incident.subject}"
    lasted = _span(closed - incident.opened_at)
    lines += [
        f"cleared at {_iso(closed)}, {lasted} after it was detected at {_iso(incident.opened_at)}",
        f"last seen: {incident.details}",
    ]
    if not incident.open_notified:
        lines.append("the notice that it started could not be posted at the time")
    return render_ops(title, lines)


# -- the run (I/O at the edges) ------------------------------------------------------------------
def run_health(state: StateStore, now: datetime, send: Sender, limits: Thresholds = DEFAULTS) -> HealthReport:
    """Read the facts at ``now``, reconcile the incidents, post the notices they owe."""
    latest = _latest_incident_time(state)
    if latest is not None and now < latest:
        reason = f"now {_iso(now)} is before the latest incident update {_iso(latest)}: an out-of-order run"
        log.warning("pipeline health skipped: %s", reason)
        return HealthReport(skipped=reason)
    open_incidents = _read_incidents(state, health_incidents.c.closed_at.is_(None))
    facts = read_facts(state, now, limits, frozenset(i.key for i in open_incidents))
    findings = evaluate(facts, now, limits)
    to_open, to_keep, to_close = reconcile(open_incidents, findings, now, limits)
    _write(state, to_open, to_keep, to_close)
    sent, unsent = _post_owed(state, send)
    return HealthReport(tuple(findings), len(to_open), len(to_keep), len(to_close), sent, unsent)


def read_facts(state: StateStore, now: datetime, limits: Thresholds, ongoing: frozenset[Key] = frozenset()) -> Facts:
    """The state store's answers to the checks' questions, as of ``now`` (nothing after it counts)."""
    with state.engine.connect() as conn:
        failed, pending, oldest = _outbox(conn, now)
        return Facts(
            pairs=activities(_recent_deliveries(conn, now - limits.lookback, now)),
            quarantined_records=_count_quarantined(conn, now - limits.quarantine_window, now),
            whole_objects=_whole_objects(conn, now - limits.quarantine_window, now),
            baselines=_baselines(conn),
            ongoing=ongoing,
            failed_alerts=failed,
            pending_alerts=pending,
            oldest_pending=oldest,
        )


def _outbox(conn: Connection, now: datetime) -> tuple[int, int, datetime | None]:
    """(failed, pending, oldest pending created_at) over the alerts created by ``now``; the
    outbox keeps only its current state, so this is the present even when a run replays the past."""
    created = alerts.c.created_at <= now
    failed = conn.execute(sa.select(sa.func.count()).where(created, alerts.c.status == FAILED)).scalar_one()
    waiting = sa.select(sa.func.count(), sa.func.min(alerts.c.created_at)).where(
        created, alerts.c.status.in_([PENDING, SENDING])
    )
    pending, oldest = conn.execute(waiting).one()
    return int(failed), int(pending), oldest


def _recent_deliveries(conn: Connection, start: datetime, end: datetime) -> list[tuple[Any, Any, datetime]]:
    """The two newest deliveries per (account, region) in (start, end], newest first."""
    rank = (
        sa.func.row_number()
        .over(partition_by=(objects.c.account_id, objects.c.region), order_by=objects.c.delivered_at.desc())
        .label("rank")
    )
    ranked = (
        sa.select(objects.c.account_id, objects.c.region, objects.c.delivered_at, rank)
        .where(objects.c.delivered_at > start, objects.c.delivered_at <= end)
        .subquery()
    )
    query = (
        sa.select(ranked.c.account_id, ranked.c.region, ranked.c.delivered_at)
        .where(ranked.c.rank <= 2)
        .order_by(ranked.c.account_id, ranked.c.region, ranked.c.delivered_at.desc())
    )
    return [(r.account_id, r.region, r.delivered_at) for r in conn.execute(query)]


def _count_quarantined(conn: Connection, start: datetime, end: datetime) -> int:
    query = sa.select(sa.func.count()).where(quarantine.c.created_at > start, quarantine.c.created_at <= end)
    return int(conn.execute(query).scalar_one())


def _whole_objects(conn: Connection, start: datetime, end: datetime) -> tuple[tuple[str, str], ...]:
    query = (
        sa.select(quarantine.c.object_uri, quarantine.c.reason)
        .where(
            quarantine.c.record_index == WHOLE_OBJECT,
            quarantine.c.created_at > start,
            quarantine.c.created_at <= end,
        )
        .order_by(quarantine.c.created_at.desc(), quarantine.c.object_uri)
        .limit(100)
    )
    return tuple((r.object_uri, r.reason) for r in conn.execute(query))


def _baselines(conn: Connection) -> dict[str, datetime]:
    query = sa.select(watermarks.c.name, watermarks.c.value).where(
        watermarks.c.name.startswith(BASELINE_PREFIX, autoescape=True)
    )
    return {r.name.removeprefix(BASELINE_PREFIX): r.value for r in conn.execute(query)}


def _latest_incident_time(state: StateStore) -> datetime | None:
    """The newest ``now`` any run has written into the incidents."""
    query = sa.select(sa.func.max(health_incidents.c.last_seen_at), sa.func.max(health_incidents.c.closed_at))
    with state.engine.connect() as conn:
        row = conn.execute(query).one()
    return max((t for t in row if t is not None), default=None)


def _read_incidents(state: StateStore, where: sa.ColumnElement[bool]) -> list[Incident]:
    with state.engine.connect() as conn:
        rows = conn.execute(sa.select(health_incidents).where(where).order_by(health_incidents.c.id))
        return [_incident(r._mapping) for r in rows]


def _write(
    state: StateStore, to_open: Sequence[Incident], to_keep: Sequence[Incident], to_close: Sequence[Incident]
) -> None:
    """Apply one reconcile result in one transaction."""
    table = health_incidents
    with state.begin() as conn:
        if to_open:
            conn.execute(table.insert(), [_row(i) for i in to_open])
        for incident in to_keep:
            conn.execute(
                table.update()
                .where(table.c.id == incident.id)
                .values(last_seen_at=incident.last_seen_at, details=_encode(incident.details, incident.uncertain))
            )
        for incident in to_close:
            conn.execute(
                table.update()
                .where(table.c.id == incident.id, table.c.closed_at.is_(None))
                .values(closed_at=incident.closed_at, close_notified=False)
            )


def _post_owed(state: StateStore, send: Sender) -> tuple[int, int]:
    """Post every owed notice, recording each outcome at once; stop when Slack is unavailable."""
    owed = owed_notices(_read_incidents(state, _owes_notice()))
    sent = 0
    for notice in owed:
        message = render_notice(notice)
        _set_uncertain(state, notice.incident, notice.incident.uncertain | {notice.event})  # before posting
        result = _safe_send(send, message)
        _record_outcome(state, notice, result)
        if result.ok:
            sent += 1
            continue
        log.warning("health notice %s/%s not posted: %s", notice.incident.id, notice.event, result.error)
        if result.retryable:
            break
    return sent, len(owed) - sent


def _owes_notice() -> sa.ColumnElement[bool]:
    table = health_incidents
    return sa.or_(
        sa.and_(table.c.closed_at.is_(None), table.c.open_notified.is_(False)),
        sa.and_(table.c.closed_at.is_not(None), table.c.close_notified.is_(False)),
    )


def _safe_send(send: Sender, message: Message) -> SendResult:
    """``send`` that cannot raise: an exception counts as an unknown outcome (maybe posted)."""
    try:
        return send(message)
    except Exception as err:
        return SendResult(ok=False, error=redact(f"{type(err).__name__}: {err}"), retryable=True, maybe_delivered=True)


def _record_outcome(state: StateStore, notice: Notice, result: SendResult) -> None:
    """Posted: flag it. Maybe posted: it stays marked as attempted, so the re-post says it may be
    a duplicate. Surely not posted: take the attempt back."""
    incident = notice.incident
    table = health_incidents
    if result.ok:
        flag = table.c.open_notified if notice.event == OPEN else table.c.close_notified
        with state.begin() as conn:
            conn.execute(table.update().where(table.c.id == incident.id).values({flag.name: True}))
    elif not result.maybe_delivered:
        _set_uncertain(state, incident, incident.uncertain)


def _set_uncertain(state: StateStore, incident: Incident, uncertain: frozenset[str]) -> None:
    """Record which of the incident's notices may have been posted."""
    table = health_incidents
    with state.begin() as conn:
        update = table.update().where(table.c.id == incident.id)
        conn.execute(update.values(details=_encode(incident.details, uncertain)))


# -- the daily summary ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DaySummary:
    """The numbers of one day (objects by the time they were processed, alerts by the time the
    detections created them: a backfill's alerts count on the day it ran)."""

    day_start: datetime
    day_end: datetime
    objects_by_status: Mapping[str, int]
    events: int
    quarantined_records: int
    quarantined_objects: int
    alerts: Mapping[str, int]  # detection id -> alerts created in the day
    opened: int
    cleared: int
    still_open: tuple[Incident, ...]
    alerts_fired: int = 0  # alerts whose evaluation time (fired_at) falls in the day
    pending_alerts: int = 0  # the outbox when the summary is read
    failed_alerts: int = 0


def daily_summary(
    state: StateStore, day_start: datetime, day_end: datetime, *, possible_duplicate: bool = False
) -> Message:
    """The ops message summarising [day_start, day_end)."""
    return render_summary(read_day(state, day_start, day_end), possible_duplicate=possible_duplicate)


def post_summary(state: StateStore, day_start: datetime, day_end: datetime, send: Sender) -> SendResult:
    """Post the day's summary once: a retry or re-run after it posted sends nothing, one after an
    unknown outcome (or a task killed mid-post) re-posts it marked as a possible duplicate."""
    name = f"{SUMMARY_PREFIX}{day_start:%Y-%m-%d}"
    marks = _marks(state, name)
    if "posted" in marks:
        return SendResult(ok=True, reply="already posted")
    message = daily_summary(state, day_start, day_end, possible_duplicate="attempted" in marks)
    _mark(state, f"{name}/attempted", day_start)
    result = _safe_send(send, message)
    if result.ok:
        _mark(state, f"{name}/posted", day_start)
    elif not result.maybe_delivered:
        with state.begin() as conn:
            conn.execute(watermarks.delete().where(watermarks.c.name == f"{name}/attempted"))
    return result


def _marks(state: StateStore, name: str) -> set[str]:
    query = sa.select(watermarks.c.name).where(watermarks.c.name.startswith(f"{name}/", autoescape=True))
    with state.engine.connect() as conn:
        return {n.removeprefix(f"{name}/") for n in conn.execute(query).scalars()}


def _mark(state: StateStore, name: str, value: datetime) -> None:
    with state.begin() as conn:
        conn.execute(insert_ignore(conn, watermarks).values(name=name, value=value, updated_at=store_now()))


def read_day(state: StateStore, start: datetime, end: datetime) -> DaySummary:
    """The state store's numbers for [start, end)."""
    inc = health_incidents
    with state.engine.connect() as conn:
        by_status = conn.execute(
            sa.select(objects.c.status, sa.func.count(), sa.func.coalesce(sa.func.sum(objects.c.events), 0))
            .where(objects.c.processed_at >= start, objects.c.processed_at < end)
            .group_by(objects.c.status)
        ).all()
        in_day = sa.and_(quarantine.c.created_at >= start, quarantine.c.created_at < end)
        records = conn.execute(sa.select(sa.func.count()).where(in_day)).scalar_one()
        whole = conn.execute(
            sa.select(sa.func.count()).where(in_day, quarantine.c.record_index == WHOLE_OBJECT)
        ).scalar_one()
        delivered = alerts.c.status != REPLAYED
        created = conn.execute(
            sa.select(alerts.c.detection_id, sa.func.count())
            .where(delivered, alerts.c.created_at >= start, alerts.c.created_at < end)
            .group_by(alerts.c.detection_id)
        ).all()
        fired = conn.execute(
            sa.select(sa.func.count()).where(delivered, alerts.c.fired_at >= start, alerts.c.fired_at < end)
        ).scalar_one()
        failed, pending, _ = _outbox(conn, store_now())
        opened = conn.execute(sa.select(sa.func.count()).where(inc.c.opened_at >= start, inc.c.opened_at < end))
        opened_count = opened.scalar_one()
        cleared = conn.execute(sa.select(sa.func.count()).where(inc.c.closed_at >= start, inc.c.closed_at < end))
        cleared_count = cleared.scalar_one()
    still_open = _read_incidents(
        state, sa.and_(inc.c.opened_at < end, sa.or_(inc.c.closed_at.is_(None), inc.c.closed_at >= end))
    )
    return DaySummary(
        day_start=start,
        day_end=end,
        objects_by_status={status: int(n) for status, n, _ in by_status},
        events=sum(int(events) for _, _, events in by_status),
        quarantined_records=int(records),
        quarantined_objects=int(whole),
        alerts={detection_id: int(n) for detection_id, n in created},
        opened=int(opened_count),
        cleared=int(cleared_count),
        still_open=tuple(still_open),
        alerts_fired=int(fired),
        pending_alerts=pending,
        failed_alerts=failed,
    )


def render_summary(day: DaySummary, *, possible_duplicate: bool = False) -> Message:
    """The daily summary as an ops message."""
    lines = [POSSIBLE_DUPLICATE, *summary_lines(day)] if possible_duplicate else summary_lines(day)
    return render_ops(f":bar_chart: Pipeline summary for {_period(day.day_start, day.day_end)}", lines)


def summary_lines(day: DaySummary) -> list[str]:
    """One line per number; zeroes are shown, so a silent pipeline is visible."""
    total = sum(day.objects_by_status.values())
    statuses = ", ".join(f"{status} {n:,}" for status, n in sorted(day.objects_by_status.items()))
    lines = [
        f"events ingested: {day.events:,}",
        f"objects processed: {total:,}" + (f" ({statuses})" if statuses else ""),
        f"records quarantined: {day.quarantined_records:,} (whole objects: {day.quarantined_objects:,})",
        f"alerts created: {sum(day.alerts.values()):,}",
        *(f"alerts of detection {detection}: {n:,}" for detection, n in sorted(day.alerts.items())),
        f"alerts for intervals in the day (by fired_at, backfills included): {day.alerts_fired:,}",
        f"alerts waiting to post now: {day.pending_alerts:,}, failed: {day.failed_alerts:,}",
        f"health incidents opened: {day.opened}, cleared: {day.cleared}, open at the end: {len(day.still_open)}",
    ]
    lines += [
        f"open: {_LABELS.get(i.kind, i.kind)} {i.subject} since {_iso(i.opened_at)}: {i.details}"
        for i in day.still_open
    ]
    return lines


# -- small helpers -------------------------------------------------------------------------------
def _row(incident: Incident) -> dict[str, Any]:
    return {
        "kind": incident.kind,
        "subject": incident.subject,
        "opened_at": incident.opened_at,
        "last_seen_at": incident.last_seen_at,
        "closed_at": incident.closed_at,
        "details": _encode(incident.details, incident.uncertain),
        "open_notified": incident.open_notified,
        "close_notified": incident.close_notified,
    }


def _incident(row: Mapping[str, Any]) -> Incident:
    details, uncertain = _decode(row["details"])
    return Incident(
        id=row["id"],
        kind=row["kind"],
        subject=row["subject"],
        opened_at=row["opened_at"],
        last_seen_at=row["last_seen_at"],
        details=details,
        closed_at=row["closed_at"],
        open_notified=bool(row["open_notified"]),
        close_notified=bool(row["close_notified"]),
        uncertain=uncertain,
    )


def _encode(details: str, uncertain: frozenset[str]) -> str:
    """The ``details`` column: JSON, so the possibly-posted notices travel with the text."""
    return json.dumps({"summary": details, "uncertain": sorted(uncertain)})


def _decode(raw: str) -> tuple[str, frozenset[str]]:
    """Inverse of ``_encode``; any other text is taken as the summary itself."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw, frozenset()
    if not isinstance(value, dict) or not isinstance(value.get("summary"), str):
        return raw, frozenset()
    return value["summary"], frozenset(str(e) for e in value.get("uncertain") or [])


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _span(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    if hours >= 48:
        return f"{hours / 24:.1f} days".replace(".0 ", " ")
    return f"{hours:.1f} h".replace(".0 ", " ")


def _since(value: datetime, now: datetime) -> str:
    return f"{_iso(value)} ({_span(now - value)} before {_iso(now)})"


def _period(start: datetime, end: datetime) -> str:
    if end - start == timedelta(days=1) and start.hour == start.minute == start.second == 0:
        return f"{start:%Y-%m-%d} (UTC)"
    return f"{_iso(start)} to {_iso(end)}"
