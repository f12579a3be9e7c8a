"""Slack messages and sending: real slack_sdk through the Airflow provider hooks, against a fake Slack."""

from __future__ import annotations

import json
import logging
import re
import socket
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_slack import (  # ruff: ignore[unused-import] - the *_fixture names register pytest fixtures
    API_PATH,
    FORBIDDEN,
    HANG,
    HOSTILE_SESSION,
    HOSTILE_USER,
    HOSTILE_USER_AGENT,
    RATE_LIMITED,
    SERVER_ERROR,
    WEBHOOK_PATH,
    FakeSlack,
    alert_payload,
    assert_block_kit_limits,
    fake_slack_fixture,
    slack_bot_conn_fixture,
    slack_webhook_conn_fixture,
    strings,
)
from trailguard import slack
from trailguard.settings import Settings
from trailguard.slack import ELLIPSIS

LAKE = "s3://trailguard-lake/prod"


def send(message: slack.Message, conn_id: str, **kwargs) -> slack.SendResult:
    """``slack.send`` with the timeout and channel from the settings, as the runtime calls it."""
    cfg = Settings.from_env()
    return slack.send(message, conn_id, **{"timeout": cfg.slack_timeout, "channel": cfg.slack_channel, **kwargs})


# -- escaping ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hostile",
    [
        "<!channel>",
        "<!here|here>",
        "<!everyone>",
        "<@U123>",
        "<#C123>",
        "<!subteam^S123>",
        "<http://evil.example|click>",
        "@here",
        "@channel please",
        "@Everyone",
    ],
)
def test_escape_leaves_no_mention_or_link(hostile: str) -> None:
    out = slack.escape(hostile)
    assert "<" not in out and ">" not in out
    for word in ("@here", "@channel", "@everyone", "!channel", "!here", "!everyone"):
        assert word not in out.lower()


def test_escape_entities_backticks_controls_and_urls() -> None:
    assert slack.escape("a & b < c > d") == "a &amp; b &lt; c &gt; d"
    assert "`" not in slack.escape("``` `code` ```")
    assert slack.escape("a\x00b\x1bc\u202ed\nline") == "abcd line"
    assert "http://" not in slack.escape("see http://evil.example")
    assert slack.escape("s3://bucket/x", defang_urls=False) == "s3://bucket/x"
    assert slack.escape(None) == ""


@pytest.mark.parametrize(
    "invisible",
    ["\u200b", "\u200d", "\u2060", "\u2066", "\u2069", "\u202e", "\u061c", "\u00ad", "\ufeff", "\U000e0041", "\ud800"],
)
def test_escape_drops_every_format_character(invisible: str) -> None:
    assert slack.escape(f"ad{invisible}min") == "admin"
    assert slack.plain(f"ad{invisible}min", 20) == "admin"


def test_escape_neutralises_formatting_outside_code_only() -> None:
    out = slack.escape("*bold* _it_ ~strike~ snake_case_name a*b")
    assert not any(marker in out.replace("snake_case_name", "").replace("a*b", "") for marker in "*_~")
    assert "snake_case_name" in out and "a*b" in out  # inside a word Slack formats nothing
    assert slack.code("*bold* _it_") == "`*bold* _it_`"  # a code span shows them as they are


def test_escape_without_limit_never_cuts() -> None:
    assert slack.escape("x" * 5000, None) == "x" * 5000


def test_escape_truncates_before_escaping() -> None:
    out = slack.escape("x" * 500, limit=100)
    assert len(out) == 100 and out.endswith("\u2026")
    out = slack.escape("&" * 50, limit=10)
    assert out == "&amp;" * 9 + "\u2026"  # never half an entity


def test_clip_keeps_entities_whole() -> None:
    text = "abc&amp;def"
    assert slack.clip(text, 6) == "abc\u2026"
    assert slack.clip(text, 100) == text


