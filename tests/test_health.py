"""Pipeline health: the checks, the incident state machine, the daily summary, the failure
callback, and the real DAGs (ingest failing, pipeline_health) posting to a fake Slack."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from itertools import count
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from builders import utc
from fake_slack import (  # ruff: ignore[unused-import] - the *_fixture names register pytest fixtures
    FORBIDDEN,
    WEBHOOK_PATH,
    FakeSlack,
    assert_block_kit_limits,
    fake_slack_fixture,
    slack_webhook_conn_fixture,
    strings,
)
from trailguard import health, ops, outbox, slack
from trailguard.health import (
    BASELINE_AGE,
    CLOSE,
    DELIVERY_GAP,
    INGEST_LAG,
    OPEN,
    QUARANTINE_GROWTH,
    Activity,
    Finding,
    Incident,
    Thresholds,
)
from trailguard.settings import Settings
from trailguard.slack import Message, SendResult
from trailguard.store import DONE, QUARANTINED, StateStore, alerts, health_incidents, objects, quarantine, watermarks

A, B = ("111122223333", "us-east-1"), ("444455556666", "eu-west-1")
NOW = utc(2026, 11, 20, 13, 15)
_uri = count()


# -- helpers -------------------------------------------------------------------------------------
@pytest.fixture
def state(tmp_path: Path) -> StateStore:
    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    yield store
    store.close()


def deliver(
    state: StateStore, pair: tuple[str, str], start: datetime, end: datetime, *, every: int = 5, **extra
) -> None:
    """Ledger rows for objects of ``pair`` delivered every ``every`` minutes in [start, end]."""
    rows = []
    at = start
    while at <= end:
        row = {
            "uri": f"s3://trail/AWSLogs/{pair[0]}/CloudTrail/{pair[1]}/{next(_uri)}.json.gz",
            "etag": "e",
            "size": 1,
            "account_id": pair[0],
            "region": pair[1],
            "delivered_at": at,
            "records": 3,
            "events": 2,
            "status": DONE,
            "processed_at": at + timedelta(minutes=1),
        }
        rows.append({**row, **extra})
        at += timedelta(minutes=every)
    with state.begin() as conn:
        conn.execute(objects.insert(), rows)


def quarantine_rows(
    state: StateStore, created_at: datetime, n: int, record_index: int = 0, reason: str = "bad"
) -> None:
    row = {"record_index": record_index, "reason": reason, "excerpt": "", "created_at": created_at}
    rows = [{**row, "object_uri": f"s3://trail/q{next(_uri)}"} for _ in range(n)]
    with state.begin() as conn:
        conn.execute(quarantine.insert(), rows)


def watermark(state: StateStore, name: str, value: datetime) -> None:
    with state.begin() as conn:
        conn.execute(watermarks.insert().values(name=name, value=value, updated_at=value))


def incidents(state: StateStore) -> list[dict]:
    with state.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(health_incidents).order_by(health_incidents.c.id))]


class Sender:
    """A ``send`` that records messages and answers from a script (then OK)."""

    def __init__(self, *answers: SendResult) -> None:
        self.answers = list(answers)
        self.messages: list[Message] = []

    def __call__(self, message: Message) -> SendResult:
        self.messages.append(message)
        return self.answers.pop(0) if self.answers else SendResult(ok=True, reply="ok")

    def titles(self) -> list[str]:
        return [m.blocks[0]["text"]["text"] for m in self.messages]

    def clear(self) -> None:
        self.messages.clear()


DOWN = SendResult(ok=False, error="HTTP 500: internal_error", retryable=True)
HUNG = SendResult(ok=False, error="TimeoutError", retryable=True, maybe_delivered=True)


# -- the checks (pure) ---------------------------------------------------------------------------
def test_delivery_gap_needs_silence_after_regular_delivery() -> None:
    active = Activity(NOW - timedelta(hours=2), NOW - timedelta(hours=2, minutes=5))
    pairs = {A: Activity(NOW - timedelta(minutes=5), NOW - timedelta(minutes=10)), B: active}
    [finding] = health.delivery_gaps(pairs, NOW)
    assert finding.key == (DELIVERY_GAP, "444455556666/eu-west-1")
    assert "2026-11-20 11:15 UTC (2 h before 2026-11-20 13:15 UTC)" in finding.details
    assert health.delivery_gaps({B: Activity(NOW - timedelta(hours=1, minutes=59), active.previous)}, NOW) == []


def test_delivery_gap_ignores_pairs_that_did_not_deliver_regularly() -> None:
    once = {B: Activity(NOW - timedelta(hours=5))}
    sparse = {B: Activity(NOW - timedelta(hours=5), NOW - timedelta(hours=30))}
    unknown = {(None, None): Activity(NOW - timedelta(hours=5), NOW - timedelta(hours=6))}
    assert health.delivery_gaps(once, NOW) == health.delivery_gaps(sparse, NOW) == []
    assert health.delivery_gaps(unknown, NOW) == []


def test_open_gap_lasts_until_a_delivery_even_beyond_the_lookback() -> None:
    ongoing = frozenset({(DELIVERY_GAP, "444455556666/eu-west-1")})
    still = health.delivery_gaps({B: Activity(NOW - timedelta(hours=30))}, NOW, ongoing=ongoing)
    assert [f.subject for f in still] == ["444455556666/eu-west-1"]
    [gone] = health.delivery_gaps({}, NOW, ongoing=ongoing)
    assert "more than 7 days" in gone.details
    assert health.delivery_gaps({B: Activity(NOW - timedelta(minutes=3))}, NOW, ongoing=ongoing) == []


def test_ingest_lag() -> None:
    lagging = Activity(NOW - timedelta(hours=3), NOW - timedelta(hours=3, minutes=5))
    [finding] = health.ingest_lag(lagging, NOW)
    assert finding.key == (INGEST_LAG, "ingest") and "3 h before" in finding.details
    assert health.ingest_lag(Activity(NOW - timedelta(hours=2, minutes=59), lagging.previous), NOW) == []
    assert health.ingest_lag(Activity(NOW - timedelta(hours=9)), NOW) == []  # a single object never "used to arrive"
    assert health.ingest_lag(None, NOW) == []
    assert [f.kind for f in health.ingest_lag(None, NOW, ongoing=True)] == [INGEST_LAG]


def test_quarantine_growth() -> None:
    assert health.quarantine_growth(100, []) == []
    [records] = health.quarantine_growth(101, [])
    assert records.key == (QUARANTINE_GROWTH, "records") and "101 records" in records.details
    whole = [(f"s3://trail/{i}.json.gz", "not gzip") for i in range(7)]
    [objects_] = health.quarantine_growth(0, whole)
    assert objects_.subject == "whole objects"
    assert "7 whole object(s)" in objects_.details and "s3://trail/4.json.gz (not gzip)" in objects_.details
    assert "s3://trail/5.json.gz" not in objects_.details and "and 2 more" in objects_.details


def test_baseline_age() -> None:
    baselines = {"cross-account": NOW - timedelta(hours=36), "country": NOW - timedelta(hours=37)}
    [finding] = health.baseline_age(baselines, NOW)
    assert finding.key == (BASELINE_AGE, "country") and "37 h before" in finding.details


def test_alert_delivery() -> None:
    assert health.alert_delivery(0, 0, None, NOW) == []
    [failed] = health.alert_delivery(2, 0, None, NOW)
    assert failed.key == (health.FAILED_ALERTS, health.ALERTS_SUBJECT) and "2 alert(s) marked failed" in failed.details
    assert health.alert_delivery(0, 5, NOW - timedelta(hours=2, minutes=59), NOW) == []
    [waiting] = health.alert_delivery(0, 5, NOW - timedelta(hours=3), NOW)
    assert waiting.kind == health.ALERT_BACKLOG and "5 alert(s) pending" in waiting.details
    assert "3 h before" in waiting.details


def test_thresholds_are_parameters() -> None:
    pairs = {B: Activity(NOW - timedelta(minutes=40), NOW - timedelta(minutes=45))}
    assert health.delivery_gaps(pairs, NOW, Thresholds(gap=timedelta(minutes=30)))
    assert not health.quarantine_growth(101, [], Thresholds(quarantine_records=200))


def test_activities_and_newest() -> None:
    rows = [(*A, NOW), (*A, NOW - timedelta(hours=1)), (*A, NOW - timedelta(hours=2)), (*B, NOW - timedelta(hours=3))]
    pairs = health.activities(rows)
    assert pairs == {A: Activity(NOW, NOW - timedelta(hours=1)), B: Activity(NOW - timedelta(hours=3))}
    assert health.newest(pairs) == Activity(NOW, NOW - timedelta(hours=1))
    assert health.newest({}) is None


def test_read_facts_sees_only_what_existed_at_now(state: StateStore) -> None:
    deliver(state, A, NOW - timedelta(hours=1), NOW + timedelta(hours=1))  # the future must not count
    deliver(state, B, NOW - timedelta(days=9), NOW - timedelta(days=9))  # beyond the look-back
    quarantine_rows(state, NOW - timedelta(minutes=30), 3)
    quarantine_rows(state, NOW - timedelta(minutes=10), 1, record_index=-1, reason="not gzip")
    quarantine_rows(state, NOW - timedelta(hours=2), 50)
    watermark(state, "baseline/country", NOW - timedelta(hours=40))
    watermark(state, "detect/country", NOW - timedelta(hours=40))
    facts = health.read_facts(state, NOW, Thresholds())
    assert facts.pairs == {A: Activity(NOW, NOW - timedelta(minutes=5))}
    assert facts.quarantined_records == 4
    assert facts.whole_objects[0][1] == "not gzip" and len(facts.whole_objects) == 1
    assert facts.baselines == {"country": NOW - timedelta(hours=40)}
    assert [f.kind for f in health.evaluate(facts, NOW)] == [QUARANTINE_GROWTH, BASELINE_AGE]


# -- the state machine (pure) --------------------------------------------------------------------
def test_reconcile_opens_keeps_and_closes() -> None:
    earlier = NOW - timedelta(hours=1)
    kept = Incident(1, DELIVERY_GAP, "a/r", earlier, earlier, "old", open_notified=True)
    gone = Incident(2, INGEST_LAG, "ingest", earlier, earlier, "lag", open_notified=True)
    findings = [
        Finding(DELIVERY_GAP, "a/r", "new"),
        Finding(BASELINE_AGE, "x", "stale"),
        Finding(BASELINE_AGE, "x", "dup"),
    ]
    to_open, to_keep, to_close = health.reconcile([kept, gone], findings, NOW)
    assert to_open == [Incident(None, BASELINE_AGE, "x", NOW, NOW, "stale")]
    assert to_keep == [Incident(1, DELIVERY_GAP, "a/r", earlier, NOW, "new", open_notified=True)]
    assert to_close == [Incident(2, INGEST_LAG, "ingest", earlier, earlier, "lag", closed_at=NOW, open_notified=True)]
    assert health.reconcile([], [], NOW) == ([], [], [])


def test_quarantine_growth_clears_only_after_quiet_checks() -> None:
    seen = NOW - timedelta(hours=2)
    burst = Incident(1, QUARANTINE_GROWTH, "records", seen, seen, "101 records", open_notified=True)
    assert health.reconcile([burst], [], NOW) == ([], [burst], [])  # quiet for 2 h: still open, unchanged
    _, _, [closed] = health.reconcile([burst], [], NOW + timedelta(hours=1))
    assert closed.closed_at == NOW + timedelta(hours=1)
    lag = Incident(2, INGEST_LAG, "ingest", seen, seen, "lag", open_notified=True)
    assert len(health.reconcile([lag], [], NOW)[2]) == 1  # other kinds clear at once


def test_a_quarantine_burst_every_other_hour_stays_one_incident(state: StateStore) -> None:
    send = Sender()
    for hour in range(8):
        at = NOW + timedelta(hours=hour)
        if hour % 2 == 0 and hour < 6:
            quarantine_rows(state, at - timedelta(minutes=10), 101)
        health.run_health(state, at, send)
    assert send.titles() == [
        ":warning: Quarantine growth: records",
        ":white_check_mark: Cleared: Quarantine growth: records",
    ]
    [row] = incidents(state)
    assert row["closed_at"] == NOW + timedelta(hours=7)  # last seen at +4 h, then three quiet checks


def test_owed_notices_clearings_first_one_per_incident() -> None:
    closed_unannounced = Incident(1, DELIVERY_GAP, "a/r", NOW, NOW, "", closed_at=NOW)
    opened = Incident(2, DELIVERY_GAP, "a/r", NOW, NOW, "")
    done = Incident(3, INGEST_LAG, "ingest", NOW, NOW, "", open_notified=True)
    notices = health.owed_notices([opened, done, closed_unannounced])
    assert [(n.incident.id, n.event) for n in notices] == [(1, CLOSE), (2, OPEN)]


def test_notices_are_escaped_and_within_slack_limits() -> None:
    hostile = Incident(1, QUARANTINE_GROWTH, "whole objects", NOW, NOW, "s3://b/<!channel>`x` (<@U1> @here)")
    for notice in (health.Notice(hostile, OPEN), health.Notice(replace(hostile, closed_at=NOW), CLOSE)):
        message = health.render_notice(notice)
        assert_block_kit_limits(message.blocks)
        assert not any(f in s for s in [*strings(message.blocks), message.text] for f in FORBIDDEN)


# -- run_health against a state store ------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def any_state(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    url = f"sqlite:///{tmp_path}/state.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = StateStore(url)
    yield store
    store.close()


def test_a_gap_warns_once_stays_quiet_and_clears_once(any_state: StateStore) -> None:
    state = any_state
    deliver(state, A, NOW - timedelta(hours=30), NOW + timedelta(hours=5))  # what lies after now is not seen
    deliver(state, B, NOW - timedelta(hours=30), NOW - timedelta(hours=3))
    send = Sender()

    first = health.run_health(state, NOW, send)
    assert (first.opened, first.sent, first.unsent) == (1, 1, 0)
    assert send.titles() == [":warning: CloudTrail delivery gap: 444455556666/eu-west-1"]
    body = json.dumps(send.messages[0].blocks)
    assert "no object delivered since 2026-11-20 10:15 UTC" in body and "StopLogging" in body

    send.clear()
    for hour in (1, 2):
        report = health.run_health(state, NOW + timedelta(hours=hour), send)
        assert (report.opened, report.kept, report.sent) == (0, 1, 0)
    assert send.messages == []
    [row] = incidents(state)
    assert row["open_notified"] and row["closed_at"] is None and row["last_seen_at"] == NOW + timedelta(hours=2)

    deliver(state, B, NOW + timedelta(hours=2, minutes=30), NOW + timedelta(hours=3))
    cleared = health.run_health(state, NOW + timedelta(hours=3), send)
    assert (cleared.closed, cleared.sent) == (1, 1)
    assert send.titles() == [":white_check_mark: Cleared: CloudTrail delivery gap: 444455556666/eu-west-1"]
    assert "3 h after it was detected at 2026-11-20 13:15 UTC" in json.dumps(send.messages[0].blocks)

    send.clear()
    assert health.run_health(state, NOW + timedelta(hours=4), send).sent == 0
    assert send.messages == []
    [row] = incidents(state)
    assert row["closed_at"] == NOW + timedelta(hours=3) and row["close_notified"]


def test_slack_down_during_the_open_notice_retries_next_run_without_duplicates(state: StateStore) -> None:
    deliver(state, B, NOW - timedelta(hours=30), NOW - timedelta(hours=3))
    deliver(state, A, NOW - timedelta(hours=30), NOW + timedelta(hours=3))
    send = Sender(DOWN)
    down = health.run_health(state, NOW, send)
    assert (down.opened, down.sent, down.unsent) == (1, 0, 1)
    assert not incidents(state)[0]["open_notified"]

    again = health.run_health(state, NOW + timedelta(hours=1), send)
    assert (again.opened, again.sent, again.unsent) == (0, 1, 0)
    assert send.titles() == [":warning: CloudTrail delivery gap: 444455556666/eu-west-1"] * 2  # one try, one post
    retried = json.dumps(send.messages[1].blocks)
    assert "4 h before 2026-11-20 14:15 UTC" in retried and "detected at 2026-11-20 13:15 UTC" in retried
    assert slack.POSSIBLE_DUPLICATE not in retried

    assert health.run_health(state, NOW + timedelta(hours=2), send).sent == 0
    assert len(send.messages) == 2


def test_a_notice_slack_may_have_taken_is_reposted_marked(state: StateStore) -> None:
    deliver(state, B, NOW - timedelta(hours=30), NOW - timedelta(hours=3))
    deliver(state, A, NOW - timedelta(hours=30), NOW + timedelta(hours=3))
    send = Sender(HUNG)
    assert health.run_health(state, NOW, send).sent == 0
    assert health.run_health(state, NOW + timedelta(hours=1), send).sent == 1
    assert send.messages[1].blocks[1]["text"]["text"].startswith(f"\u2022 {slack.POSSIBLE_DUPLICATE}")
    assert json.loads(incidents(state)[0]["details"])["uncertain"] == ["open"]


def test_a_run_killed_mid_post_reposts_the_notice_marked(state: StateStore) -> None:
    deliver(state, B, NOW - timedelta(hours=30), NOW - timedelta(hours=3))
    deliver(state, A, NOW - timedelta(hours=30), NOW + timedelta(hours=3))

    class Killed(BaseException):
        """The worker died while the request was out: Slack may have posted it."""

    def killed(message: Message) -> SendResult:
        raise Killed

    with pytest.raises(Killed):
        health.run_health(state, NOW, killed)
    send = Sender()
    assert health.run_health(state, NOW + timedelta(hours=1), send).sent == 1
    assert slack.POSSIBLE_DUPLICATE in json.dumps(send.messages[0].blocks)


def test_failed_and_waiting_alerts_warn_once_and_clear_once(state: StateStore) -> None:
    row = {"detection_id": "d", "first_seen": NOW, "fired_at": NOW, "payload": "{}", "attempts": 3}
    with state.begin() as conn:
        conn.execute(
            alerts.insert(),
            [
                {**row, "key": "1", "status": "failed", "created_at": NOW - timedelta(hours=1)},
                {**row, "key": "2", "status": "pending", "created_at": NOW - timedelta(hours=4)},
                {**row, "key": "3", "status": "replayed", "created_at": NOW - timedelta(days=4)},
                {**row, "key": "4", "status": "failed", "created_at": NOW + timedelta(hours=1)},  # after now
            ],
        )
    send = Sender()
    health.run_health(state, NOW, send)
    assert sorted(send.titles()) == [
        ":warning: Alerts Slack rejected: all detections",
        ":warning: Alerts not reaching Slack: all detections",
    ]
    body = json.dumps([m.blocks for m in send.messages])
    assert "1 alert(s) marked failed" in body and "re-queue" in body and "1 alert(s) pending" in body
    send.clear()
    assert health.run_health(state, NOW + timedelta(minutes=30), send).sent == 0  # no repeat

    with state.begin() as conn:
        conn.execute(alerts.update().where(alerts.c.key == "2").values(status="sent"))
    assert outbox.requeue_failed(state) == 2
    health.run_health(state, NOW + timedelta(hours=2), send)  # alert 1 now waits, 3 h old: still a backlog
    assert send.titles() == [":white_check_mark: Cleared: Alerts Slack rejected: all detections"]
    with state.begin() as conn:
        conn.execute(alerts.update().where(alerts.c.status == "pending").values(status="sent"))
    health.run_health(state, NOW + timedelta(hours=3), send)
    assert send.titles()[1:] == [":white_check_mark: Cleared: Alerts not reaching Slack: all detections"]


def test_a_sender_that_raises_does_not_lose_the_notice(state: StateStore) -> None:
    deliver(state, B, NOW - timedelta(hours=30), NOW - timedelta(hours=3))
    deliver(state, A, NOW - timedelta(hours=30), NOW + timedelta(hours=3))

    def broken(message: Message) -> SendResult:
        raise ConnectionResetError("reset by peer")

    assert health.run_health(state, NOW, broken).unsent == 1
    send = Sender()
    assert health.run_health(state, NOW + timedelta(hours=1), send).sent == 1


def test_a_condition_that_cleared_before_its_notice_posts_one_message(state: StateStore) -> None:
    deliver(state, B, NOW - timedelta(hours=30), NOW - timedelta(hours=3))
    deliver(state, A, NOW - timedelta(hours=30), NOW + timedelta(hours=3))
    send = Sender(DOWN)
    health.run_health(state, NOW, send)
    deliver(state, B, NOW + timedelta(minutes=30), NOW + timedelta(hours=1))
    report = health.run_health(state, NOW + timedelta(hours=1), send)
    assert (report.closed, report.sent) == (1, 1)
    assert send.titles()[-1].startswith(":white_check_mark: Cleared")
    assert "could not be posted" in json.dumps(send.messages[-1].blocks)
    assert health.run_health(state, NOW + timedelta(hours=2), send).sent == 0


def test_slack_down_stops_the_run_and_keeps_every_notice(state: StateStore) -> None:
    watermark(state, "baseline/one", NOW - timedelta(days=3))
    watermark(state, "baseline/two", NOW - timedelta(days=3))
    send = Sender(DOWN)
    report = health.run_health(state, NOW, send)
    assert (report.opened, report.sent, report.unsent, len(send.messages)) == (2, 0, 2, 1)
    assert health.run_health(state, NOW + timedelta(hours=1), send).sent == 2


def test_an_out_of_order_run_changes_nothing(state: StateStore) -> None:
    watermark(state, "baseline/one", NOW - timedelta(days=3))
    send = Sender()
    health.run_health(state, NOW, send)
    before = incidents(state)
    report = health.run_health(state, NOW - timedelta(hours=5), send)
    assert report.skipped and incidents(state) == before and len(send.messages) == 1


# -- the daily summary ---------------------------------------------------------------------------
def test_daily_summary(state: StateStore) -> None:
    day = utc(2026, 11, 20)
    deliver(state, A, day, day + timedelta(hours=1))  # 13 objects, 2 events each
    deliver(state, B, day + timedelta(hours=2), day + timedelta(hours=2), status=QUARANTINED, events=0)
    deliver(state, A, day - timedelta(hours=2), day - timedelta(hours=1, minutes=2))  # processed the day before
    quarantine_rows(state, day + timedelta(hours=2), 4)
    quarantine_rows(state, day + timedelta(hours=2), 1, record_index=-1)
    quarantine_rows(state, day + timedelta(days=1), 9)

    def alert(key: str, detection: str, fired: timedelta, created: timedelta | None = None, status: str = "sent"):
        at = day + (fired if created is None else created)
        row = {"key": key, "detection_id": detection, "first_seen": day, "payload": "{}", "attempts": 1}
        return {**row, "fired_at": day + fired, "created_at": at, "status": status}

    with state.begin() as conn:
        conn.execute(
            alerts.insert(),
            [
                alert("1", "det-a", timedelta(hours=5)),
                alert("2", "det-a", timedelta(hours=7), status="failed"),
                alert("3", "det-a", timedelta(hours=9), status="pending"),
                alert("4", "det-b", timedelta(days=-3), timedelta(hours=7), status="digested"),  # a backfill's
                alert("5", "det-b", timedelta(days=1)),  # the next day
                alert("6", "det-c", timedelta(hours=8), status="replayed"),  # replay output, not the pipeline's
            ],
        )
    health.run_health(state, day + timedelta(hours=6), Sender())  # opens the gap of B (10 h) and ingest lag
    message = health.daily_summary(state, day, day + timedelta(days=1))
    assert_block_kit_limits(message.blocks)
    assert message.blocks[0]["text"]["text"] == ":bar_chart: Pipeline summary for 2026-11-20 (UTC)"
    body = json.dumps(message.blocks)
    for line in (
        "events ingested: 26",
        "objects processed: 14 (done 13, quarantined 1)",
        "records quarantined: 5 (whole objects: 1)",
        "alerts created: 4",
        "alerts of detection det-a: 3",
        "alerts of detection det-b: 1",
        "alerts for intervals in the day (by fired_at, backfills included): 3",
        "alerts waiting to post now: 1, failed: 1",
        "health incidents opened: 2, cleared: 0, open at the end: 2",
        "open: Ingest lag ingest since 2026-11-20 06:00 UTC",
    ):
        assert line in body, line
    assert "det-c" not in body


def test_daily_summary_of_a_quiet_day_shows_zeroes(state: StateStore) -> None:
    body = json.dumps(health.daily_summary(state, utc(2026, 11, 20), utc(2026, 11, 21)).blocks)
    assert "events ingested: 0" in body and "objects processed: 0" in body and "alerts created: 0" in body


def test_daily_summary_posts_once_per_day(state: StateStore) -> None:
    day = (utc(2026, 11, 20), utc(2026, 11, 21))
    send = Sender(DOWN, HUNG)
    assert not health.post_summary(state, *day, send).ok  # surely not posted
    assert not health.post_summary(state, *day, send).ok  # maybe posted
    assert health.post_summary(state, *day, send).ok
    assert health.post_summary(state, *day, send) == SendResult(ok=True, reply="already posted")
    marked = [slack.POSSIBLE_DUPLICATE in json.dumps(m.blocks) for m in send.messages]
    assert marked == [False, False, True]  # only the post after the unknown outcome says so
    other_day = (utc(2026, 11, 21), utc(2026, 11, 22))
    assert health.post_summary(state, *other_day, send).ok and len(send.messages) == 4


# -- the failure callback ------------------------------------------------------------------------
def test_task_log_url_matches_the_airflow_3_ui_route() -> None:
    url = ops.task_log_url("https://airflow.example.com/", "dag", "manual__2026-11-20T05:00:00+00:00", "t", 3)
    assert (
        url
        == "https://airflow.example.com/dags/dag/runs/manual__2026-11-20T05%3A00%3A00%2B00%3A00/tasks/t?try_number=3"
    )
    assert (
        ops.task_log_url("http://h:8080/airflow", "d", "r", "t", 0, 2)
        == "http://h:8080/airflow/dags/d/runs/r/tasks/t/mapped/2"
    )
    assert ops.task_log_url("", "d", "r", "t") == "http://localhost:8080/dags/d/runs/r/tasks/t"
    assert ops.task_log_url("http://h|<evil>", "d", "r", "t") is None


NAMED = (
    "DAG: cloudtrail_ingest",
    "task: ingest",
    "failed on try 3 of 3; no retry left",
    "data interval: 2026-11-20 13:00 UTC to 2026-11-20 14:00 UTC",
)


def _context(error: BaseException | None) -> dict:
    run_id = "scheduled__2026-11-20T14:00:00+00:00"
    ti = SimpleNamespace(dag_id="cloudtrail_ingest", task_id="ingest", run_id=run_id, map_index=-1, try_number=3)
    ti.max_tries = 2
    return {
        "ti": ti,
        "exception": error,
        "data_interval_start": utc(2026, 11, 20, 13),
        "data_interval_end": utc(2026, 11, 20, 14),
        "dag_run": SimpleNamespace(run_after=utc(2026, 11, 20, 14)),
    }


def test_failure_notice_names_everything_and_leaks_nothing() -> None:
    error = RuntimeError(
        "cannot reach postgresql://trailguard:s3cr3t@db/state nor https://hooks.slack.com/services/T1/B2/XYZ "
        "with xoxb-123-abc <!channel> `boom`" + "x" * 5000
    )
    message = ops.render_failure(ops.failed_task(_context(error)), "https://airflow.example.com")
    assert_block_kit_limits(message.blocks)
    body = json.dumps(message.blocks) + message.text
    assert message.blocks[0]["text"]["text"] == ":rotating_light: Task failed: cloudtrail_ingest.ingest"
    for part in (*NAMED, "RuntimeError: cannot reach"):
        assert part in body, part
    run = "scheduled__2026-11-20T14%3A00%3A00%2B00%3A00"
    link = f"https://airflow.example.com/dags/cloudtrail_ingest/runs/{run}/tasks/ingest?try_number=3"
    assert f"<{link}|Open the task log in Airflow>" in body
    for secret in ("s3cr3t", "/services/T1/B2/XYZ", "xoxb-123-abc", "x" * 1000):
        assert secret not in body
    assert not any(f in s for s in [*strings(message.blocks), message.text] for f in FORBIDDEN)


def test_failure_notice_without_data_interval_or_exception() -> None:
    context = {**_context(None), "data_interval_start": None, "data_interval_end": None}
    body = json.dumps(ops.render_failure(ops.failed_task(context), "http://localhost:8080").blocks)
    assert "run after: 2026-11-20 14:00 UTC (no data interval)" in body
    assert "no exception in the callback context" in body


def test_secrets_airflow_masks_are_redacted() -> None:
    from airflow.sdk.log import mask_secret

    mask_secret("hunter2-aws-secret")
    assert ops.describe_error(ValueError("login failed with hunter2-aws-secret")) == "ValueError: login failed with ***"


def test_a_sensor_failing_because_its_upstream_failed_sends_no_second_notice(ops_slack: FakeSlack) -> None:
    from airflow.providers.standard.exceptions import ExternalTaskFailedError

    upstream = ExternalTaskFailedError("Some of the external tasks ['ingest'] in DAG cloudtrail_ingest failed.")
    ops.notify_failure(_context(upstream))
    assert ops_slack.posts() == []
    ops.notify_failure(_context(RuntimeError("sensor timed out")))  # its own failure is still told
    assert len(ops_slack.posts()) == 1


def test_notify_failure_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAILGUARD_OPS_SLACK_CONN_ID", "no_such_connection")
    ops.notify_failure(_context(ValueError("kaboom")))  # no connection: logged, not raised
    ops.notify_failure({})  # nothing usable in the context
    ops.notify_failure(None)  # type: ignore[arg-type]


def test_evaluation_time_and_previous_day() -> None:
    assert ops.evaluation_time({"data_interval_end": utc(2026, 11, 21, 0, 30)}) == utc(2026, 11, 21, 0, 30)
    manual = {"data_interval_end": None, "dag_run": SimpleNamespace(run_after=utc(2026, 11, 21, 7, 3))}
    assert ops.evaluation_time(manual) == utc(2026, 11, 21, 7, 3)
    assert ops.previous_day(utc(2026, 11, 21, 0, 30)) == (utc(2026, 11, 20), utc(2026, 11, 21))


# -- the real DAGs -------------------------------------------------------------------------------
@pytest.fixture
def ops_slack(fake_slack: FakeSlack, slack_webhook_conn: str, monkeypatch: pytest.MonkeyPatch) -> FakeSlack:
    monkeypatch.setenv("TRAILGUARD_OPS_SLACK_CONN_ID", slack_webhook_conn)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    return fake_slack


def _headers(fake: FakeSlack) -> list[str]:
    return [p.body["blocks"][0]["text"]["text"] for p in fake.posts(WEBHOOK_PATH) if p.body]


@pytest.mark.e2e
def test_failing_ingest_posts_one_failure_notice(
    dagbag, tg_env: Path, ops_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAILGUARD_SOURCE", str(tg_env / "no-such-trail"))
    dag = dagbag.get_dag("cloudtrail_ingest")
    # The DAG waits 2 minutes between tries; dag.test honours that, so the test does not.
    monkeypatch.setattr(dag.get_task("ingest"), "retry_delay", timedelta(0))
    run = dag.test(logical_date=utc(2026, 11, 20, 14))
    assert run.state == "failed"
    ti = run.get_task_instance("ingest")
    assert ti.state == "failed" and ti.try_number == 3

    [post] = ops_slack.posts()
    assert post.status == 200 and post.body is not None
    assert_block_kit_limits(post.body["blocks"])
    body = json.dumps(post.body)
    assert post.body["blocks"][0]["text"]["text"] == ":rotating_light: Task failed: cloudtrail_ingest.ingest"
    for part in (*NAMED, "SourceError: no such folder"):
        assert part in body, part
    assert post.body["text"].startswith(":rotating_light: Task failed: cloudtrail_ingest.ingest: SourceError: no such")
    run_id = quote(run.run_id, safe="")
    link = f"https://airflow.example.com/dags/cloudtrail_ingest/runs/{run_id}/tasks/ingest?try_number=3"
    assert link == ti.log_url  # Airflow's own link to the task instance log
    assert f"<{link}|Open the task log in Airflow>" in body


@pytest.mark.e2e
def test_pipeline_health_dag_warns_once_and_clears_once(
    dagbag, tg_env: Path, ops_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateStore(f"sqlite:///{tg_env}/state.db")
    deliver(state, A, NOW - timedelta(hours=30), NOW + timedelta(hours=3))
    deliver(state, B, NOW - timedelta(hours=30), NOW - timedelta(hours=3))
    dag = dagbag.get_dag("pipeline_health")

    def run(at: datetime) -> list[str]:
        before = len(ops_slack.posts())
        result = dag.test(logical_date=at)
        assert result.state == "success"
        assert result.data_interval_end == at
        return _headers(ops_slack)[before:]

    assert run(NOW) == [":warning: CloudTrail delivery gap: 444455556666/eu-west-1"]
    assert run(NOW + timedelta(hours=1)) == []
    deliver(state, B, NOW + timedelta(hours=1), NOW + timedelta(hours=2))
    assert run(NOW + timedelta(hours=2)) == [
        ":white_check_mark: Cleared: CloudTrail delivery gap: 444455556666/eu-west-1"
    ]
    state.close()


@pytest.mark.e2e
def test_daily_summary_dag_posts_the_previous_day(dagbag, tg_env: Path, ops_slack: FakeSlack) -> None:
    state = StateStore(f"sqlite:///{tg_env}/state.db")
    deliver(state, A, utc(2026, 11, 20, 10), utc(2026, 11, 20, 10, 55))
    state.close()
    run = dagbag.get_dag("pipeline_daily_summary").test(logical_date=utc(2026, 11, 21, 0, 30))
    assert run.state == "success"
    assert _headers(ops_slack) == [":bar_chart: Pipeline summary for 2026-11-20 (UTC)"]
    assert "events ingested: 24" in json.dumps(ops_slack.posts()[0].body)


def test_thresholds_come_from_the_settings() -> None:
    limits = Thresholds.from_settings(
        Settings.from_mapping({"TRAILGUARD_HEALTH_GAP_HOURS": "6", "TRAILGUARD_HEALTH_QUARANTINE_RECORDS": "5"})
    )
    assert limits.gap == timedelta(hours=6) and limits.quarantine_records == 5
    assert limits.lag == health.DEFAULTS.lag and Thresholds.from_settings(Settings()) == health.DEFAULTS
