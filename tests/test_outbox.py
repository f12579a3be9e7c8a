"""The delivery state machine against a fake Slack, through the real provider hooks and slack_sdk;
then the real detections DAG through a Slack outage and a setup error."""

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

import duckdb
import pytest
import sqlalchemy as sa
from builders import utc
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
from test_detections import BR, RU, A, C, World, assume_role, provision
from trailguard import airflow_glue, outbox, slack
from trailguard.outbox import DeliveryReport, deliver_pending
from trailguard.settings import Settings
from trailguard.store import REPLAYED, StateStore, alerts, now

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


def test_a_long_outage_never_fails_an_alert(state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str) -> None:
    alert_id = insert(state, 1)
    fake_slack.default = SERVER_ERROR
    for _ in range(30):  # more runs than any attempt limit would allow
        report = run(state, slack_webhook_conn)
        assert report.failed == 0 and report.still_pending == 1 and report.problem is None
    row = rows(state)[alert_id]
    assert row["status"] == "pending" and row["attempts"] == 30 and "HTTP 500" in row["last_error"]
    fake_slack.default = "ok"
    assert run(state, slack_webhook_conn).sent == 1
    assert deliveries(fake_slack) == Counter({"evt-0001": 1})


def test_a_slack_setup_error_stops_the_run_and_keeps_every_alert(
    state: StateStore, fake_slack: FakeSlack, slack_bot_conn: str
) -> None:
    ids = [insert(state, n, age=timedelta(minutes=50 - n)) for n in range(3)]
    old = insert(state, 9, age=timedelta(days=3))
    fake_slack.default = ("error", "channel_not_found")
    report = run(state, slack_bot_conn)
    assert (report.sent, report.failed, report.still_pending) == (0, 0, 4)
    assert report.config_error and "channel_not_found" in (report.stopped or "")
    assert report.problem and "configuration error" in report.problem and "4 alert(s) wait" in report.problem
    assert len(fake_slack.posts()) == 1  # one try, then it stops: the others and the digest wait
    after = rows(state)
    assert {after[i]["status"] for i in [*ids, old]} == {"pending"}
    assert after[ids[0]]["attempts"] == 1 and "channel_not_found" in after[ids[0]]["last_error"]

    fake_slack.default = "ok"  # the bot was invited to the channel
    assert run(state, slack_bot_conn) == DeliveryReport(sent=3, digested=1)


def test_replayed_alerts_are_never_delivered(state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str) -> None:
    replayed = insert(state, 1, status=REPLAYED)
    assert run(state, slack_webhook_conn) == DeliveryReport()
    assert fake_slack.posts() == [] and rows(state)[replayed]["status"] == REPLAYED