def test_clip_never_leaves_a_code_span_open() -> None:
    text = "*User* `" + "x" * 50 + "` and `more`"
    cut = slack.clip(text, 30)
    assert cut == "*User* \u2026" and len(cut) <= 30
    assert slack.clip("`ab` `cd` tail", 11) == "`ab` `cd` \u2026"  # whole spans stay


# -- rendering ---------------------------------------------------------------------------------
def test_render_cross_account_alert() -> None:
    message = slack.render_alert(alert_payload(1), LAKE)
    assert_block_kit_limits(message.blocks)
    body = json.dumps(message.blocks)
    assert "AWS Cross Account Activity From Previously Unseen Account" in message.blocks[0]["text"]["text"]
    assert "Low severity" in body and "111122223333" in body and "444400000001" in body
    assert "https://us-east-1.console.aws.amazon.com/cloudtrailv2/home?region=us-east-1#/events/evt-0001" in body
    assert "(sign in to account `444455556666`, `us-east-1`)" in body  # the account the link opens in
    assert "*Account* (recorded in)\\n`444455556666`" in body
    assert "read_parquet('s3://trailguard-lake/prod/events/*/*/*.parquet', hive_partitioning = true)" in body
    assert "coalesce(nullif(user_account_id, ''), recipient_account_id) = '111122223333'" in body
    assert "LIKE 'arn:%::444400000001:%'" in body
    assert "*MITRE ATT&amp;CK:* none mapped in ESCU" in body
    assert "*Events*\\n7" in body
    assert slack.POSSIBLE_DUPLICATE not in body
    assert message.text.startswith(":large_yellow_circle: Low")


def test_render_country_alert_with_attack_links_and_known_countries() -> None:
    message = slack.render_alert(alert_payload(2, country=True, risk=42), LAKE)
    assert_block_kit_limits(message.blocks)
    body = json.dumps(message.blocks)
    assert "Medium severity" in body
    assert "<https://attack.mitre.org/techniques/T1078/|T1078>" in body
    assert "<https://attack.mitre.org/techniques/T1078/004/|T1078.004>" in body
    assert "Countries seen before" in body and "`DE`" in body and "`US`" in body
    assert "Brazil" in body and "AS20712" in body
    assert "*Account* (recorded in)\\n`444455556666`" in body and "sign in to account `444455556666`" in body
    assert "source_ip IN ('81.2.69.160')" in body
    assert "*Role*" not in body  # a provisioning call assumes no role


def test_digest_names_the_account_of_a_country_alert() -> None:
    body = json.dumps(slack.render_digest([alert_payload(1, country=True)], 1).blocks)
    assert "country `BR` in account `444455556666`" in body


LAKE_COLUMNS = (
    "event_id", "event_name", "aws_region", "recipient_account_id", "user_name", "user_arn", "user_account_id",
    "source_ip", "request_role_arn", "assumed_role_arn", "role_session_name", "error_code", "user_agent",
)  # fmt: skip


def write_lake(root: Path, events: list[dict]) -> str:
    """A Hive-partitioned events lake (the layout and columns of docs/schema.md) holding ``events``."""
    parts: dict[tuple[str, int], list[dict]] = {}
    for event in events:
        parts.setdefault((f"{event['event_time']:%Y-%m-%d}", event["event_time"].hour), []).append(event)
    for (day, hour), rows in parts.items():
        columns = {c: pa.array([r.get(c) for r in rows], pa.string()) for c in LAKE_COLUMNS}
        columns["event_time"] = pa.array([r["event_time"] for r in rows], pa.timestamp("ms", tz="UTC"))
        folder = root / "events" / f"event_date={day}" / f"event_hour={hour:02d}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table(columns), folder / "delivered-x.parquet")
    return str(root)


def run_message_query(message: slack.Message) -> list[tuple]:
    """The DuckDB query in the message, as a reader would copy it from Slack, run for real."""
    [sql] = [b["text"]["text"] for b in message.blocks if b.get("text", {}).get("text", "").startswith("```")]
    sql = sql.removeprefix("```").removesuffix("```")
    assert ELLIPSIS not in sql  # never cut
    sql = sql.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return duckdb.connect().execute(sql).fetchall()


