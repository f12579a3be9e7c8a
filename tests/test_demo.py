"""``trailguard demo`` in pieces: the local Slack and its rendering, moto's lifetime, the log
redirection, and the demo's pipeline (moto S3 -> the real DAGs -> Slack) on a short range."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fake_slack import alert_payload
from rich.console import Console
from trailguard import demo, slack
from trailguard.cli import build_parser

DELIVERED = re.compile(r"_(\d{8}T\d{4}Z)_[^/]*\.json\.gz$")
HOSTILE_MARKUP = "[blink]pwn[/blink]"  # rich markup: must be shown, never applied


def _text(message: dict) -> str:
    console = Console(record=True, width=140, file=io.StringIO())
    console.print(demo.render_message(message))
    return console.export_text()


def test_receiver_gets_a_real_delivery_and_renders_it(monkeypatch: pytest.MonkeyPatch) -> None:
    alert = alert_payload(country=True, hostile=True)
    alert["rows"][0]["user_agent"] = HOSTILE_MARKUP
    with demo.SlackReceiver() as receiver:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SLACK_ALERTS", json.dumps({"conn_type": "slackwebhook", "password": receiver.url})
        )
        result = slack.send(slack.render_alert(alert, "var/demo/lake"), conn_id="slack_alerts")
        assert result.ok, result.error
        [message] = receiver.drain()
        assert receiver.drain() == []
    text = _text(message)
    assert "Cloud Provisioning Activity From Previously Unseen Country" in text  # the header
    assert "Low severity" in text and "81.2.69.160" in text and "Brazil" in text  # section and fields
    assert "Country" in text and "Source IP" in text and "User agent" in text
    assert "detection 94994255-3acf-4213-9b3f-0494df03bb31" in text  # the context line
    assert HOSTILE_MARKUP in text  # shown as typed, not interpreted by the terminal
    assert "&lt;" not in text and "&amp;" not in text  # Slack's entities are decoded for reading


def test_receiver_refuses_other_paths() -> None:
    import urllib.error
    import urllib.request

    with demo.SlackReceiver() as receiver:
        wrong = receiver.url.replace(demo.WEBHOOK_PATH, "/services/elsewhere")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(wrong, data=b"{}", method="POST"), timeout=5)
        assert refused.value.code == 400
        assert receiver.drain() == []


def test_moto_server_is_stopped_even_when_the_block_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), demo.moto_server() as moto:
        port = int(moto.endpoint.rsplit(":", 1)[1])
        demo.s3_client(moto.endpoint).create_bucket(Bucket="probe-bucket")  # it serves S3
        raise RuntimeError("boom")
    assert moto.proc.poll() is not None  # exited and reaped
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_rendering_keeps_terminal_escapes_out() -> None:
    message = {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "ua `\x1b]8;;http://evil\x1b\\x`"}}]}
    text = _text(message)
    assert "\x1b" not in text and "]8;;http://evil" in text


def test_ctrl_c_ends_the_demo_even_where_the_interrupt_would_be_swallowed(tmp_path: Path) -> None:
    cleaned = tmp_path / "cleaned"
    script = f"""
import os, signal, sys, time
from trailguard import demo
interrupts = demo.Interrupts(sys.stdout)
interrupts.cleanups.append(lambda: open({str(cleaned)!r}, "w").close())
interrupts.arm()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)
except BaseException:  # what Airflow's task runner does with a KeyboardInterrupt
    pass
print("not reached")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert cleaned.exists() and "Interrupted" in done.stdout and "not reached" not in done.stdout


def test_descriptor_output_goes_to_the_log_and_the_story_to_the_terminal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "demo.log"
    with demo.terminal_and_log(log) as terminal:
        os.write(1, b"airflow noise on stdout\n")
        os.write(2, b"airflow noise on stderr\n")
        terminal.write("for the user\n")
    out, err = capfd.readouterr()
    assert "for the user" in out
    assert "noise" not in out + err
    assert "airflow noise on stdout" in log.read_text() and "airflow noise on stderr" in log.read_text()