def test_failed_alerts_are_reported_and_can_be_requeued(
    state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    bad, other = insert(state, 1), insert(state, 2)
    fake_slack.default = ("error", "invalid_blocks")
    report = run(state, slack_webhook_conn)
    assert report.failed == 2 and report.problem and "2 alert(s) rejected by Slack" in report.problem
    assert outbox.requeue_failed(state, [bad]) == 1
    assert {i: r["status"] for i, r in rows(state).items()} == {bad: "pending", other: "failed"}
    fake_slack.default = "ok"
    assert run(state, slack_webhook_conn).sent == 1
    assert outbox.requeue_failed(state) == 1 and run(state, slack_webhook_conn).sent == 1
    assert outbox.requeue_failed(state) == 0
    assert rows(state)[bad]["attempts"] == 2 and rows(state)[bad]["status"] == "sent"


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


def test_web_api_internal_error_is_resent_marked_not_retried_unmarked(
    state: StateStore, fake_slack: FakeSlack, slack_bot_conn: str
) -> None:
    alert_id = insert(state, 1)
    fake_slack.script(SERVER_ERROR)  # chat.postMessage: 500 internal_error, which may have posted
    report = run(state, slack_bot_conn, retries=2)
    assert report.sent == 0 and rows(state)[alert_id]["possible_duplicate"]
    assert run(state, slack_bot_conn, retries=2).sent == 1
    first, second = fake_slack.posts()
    assert slack.POSSIBLE_DUPLICATE not in first.raw and slack.POSSIBLE_DUPLICATE in second.body["text"]


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
    assert {(rows(state)[i]["status"], rows(state)[i]["attempts"]) for i in old} == {("pending", 1)}
    assert run(state, slack_webhook_conn).digested == 3
    assert [p.status for p in fake_slack.posts()] == [500, 200]


def test_a_digest_slack_rejects_is_split_until_only_the_bad_alert_fails(
    state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    old = [insert(state, n, age=timedelta(days=2)) for n in range(7)]
    fake_slack.reject = "444400000003"  # the requested account of alert 3: any message naming it is refused
    report = run(state, slack_webhook_conn)
    assert (report.digested, report.failed, report.still_pending) == (6, 1, 0)
    assert report.failures[0][0] == old[3] and "invalid_blocks" in report.failures[0][1]
    assert report.problem and "marked failed" in report.problem
    after = rows(state)
    assert after[old[3]]["status"] == "failed" and after[old[3]]["attempts"] >= 2
    assert all(after[i]["status"] == "digested" for i in old if i != old[3])
    accepted = [p.raw for p in fake_slack.posts() if p.status == 200]
    named = Counter(f"4444{n:08d}" for raw in accepted for n in range(7) if f"4444{n:08d}" in raw)
    assert named == Counter({f"4444{n:08d}": 1 for n in range(7) if n != 3})  # each good one once
    assert run(state, slack_webhook_conn) == DeliveryReport()


def test_more_old_alerts_than_one_digest_holds_go_out_in_one_run(
    state: StateStore, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    for n in range(5):
        insert(state, n, age=timedelta(days=2))
    assert run(state, slack_webhook_conn, digest_limit=2) == DeliveryReport(digested=5)
    assert [json.loads(p.raw)["text"] for p in fake_slack.posts()] == [
        "2 alerts from historical intervals",
        "2 alerts from historical intervals",
        "1 alert from historical intervals",
    ]


def test_claim_is_exclusive(state: StateStore) -> None:
    alert_id = insert(state, 1)
    cutoff = now() - outbox.STALE_CLAIM
    assert [r.id for r in outbox._claim(state, [alert_id], cutoff)] == [alert_id]
    assert outbox._claim(state, [alert_id], cutoff) == []


def test_a_late_settle_of_a_stale_claim_cannot_overwrite_the_new_claim(state: StateStore) -> None:
    alert_id = insert(state, 1)
    [first] = outbox._claim(state, [alert_id], now() - outbox.STALE_CLAIM)
    [second] = outbox._claim(state, [alert_id], now() + timedelta(seconds=1))  # the first run looked dead
    assert second.claimed_at != first.claimed_at
    outbox._settle(state, first, slack.SendResult(ok=False, error="late", retryable=True))
    row = rows(state)[alert_id]
    assert row["status"] == "sending" and row["claimed_at"] == second.claimed_at and row["attempts"] == 0
    assert outbox._settle(state, second, slack.SendResult(ok=True, reply="ok")) == "sent"
    assert rows(state)[alert_id]["status"] == "sent" and rows(state)[alert_id]["attempts"] == 1


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


# -- the deliver task ----------------------------------------------------------------------------
def test_the_deliver_task_needs_no_aws_and_fails_when_ops_must_act(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.sdk.exceptions import AirflowFailException

    def no_aws(self: Any) -> None:
        raise RuntimeError("AWS credentials unavailable")

    monkeypatch.setattr(S3Hook, "get_credentials", no_aws)
    monkeypatch.setenv("TRAILGUARD_DB", f"sqlite:///{tmp_path}/s.db")
    monkeypatch.setenv("TRAILGUARD_LAKE", LAKE)
    monkeypatch.setattr(airflow_glue, "settings", Settings.from_env)  # no Airflow Variable outside a task
    state = StateStore(f"sqlite:///{tmp_path}/s.db")
    insert(state, 1)
    assert airflow_glue.deliver_alerts()["sent"] == 1
    assert "read_parquet('s3://trailguard-lake/prod/events/" in fake_slack.posts()[0].raw  # the URI is enough

    insert(state, 2, payload="{not json")
    with pytest.raises(AirflowFailException, match=r"1 alert\(s\) rejected by Slack and marked failed"):
        airflow_glue.deliver_alerts()
    assert airflow_glue.deliver_alerts()["failed"] == 0  # a later run finds nothing new: hence no retries
    state.close()


# -- the real detections DAG ---------------------------------------------------------------------
HOSTILE_UA = "<!channel> <@U123> &amp; <https://evil|click>"
HOSTILE_ROLE_SESSION = "<!here>`x`\n@everyone"
HOSTILE_USER_NAME = "ev`il\nus`er *admin* " + "x" * 3000
T0 = utc(2026, 11, 20, 9)  # baseline_initial runs here; then hourly ingest + detections


def _hostile(record: dict) -> dict:
    """The record with attacker-chosen userAgent, userName and (for AssumeRole) roleSessionName."""
    record["userAgent"] = HOSTILE_UA
    record["userIdentity"] = {**record["userIdentity"], "userName": HOSTILE_USER_NAME}
    if record.get("requestParameters") and "roleSessionName" in record["requestParameters"]:
        record["requestParameters"]["roleSessionName"] = HOSTILE_ROLE_SESSION
    return record


def _code_block_sql(blocks: list[dict[str, Any]]) -> str:
    [text] = [b["text"]["text"] for b in blocks if b.get("text", {}).get("text", "").startswith("```")]
    return text.strip("`").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@pytest.mark.e2e
def test_detections_dag_through_an_outage_and_a_setup_error_posts_each_alert_once(
    dagbag, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    outside = "999988887777"
    (tmp_path / "world").mkdir()
    world = World(tmp_path / "world")
    world.history()
    world.add(
        provision(T0 + timedelta(minutes=20), BR),  # hour 1: historical by the time Slack is back
        _hostile(assume_role(A, C, T0 + timedelta(minutes=30))),
        _hostile(provision(T0 + timedelta(hours=3, minutes=10), RU)),  # hour 4: recent
        _hostile(assume_role(A, outside, T0 + timedelta(hours=3, minutes=20))),
    )
    lake = tmp_path / "dag-lake"
    monkeypatch.setenv("TRAILGUARD_SOURCE", str(world.source))
    monkeypatch.setenv("TRAILGUARD_LAKE", str(lake))
    monkeypatch.setenv("TRAILGUARD_DB", f"sqlite:///{tmp_path}/dag-state.db")
    monkeypatch.setenv("TRAILGUARD_WORKERS", "1")
    # The horizon counts back from the wall clock: put it between the hour-1 and hour-4 alerts.
    horizon = int((now() - (T0 + timedelta(hours=2, minutes=30))).total_seconds() // 3600)
    monkeypatch.setenv("TRAILGUARD_ALERT_HORIZON_HOURS", str(horizon))

    ingest, detections = dagbag.get_dag("cloudtrail_ingest"), dagbag.get_dag("detections")
    history = ingest.test(logical_date=T0, run_conf={"start": "2026-10-01T00:00Z", "end": T0.isoformat()})
    assert history.state == "success"
    initial = dagbag.get_dag("baseline_initial").test(run_conf={"at": T0.isoformat(), "lookback_days": 90})
    assert initial.state == "success"

    def hour(n: int) -> Any:
        at = T0 + timedelta(hours=n)
        assert ingest.test(logical_date=at, run_conf={"start": None, "end": None}).state == "success"
        return detections.test(logical_date=at)

    fake_slack.default = SERVER_ERROR  # Slack is down for three hourly runs
    for n in (1, 2, 3):
        run = hour(n)
        assert run.state == "success" and run.get_task_instance("deliver").state == "success"
    dag_state = StateStore(f"sqlite:///{tmp_path}/dag-state.db")
    assert [r["status"] for r in rows(dag_state).values()] == ["pending", "pending"]
    assert not any(p.delivered for p in fake_slack.posts())

    fake_slack.default = "ok"
    fake_slack.script(("error", "invalid_token"))  # back, but the webhook was revoked
    failed = hour(4)
    assert failed.state == "failed"
    deliver = failed.get_task_instance("deliver")
    assert deliver.state == "failed" and deliver.try_number == 1  # no retries: they would hide it
    assert {r["status"] for r in rows(dag_state).values()} == {"pending"} and len(rows(dag_state)) == 4

    assert hour(5).state == "success"  # the webhook was fixed
    assert detections.test(logical_date=T0 + timedelta(hours=5)).state == "success"  # a re-run posts nothing

    delivered = [p.body for p in fake_slack.posts() if p.delivered]
    notices = [b for b in delivered if b["text"].startswith(":rotating_light:")]
    digests = [b for b in delivered if "historical intervals" in b["text"]]
    singles = [b for b in delivered if b not in notices and b not in digests]
    [notice] = notices  # ops heard of the setup error once
    assert notice["text"].startswith(":rotating_light: Task failed: detections.deliver: AirflowFailException")
    assert "configuration error" in notice["text"] and "invalid_token" in notice["text"]
    [digest] = digests
    assert digest["text"] == "2 alerts from historical intervals"
    digest_body = json.dumps(digest["blocks"])
    assert "country `BR`" in digest_body and f"`{A}` \\u2192 `{C}`" in digest_body
    [country, cross] = sorted(singles, key=lambda b: outside in json.dumps(b))  # the two recent ones, once each
    assert RU in json.dumps(country) and outside in json.dumps(cross)
    assert not any(old in json.dumps(b) for b in singles for old in (BR, C))  # the historical ones: digest only
    after = rows(dag_state)
    assert sorted(r["status"] for r in after.values()) == ["digested", "digested", "sent", "sent"]
    assert not any(r["possible_duplicate"] for r in after.values())

    for body in delivered:  # hostile CloudTrail values, through detection and rendering, arrive inert
        for text in strings(body):
            assert not any(f in text for f in FORBIDDEN), text
            assert not any(raw in text for raw in ("<https://evil", "<@U123>", "ev`il", "x" * 200, "\n@everyone"))
            assert "/services/T000/B000/XXXX" not in text
    assert "&amp;amp;" in json.dumps(cross["blocks"])  # the literal "&amp;" shows as typed
    assert "User ev\u02cbil us\u02cber \u2217admin\u2217 xxx" in country["text"]  # no bold outside code
    assert f"x{slack.ELLIPSIS} is starting or creating an instance" in country["text"]  # the rest still reads

    query = _code_block_sql(cross["blocks"])  # the message's DuckDB query, run on the DAGs' lake
    assert f"read_parquet('{lake.resolve()}/events/" in query
    found = duckdb.connect().execute(query).fetchall()
    assert [(r[2], r[5]) for r in found] == [("AssumeRole", HOSTILE_USER_NAME)]
    dag_state.close()