FIRED = datetime(2026, 11, 20, 14, tzinfo=timezone.utc)


def test_query_of_a_busy_cross_account_alert_shows_its_activity(tmp_path: Path) -> None:
    def call(n: int, at: datetime, caller: str = "111122223333", into: str = "444400000001") -> dict:
        arn = f"arn:aws:iam::{into}:role/deploy"
        event = {"event_id": str(uuid.UUID(int=n)), "event_time": at, "event_name": "AssumeRole"}
        return {**event, "user_account_id": caller, "recipient_account_id": caller, "request_role_arn": arn}

    inside = [call(n, FIRED - timedelta(hours=23, minutes=n)) for n in range(60)]  # >= 25: the old query broke
    others = [
        call(100, FIRED - timedelta(hours=25)),  # before the window
        call(101, FIRED),  # the window ends where the alert fired
        call(102, FIRED - timedelta(hours=1), caller="999988887777"),
        call(103, FIRED - timedelta(hours=1), into="777788889999"),
    ]
    lake = write_lake(tmp_path / "lake", inside + others)
    alert = dict(alert_payload(1), rows=[dict(alert_payload(1)["rows"][0], event_id=e["event_id"]) for e in inside])
    message = slack.render_alert(alert, lake)
    assert_block_kit_limits(message.blocks)
    found = run_message_query(message)
    assert sorted(row[1] for row in found) == sorted(e["event_id"] for e in inside)


def test_query_of_a_country_alert_lists_as_many_source_ips_as_fit(tmp_path: Path) -> None:
    ips = [f"2001:4860:4860:0000:0000:0000:{n:04x}:8888" for n in range(200)]
    events = [
        {"event_id": f"e-{n}", "event_time": FIRED - timedelta(hours=2), "event_name": "RunInstances", "source_ip": ip}
        for n, ip in enumerate(ips)
    ]
    lake = write_lake(tmp_path / "lake", events)
    base = alert_payload(1, country=True)
    alert = dict(base, rows=[dict(base["rows"][0], src=ip, event_id=f"e-{n}") for n, ip in enumerate(ips)])
    message = slack.render_alert(alert, lake)
    assert_block_kit_limits(message.blocks)
    body = json.dumps(message.blocks)
    listed = re.search(r"-- (\d+) of 200 source_ip values listed", body)
    assert listed and 0 < int(listed.group(1)) < 200
    found = run_message_query(message)
    assert len(found) == int(listed.group(1)) and {row[7] for row in found} <= set(ips)


def test_query_names_the_lake_absolutely_and_reads_s3_with_the_credential_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert slack.lake_root("var/lake") == str(tmp_path.resolve() / "var" / "lake")
    local = slack.duckdb_query("var/lake", alert_payload(1), [], 3000)
    assert f"read_parquet('{tmp_path.resolve()}/var/lake/events/" in local and "httpfs" not in local
    s3 = slack.duckdb_query(LAKE + "/", alert_payload(1), [], 3000)
    assert "INSTALL httpfs; LOAD httpfs;" in s3 and "PROVIDER credential_chain" in s3
    assert "read_parquet('s3://trailguard-lake/prod/events/" in s3


def test_severity_and_links() -> None:
    assert slack.severity(70)[0] == "High" and slack.severity(40)[0] == "Medium" and slack.severity(39)[0] == "Low"
    assert slack.attack_url("T1078.004") == "https://attack.mitre.org/techniques/T1078/004/"
    assert slack.attack_url("T1078|x") is None
    assert slack.cloudtrail_event_url("us-east-1", "a|b>") is None
    assert slack.cloudtrail_event_url("<evil>", "abc") is None
    china = "https://console.amazonaws.cn/cloudtrailv2/home?region=cn-north-1#/events/e-1"
    assert slack.cloudtrail_event_url("cn-north-1", "e-1") == china
    gov = "https://console.amazonaws-us-gov.com/cloudtrailv2/home?region=us-gov-west-1#/events/e-1"
    assert slack.cloudtrail_event_url("us-gov-west-1", "e-1") == gov


