"""The delivery state machine against a fake Slack, through the real provider hooks and slack_sdk."""

from __future__ import annotations

import functools
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fake_slack import (  # ruff: ignore[unused-import] - the *_fixture names register pytest fixtures
    FORBIDDEN,
    HANG,
    HOSTILE_SESSION,
    HOSTILE_USER,
    HOSTILE_USER_AGENT,
    SERVER_ERROR,
    FakeSlack,
    alert_payload,
    fake_slack_fixture,
    slack_bot_conn_fixture,
    slack_webhook_conn_fixture,
    strings,
)
from trailguard import outbox, slack
from trailguard.outbox import DeliveryReport, deliver_pending
from trailguard.settings import Settings
from trailguard.store import StateStore, alerts, now

LAKE = "s3://trailguard-lake/prod"
HORIZON = timedelta(days=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """The claims must hold on both backends."""
    url = f"sqlite:///{tmp_path}/s.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = StateStore(url)
    yield store
    store.close()


def insert(state: StateStore, n: int, *, age: timedelta = timedelta(hours=1), risk: int = 15, **columns: Any) -> int:
    """Insert alert ``n`` (event id ``evt-<n>``), fired ``age`` ago; returns its id."""
    payload = columns.pop("payload", None) or json.dumps(alert_payload(n, risk=risk))
    fired = now() - age
    row = {
        "detection_id": "21193641-cb96-4a2c-a707-d9b9a7f7792b",
        "key": json.dumps({"n": n}),
        "first_seen": fired - timedelta(minutes=30),
        "fired_at": fired,
        "created_at": fired,
        "payload": payload,
        "status": "pending",
        "attempts": 0,
        "possible_duplicate": False,
        **columns,
    }
    with state.begin() as conn:
        return conn.execute(alerts.insert().values(**row)).inserted_primary_key[0]


def rows(state: StateStore) -> dict[int, dict[str, Any]]:
    with state.engine.connect() as conn:
        return {r.id: dict(r._mapping) for r in conn.execute(sa.select(alerts))}


def deliveries(fake: FakeSlack) -> Counter[str]:
    """How many posts Slack accepted (or may have) per alert event id."""
    counts: Counter[str] = Counter()
    for post in fake.posts():
        if post.delivered:
            counts.update(_event_ids(post.raw))
    return counts


def _event_ids(raw: str) -> set[str]:
    return set(re.findall(r"evt-\d{4}", raw))


def run(state: StateStore, conn_id: str, **kwargs: Any) -> DeliveryReport:
    cfg = Settings.from_env()
    send = functools.partial(slack.send, conn_id=conn_id, retries=kwargs.pop("retries", 0), timeout=cfg.slack_timeout)
    return deliver_pending(state, send, now(), HORIZON, LAKE, **kwargs)


def test_delivers_each_pending_alert_once(state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str) -> None:
    ids = [insert(state, n) for n in range(3)]
    report = run(state, slack_webhook_conn)
    assert report == DeliveryReport(sent=3, still_pending=0)
    after = rows(state)
    for alert_id in ids:
        assert after[alert_id]["status"] == "sent"
        assert after[alert_id]["slack_reply"] == "ok" and after[alert_id]["sent_at"] is not None
    assert run(state, slack_webhook_conn) == DeliveryReport()
    assert deliveries(fake_slack) == Counter({"evt-0000": 1, "evt-0001": 1, "evt-0002": 1})


def test_bot_token_reply_is_recorded(state: StateStore, fake_slack: FakeSlack, slack_bot_conn: str) -> None:
    alert_id = insert(state, 7)
    assert run(state, slack_bot_conn).sent == 1
    reply = json.loads(rows(state)[alert_id]["slack_reply"])
    assert reply == {"channel": "C000ALERTS", "ts": "1700000000.000001"}


def test_hostile_values_are_posted_escaped(state: StateStore, fake_slack: FakeSlack, slack_bot_conn: str) -> None:
    insert(state, 1, payload=json.dumps(alert_payload(1, hostile=True)))
    insert(state, 2, payload=json.dumps(alert_payload(2, country=True, hostile=True)))
    insert(state, 3, age=timedelta(days=2), payload=json.dumps(alert_payload(3, hostile=True)))
    assert run(state, slack_bot_conn) == DeliveryReport(sent=2, digested=1)
    posts = fake_slack.posts()
    assert len(posts) == 3
    for post in posts:
        for text in strings(post.body):
            assert not any(f in text for f in FORBIDDEN), text
            assert not any(raw in text for raw in (HOSTILE_USER_AGENT, HOSTILE_SESSION, HOSTILE_USER))


def test_slack_down_for_several_runs_then_back(
    state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    ids = [insert(state, n, age=timedelta(minutes=50 - n)) for n in range(4)]
    fake_slack.default = SERVER_ERROR
    for _ in range(3):
        report = run(state, slack_webhook_conn)
        assert report.sent == 0 and report.failed == 0 and report.still_pending == 4
        assert report.stopped and "500" in report.stopped
    after = rows(state)
    assert after[ids[0]]["attempts"] == 3 and "HTTP 500" in after[ids[0]]["last_error"]
    assert all(after[i]["attempts"] == 0 for i in ids[1:])  # the run stops at the first failure

    fake_slack.default = "ok"
    assert run(state, slack_webhook_conn) == DeliveryReport(sent=4)
    assert deliveries(fake_slack) == Counter({f"evt-{n:04d}": 1 for n in range(4)})
    assert {r["status"] for r in rows(state).values()} == {"sent"}


def test_retryable_failures_end_in_failed_after_max_attempts(
    state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    alert_id = insert(state, 1)
    fake_slack.default = SERVER_ERROR
    assert run(state, slack_webhook_conn, max_attempts=2).failed == 0
    report = run(state, slack_webhook_conn, max_attempts=2)
    assert report.failed == 1 and report.failures[0][0] == alert_id and "500" in report.failures[0][1]
    assert rows(state)[alert_id]["status"] == "failed"
    assert run(state, slack_webhook_conn, max_attempts=2) == DeliveryReport()


def test_rejected_alert_fails_and_the_rest_go_on(
    state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    bad, good = insert(state, 1, age=timedelta(hours=2)), insert(state, 2)
    fake_slack.script(("error", "invalid_blocks"))
    report = run(state, slack_webhook_conn)
    assert (report.sent, report.failed, report.still_pending) == (1, 1, 0)
    after = rows(state)
    assert after[bad]["status"] == "failed" and "invalid_blocks" in after[bad]["last_error"]
    assert after[good]["status"] == "sent"


def test_unreadable_payload_fails_without_posting(
    state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    broken = insert(state, 1, payload="{not json")
    report = run(state, slack_webhook_conn)
    assert report.failed == 1 and rows(state)[broken]["status"] == "failed"
    assert fake_slack.posts() == []


def test_hang_marks_possible_duplicate_and_delivers_later(
    state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    alert_id = insert(state, 1)
    fake_slack.script(HANG)
    report = run(state, slack_webhook_conn, retries=2)
    assert report.sent == 0 and report.still_pending == 1 and report.stopped
    row = rows(state)[alert_id]
    assert row["status"] == "pending" and row["possible_duplicate"] and row["attempts"] == 1
    assert len(fake_slack.posts()) == 1  # the client does not re-post after a timeout

    assert run(state, slack_webhook_conn).sent == 1
    first, second = fake_slack.posts()
    assert slack.POSSIBLE_DUPLICATE not in first.raw
    assert slack.POSSIBLE_DUPLICATE in second.body["text"]
    assert slack.POSSIBLE_DUPLICATE in json.dumps(second.body["blocks"])
    row = rows(state)[alert_id]
    assert row["status"] == "sent" and row["possible_duplicate"]


def test_stale_claim_is_taken_over_and_marked(
    state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    stale = insert(state, 1, status="sending", claimed_at=now() - timedelta(hours=1))
    fresh = insert(state, 2, status="sending", claimed_at=now())
    report = run(state, slack_webhook_conn)
    assert report.sent == 1 and report.still_pending == 1
    after = rows(state)
    assert after[stale]["status"] == "sent" and after[stale]["possible_duplicate"]
    assert after[fresh]["status"] == "sending"  # another run holds it
    [post] = fake_slack.posts()
    assert slack.POSSIBLE_DUPLICATE in post.body["text"] and "evt-0001" in post.raw


def test_old_alerts_go_to_one_digest(state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str) -> None:
    recent = [insert(state, n) for n in range(2)]
    old = [insert(state, 10 + n, age=timedelta(days=3), risk=15 + n) for n in range(5)]
    report = run(state, slack_webhook_conn)
    assert (report.sent, report.digested, report.still_pending) == (2, 5, 0)
    posts = fake_slack.posts()
    assert len(posts) == 3
    digest = posts[-1].body
    assert "5 alerts from historical intervals" in digest["text"]
    assert all(f"evt-00{10 + n}" not in posts[0].raw + posts[1].raw for n in range(5))
    after = rows(state)
    assert {after[i]["status"] for i in old} == {"digested"}
    assert {after[i]["status"] for i in recent} == {"sent"}
    assert run(state, slack_webhook_conn) == DeliveryReport()


def test_digest_failure_keeps_alerts_pending(state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str) -> None:
    old = [insert(state, n, age=timedelta(days=2)) for n in range(3)]
    fake_slack.script(SERVER_ERROR)
    report = run(state, slack_webhook_conn)
    assert report.digested == 0 and report.still_pending == 3 and "digest" in (report.stopped or "")
    assert {rows(state)[i]["status"] for i in old} == {"pending"}
    assert run(state, slack_webhook_conn).digested == 3
    assert [p.status for p in fake_slack.posts()] == [500, 200]


def test_claim_is_exclusive(state: StateStore) -> None:
    alert_id = insert(state, 1)
    cutoff = now() - outbox.STALE_CLAIM
    assert [r.id for r in outbox._claim(state, [alert_id], cutoff)] == [alert_id]
    assert outbox._claim(state, [alert_id], cutoff) == []


def test_concurrent_runs_never_double_post(state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str) -> None:
    for n in range(12):
        insert(state, n)
    for n in range(6):
        insert(state, 100 + n, age=timedelta(days=2))
    fake_slack.delay = 0.02
    stores = [StateStore(state.url, migrate=False) for _ in range(2)]
    barrier = threading.Barrier(2)
    reports: list[DeliveryReport] = []

    def worker(store: StateStore) -> None:
        barrier.wait()
        reports.append(run(store, slack_webhook_conn))

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for s in stores:
        s.close()
    assert len(reports) == 2
    assert sum(r.sent for r in reports) == 12 and sum(r.digested for r in reports) == 6
    posts = fake_slack.posts()
    recent = Counter(eid for p in posts if "historical" not in p.raw for eid in _event_ids(p.raw))
    assert recent == Counter({f"evt-{n:04d}": 1 for n in range(12)})
    assert len([p for p in posts if "historical intervals" in p.raw]) <= 2
    assert {r["status"] for r in rows(state).values()} == {"sent", "digested"}