def test_the_users_slack_is_used_and_the_rest_of_the_environment_is_hermetic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = demo.make_plan(tmp_path)
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS", raising=False)
    assert demo.users_slack() is None
    assert "AIRFLOW_CONN_SLACK_ALERTS" in demo.pipeline_env(plan, "http://127.0.0.1:1", "http://127.0.0.1:2/hook")

    monkeypatch.setenv("TRAILGUARD_SLACK_CONN_ID", "team_slack")
    monkeypatch.setenv("AIRFLOW_CONN_TEAM_SLACK", '{"conn_type": "slackwebhook", "password": "https://example"}')
    assert demo.users_slack() == "team_slack"
    env = demo.pipeline_env(plan, "http://127.0.0.1:1", None)  # the demo passes no receiver then
    assert "AIRFLOW_CONN_TEAM_SLACK" not in env and env["TRAILGUARD_SOURCE"] == f"s3://{demo.BUCKET}"

    for name, value in {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://prod", "AWS_PROFILE": "prod"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRAILGUARD_ACCOUNTS", "111122223333")
    saved = dict(os.environ)
    try:
        demo.apply_env(demo.airflow_env(plan) | env)
        assert os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(f"sqlite:///{plan.airflow_home}")
        assert "AWS_PROFILE" not in os.environ and "TRAILGUARD_ACCOUNTS" not in os.environ
        assert os.environ["AIRFLOW_CONN_TEAM_SLACK"] and os.environ["TRAILGUARD_SLACK_CONN_ID"] == "team_slack"
    finally:  # this process's Airflow configuration is the test session's
        os.environ.clear()
        os.environ.update(saved)


def test_the_command_and_its_limits(tmp_path: Path) -> None:
    args = build_parser().parse_args(["demo", "--days", "10", "--dir", str(tmp_path)])
    assert (args.days, args.dir, args.func.__name__) == (10, str(tmp_path), "cmd_demo")
    with pytest.raises(ValueError, match="at least 9"):
        demo.make_plan(tmp_path, days=8)


def _delivered_before(trail: Path, end_stamp: str) -> tuple[int, int]:
    """(objects, records) among the generated files delivered before ``end_stamp`` (YYYYMMDDTHHMMZ)."""
    objects = records = 0
    for path in trail.rglob("*.json.gz"):
        if DELIVERED.search(path.name)[1] < end_stamp:
            objects += 1
            records += len(json.loads(gzip.decompress(path.read_bytes()))["Records"])
    return objects, records


@pytest.mark.e2e
def test_demo_pipeline_moto_to_dags_to_slack(
    dagbag, moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """9 quiet days; history up to 14 h before the end, then 3 live hours. The role-chaining
    incident (14 h before the end) must reach Slack; everything delivered must reach the lake."""
    base = demo.make_plan(tmp_path, days=9)
    plan = demo.Plan(base.root, base.end, days=9, events_per_hour=0, live_hours=14)
    stats, incidents = demo.generate_month(plan)
    bucket = "trailguard-demo-test"
    assert demo.upload(moto_endpoint, bucket, plan.trail) == stats.files

    with demo.SlackReceiver() as receiver:
        for name, value in demo.pipeline_env(plan, moto_endpoint, receiver.url, bucket).items():
            monkeypatch.setenv(name, value)
        demo.ingest_history(dagbag, plan)
        demo.build_baselines(dagbag, plan)
        for at in plan.hours[:3]:
            demo.run_hour(dagbag, at, plan.log)
        messages = receiver.drain()

    last = plan.hours[2]
    counts = demo.ledger_counts(plan.state_url)
    assert (counts.objects, counts.events) == _delivered_before(plan.trail, f"{last:%Y%m%dT%H%MZ}")

    alerts = demo.alert_rows(plan.state_url)
    chained = demo.match_incidents(incidents, alerts)["role_chaining_new_account"]
    assert chained is not None and chained.status == "sent"
    assert chained.key == {"requesting_account_id": "161803398874", "requested_account_id": "271828182845"}
    assert len(messages) == len(alerts) and {a.status for a in alerts} == {"sent"}
    text = "\n".join(_text(m) for m in messages)
    assert "161803398874 \u2192 271828182845" in text and "OrganizationAccountAccessRole" in text