def test_possible_duplicate_is_marked() -> None:
    message = slack.render_alert(alert_payload(1), LAKE, possible_duplicate=True)
    assert message.text.startswith(slack.POSSIBLE_DUPLICATE)
    assert slack.POSSIBLE_DUPLICATE in json.dumps(message.blocks)


def test_huge_alert_stays_within_slack_limits() -> None:
    alert = alert_payload(3, country=True, hostile=True)
    row = dict(alert["rows"][0], user_agent="<!here>" * 2000, role_arn="&" * 5000, object="x" * 9000)
    alert.update(
        detection="D" * 500,
        message="<@U1> " * 2000,
        rows=[dict(row, event_id=f"evt-{i}") for i in range(500)],
        rows_total=10_000,
        known_countries=[f"C{i}" for i in range(400)],
        mitre_attack=[f"T{1000 + i}" for i in range(40)],
    )
    message = slack.render_alert(alert, LAKE)
    assert_block_kit_limits(message.blocks)
    assert len(message.text) <= slack.MAX_TEXT
    assert not any(f in s for s in strings(message.blocks) for f in FORBIDDEN)


def test_digest_and_ops_messages() -> None:
    alerts = [alert_payload(i, risk=15 + i, hostile=True) for i in range(60)]
    digest = slack.render_digest(alerts, total=75)
    assert_block_kit_limits(digest.blocks)
    body = json.dumps(digest.blocks)
    assert "75 alerts from historical intervals" in digest.blocks[0]["text"]["text"]
    assert body.index("444400000059") < body.index("444400000058")  # highest risk first
    assert "444400000001" not in body  # only the top ones are listed
    assert "55 more" in body

    ops = slack.render_ops("Ingest failed", ["object <!channel> s3://b/k `x`", "second"])
    assert_block_kit_limits(ops.blocks)
    assert not any(f in s for s in [*strings(ops.blocks), ops.text] for f in FORBIDDEN)


# -- sending -----------------------------------------------------------------------------------
def _assert_clean_body(body: dict) -> None:
    """A posted body holds well-formed blocks and no hostile value in live form."""
    assert isinstance(body["text"], str) and body["text"]
    assert_block_kit_limits(body["blocks"])
    for s in strings(body):
        for forbidden in FORBIDDEN:
            assert forbidden not in s, (forbidden, s)
        for raw in (HOSTILE_USER_AGENT, HOSTILE_SESSION, HOSTILE_USER):
            assert raw not in s


def test_webhook_delivers_blocks(fake_slack: FakeSlack, slack_webhook_conn: str) -> None:
    result = send(slack.render_alert(alert_payload(1, hostile=True), LAKE), slack_webhook_conn)
    assert result == slack.SendResult(ok=True, reply="ok")
    [post] = fake_slack.posts()
    assert post.path == WEBHOOK_PATH and post.status == 200
    assert post.headers["Content-Type"].startswith("application/json")
    assert post.body is not None and post.body["unfurl_links"] is False
    _assert_clean_body(post.body)


def test_bot_token_posts_chat_post_message(fake_slack: FakeSlack, slack_bot_conn: str) -> None:
    result = send(slack.render_alert(alert_payload(2, country=True, hostile=True), LAKE), slack_bot_conn)
    assert result.ok and result.error is None
    assert json.loads(result.reply) == {"channel": "C000ALERTS", "ts": "1700000000.000001"}
    [post] = fake_slack.posts()
    assert post.path == API_PATH
    assert post.headers["Authorization"] == "Bearer xoxb-test"
    assert post.body is not None and post.body["channel"] == "#alerts"
    _assert_clean_body(post.body)


def test_channel_from_environment(fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "slack", "password": "xoxb-test", "extra": {"base_url": fake_slack.api_url}}
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_NOCHAN", json.dumps(conn))
    missing = send(slack.render_ops("t", []), "slack_nochan")
    assert not missing.ok and missing.config_error and missing.retryable and "channel" in (missing.error or "")
    assert fake_slack.posts() == []
    monkeypatch.setenv("TRAILGUARD_SLACK_CHANNEL", "C0SEC")
    assert send(slack.render_ops("t", []), "slack_nochan").ok
    assert fake_slack.posts()[0].body["channel"] == "C0SEC"


@pytest.mark.parametrize("conn", ["slack_webhook_conn", "slack_bot_conn"])
def test_rate_limit_is_honoured_then_succeeds(fake_slack: FakeSlack, conn: str, request: pytest.FixtureRequest) -> None:
    conn_id = request.getfixturevalue(conn)
    fake_slack.script(RATE_LIMITED)
    result = send(slack.render_alert(alert_payload(1), LAKE), conn_id)
    assert result.ok
    assert [p.status for p in fake_slack.posts()] == [429, 200]
    assert fake_slack.posts()[0].raw == fake_slack.posts()[1].raw


def test_server_error_then_success(fake_slack: FakeSlack, slack_webhook_conn: str) -> None:
    fake_slack.script(SERVER_ERROR)
    assert send(slack.render_alert(alert_payload(1), LAKE), slack_webhook_conn).ok
    assert [p.status for p in fake_slack.posts()] == [500, 200]


def test_persistent_server_error_is_retryable(fake_slack: FakeSlack, slack_webhook_conn: str) -> None:
    fake_slack.default = SERVER_ERROR
    result = send(slack.render_ops("t", ["x"]), slack_webhook_conn, retries=1)
    assert not result.ok and result.retryable and not result.maybe_delivered
    assert len(fake_slack.posts()) == 2  # one in-process retry


@pytest.mark.parametrize(
    ("conn", "error"),
    [
        ("slack_webhook_conn", "invalid_payload"),
        ("slack_webhook_conn", "invalid_blocks"),
        ("slack_bot_conn", "invalid_blocks"),
        ("slack_bot_conn", "msg_too_long"),
    ],
)
def test_a_rejected_message_is_not_retryable(
    fake_slack: FakeSlack, conn: str, error: str, request: pytest.FixtureRequest
) -> None:
    conn_id = request.getfixturevalue(conn)
    fake_slack.script(("error", error))
    result = send(slack.render_ops("t", ["x"]), conn_id)
    assert not result.ok and not result.retryable and not result.maybe_delivered and not result.config_error
    assert error in (result.error or "")
    assert len(fake_slack.posts()) == 1


@pytest.mark.parametrize(
    ("conn", "error", "status"),
    [
        ("slack_webhook_conn", "no_service", 404),
        ("slack_webhook_conn", "invalid_token", 403),
        ("slack_webhook_conn", "channel_is_archived", 410),
        ("slack_webhook_conn", "user_not_found", 400),  # a 400 about the setup, not the message
        ("slack_bot_conn", "channel_not_found", 200),
        ("slack_bot_conn", "not_in_channel", 200),
        ("slack_bot_conn", "invalid_auth", 200),
        ("slack_bot_conn", "token_revoked", 200),
        ("slack_bot_conn", "account_inactive", 200),
        ("slack_bot_conn", "some_new_error", 200),  # unknown: stop and keep, rather than fail alerts
    ],
)
def test_a_slack_setup_error_is_a_config_error(
    fake_slack: FakeSlack, conn: str, error: str, status: int, request: pytest.FixtureRequest
) -> None:
    conn_id = request.getfixturevalue(conn)
    fake_slack.script(("error", error))
    result = send(slack.render_ops("t", ["x"]), conn_id)
    assert not result.ok and result.config_error and result.retryable and not result.maybe_delivered
    assert result.error == f"HTTP {status}: {error}"
    assert len(fake_slack.posts()) == 1


def test_web_api_500_may_have_posted_so_it_is_not_retried(fake_slack: FakeSlack, slack_bot_conn: str) -> None:
    fake_slack.script(SERVER_ERROR)
    result = send(slack.render_ops("t", ["x"]), slack_bot_conn)
    assert not result.ok and result.retryable and result.maybe_delivered
    assert len(fake_slack.posts()) == 1  # the outbox re-sends it, marked as a possible duplicate


def test_web_api_503_is_retried_in_process(fake_slack: FakeSlack, slack_bot_conn: str) -> None:
    fake_slack.script(("http", "503"))
    assert send(slack.render_ops("t", ["x"]), slack_bot_conn).ok
    assert [p.status for p in fake_slack.posts()] == [503, 200]


@pytest.mark.parametrize("status", ["502", "504"])
def test_webhook_gateway_errors_may_have_posted(fake_slack: FakeSlack, slack_webhook_conn: str, status: str) -> None:
    fake_slack.script(("http", status))
    result = send(slack.render_ops("t", ["x"]), slack_webhook_conn)
    assert not result.ok and result.retryable and result.maybe_delivered and not result.config_error
    assert len(fake_slack.posts()) == 1


@pytest.mark.parametrize("conn", ["slack_webhook_conn", "slack_bot_conn"])
def test_hang_is_maybe_delivered_and_not_retried_in_process(
    fake_slack: FakeSlack, conn: str, request: pytest.FixtureRequest
) -> None:
    conn_id = request.getfixturevalue(conn)
    fake_slack.script(HANG)
    result = send(slack.render_ops("t", ["x"]), conn_id)
    assert not result.ok and result.retryable and result.maybe_delivered
    assert len(fake_slack.posts()) == 1


def test_connection_refused_is_retryable_and_not_delivered(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    conn = {"conn_type": "slackwebhook", "password": f"http://127.0.0.1:{port}/services/T000/B000/XXXX"}
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_DEAD", json.dumps(conn))
    result = send(slack.render_ops("t", ["x"]), "slack_dead", retries=0, timeout=1)
    assert not result.ok and result.retryable and not result.maybe_delivered


def test_connection_problems_are_retryable_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = send(slack.render_ops("t", []), "no_such_connection")
    assert not missing.ok and missing.config_error and missing.retryable and not missing.maybe_delivered
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_HTTP", json.dumps({"conn_type": "http", "host": "example.com"}))
    wrong = send(slack.render_ops("t", []), "slack_http")
    assert not wrong.ok and wrong.config_error and "conn_type" in (wrong.error or "")


def test_a_malformed_webhook_url_is_a_config_error_not_a_maybe(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "slackwebhook", "password": "http://127.0.0.1:notaport/services/T000/B000/XXXX"}
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_BADURL", json.dumps(conn))
    result = send(slack.render_ops("t", ["x"]), "slack_badurl", retries=0, timeout=1)
    assert not result.ok and result.config_error and not result.maybe_delivered
    assert "InvalidURL" in (result.error or "") and "XXXX" not in (result.error or "")


def test_secrets_never_logged_or_returned(
    fake_slack: FakeSlack, slack_webhook_conn: str, slack_bot_conn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_slack.script(SERVER_ERROR, HANG, ("error", "invalid_payload"), SERVER_ERROR, ("error", "not_authed"))
    results = [send(slack.render_ops("t", ["x"]), slack_webhook_conn, retries=0) for _ in range(3)]
    results += [send(slack.render_ops("t", ["x"]), slack_bot_conn, retries=0) for _ in range(2)]
    assert not any(r.ok for r in results)
    texts = [caplog.text, *(r.error or "" for r in results), *(r.reply for r in results)]
    for text in texts:
        assert "/services/T000/B000/XXXX" not in text
        assert "xoxb-test" not in text
    assert slack.redact(f"boom {fake_slack.webhook_url}", [fake_slack.webhook_url]) == "boom ***"
    assert slack.redact("token xoxb-123-abc leaked") == "token *** leaked"
