"""``trailguard demo`` in pieces (the local Slack and its rendering, moto's lifetime, the log
redirection, make airflow's Slack sink and instructions), then the whole command end to end."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fake_slack import alert_payload
from rich.console import Console
from trailguard import demo, slack
from trailguard.cli import build_parser
from trailguard.generate import MANIFEST, generate_trail, write_records
from trailguard.settings import PROJECT_ROOT

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
    args = build_parser().parse_args(["demo", "--days", "10", "--dir", str(tmp_path), "--live-hours", "12"])
    assert (args.days, args.dir, args.live_hours, args.func.__name__) == (10, str(tmp_path), 12, "cmd_demo")
    defaults = build_parser().parse_args(["demo"])
    assert (defaults.days, defaults.events_per_hour, defaults.live_hours) == (None, None, None)  # run()'s own
    assert demo.make_plan(tmp_path).days == demo.DEFAULT_DAYS == 30  # a month
    with pytest.raises(ValueError, match="at least 9"):
        demo.make_plan(tmp_path, days=8)
    with pytest.raises(ValueError, match="between 4 and 48"):
        demo.make_plan(tmp_path, live_hours=49)


def test_italic_bold_and_code_render_as_slack_shows_them() -> None:
    from rich.text import Text

    text = demo.mrkdwn("Role _n/a_ by *maria* as `AWSReservedSSO_Admin_x` for snake_case_name")
    assert isinstance(text, Text)
    assert text.plain == "Role n/a by maria as AWSReservedSSO_Admin_x for snake_case_name"
    styles = {text.plain[span.start : span.end]: str(span.style) for span in text.spans}
    assert styles == {"n/a": "italic", "maria": "bold", "AWSReservedSSO_Admin_x": "cyan"}


def test_objects_delivered_after_the_end_are_counted_as_not_yet_delivered(tmp_path: Path) -> None:
    end = datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)
    rng = random.Random(1)
    write_records(tmp_path, "111122223333", "us-east-1", end - timedelta(minutes=1), [{"eventID": "a"}], rng)
    write_records(tmp_path, "111122223333", "us-east-1", end, [{"eventID": "b"}, {"eventID": "c"}], rng)
    write_records(tmp_path, "111122223333", "eu-west-1", end + timedelta(minutes=9), [{"eventID": "d"}], rng)
    assert demo.delivered_from(tmp_path, end) == (2, 3)


def test_make_airflow_is_told_where_a_non_default_demo_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = demo.make_plan(PROJECT_ROOT / "var" / "demo")
    assert demo.airflow_command(default) == "make airflow"
    monkeypatch.chdir(tmp_path)
    elsewhere = demo.make_plan(tmp_path / "d")
    assert demo.airflow_command(elsewhere) == f"TRAILGUARD_SOURCE={elsewhere.trail} make airflow"


def test_the_slack_sink_writes_what_it_receives_rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """make airflow's Slack: a real delivery to the sink's port ends up readable in its log file."""
    port, log, stop = _free_port(), tmp_path / "slack.log", threading.Event()
    sink = threading.Thread(target=demo.serve_sink, args=(port, log, stop), daemon=True)
    sink.start()
    try:
        conn = json.dumps({"conn_type": "slackwebhook", "password": demo.sink_url(port)})
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", conn)
        for _ in range(50):  # the thread binds the port
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.05)
        result = slack.send(slack.render_alert(alert_payload(country=True), "var/airflow/lake"), conn_id="slack_alerts")
        assert result.ok, result.error
        for _ in range(50):
            if "Previously Unseen Country" in log.read_text():
                break
            time.sleep(0.1)
    finally:
        stop.set()
        sink.join(timeout=5)
    text = log.read_text()
    assert "Slack message received" in text and "Cloud Provisioning Activity From Previously Unseen Country" in text
    assert "81.2.69.160" in text and "\x1b[" not in text  # plain text for tail -f and editors
    script = (PROJECT_ROOT / "scripts" / "airflow-standalone.sh").read_text()
    assert "sink_url(" in script and "slack-sink --port" in script  # the script's connection is the sink's URL


def test_airflow_steps_give_the_dates_of_a_generated_trail(tmp_path: Path) -> None:
    end = datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)
    trail = generate_trail(tmp_path / "trail", days=3, end=end, events_per_hour=0)
    first = min(i.at for i in trail.incidents).replace(minute=0)
    lines = demo.airflow_steps(trail.out)
    text = "\n".join(lines)
    assert f"start=2026-11-17T07:00:00Z end={first:%Y-%m-%dT%H:00:00Z}" in text
    assert f"baseline_initial > Trigger: at={first:%Y-%m-%dT%H:00:00Z}" in text
    assert f"from {first:%Y-%m-%dT%H:00:00Z} to 2026-11-20T06:00:00Z" in text and "max active runs 1" in text
    assert "no trailguard-generate.json" in demo.airflow_steps(tmp_path)[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
def test_the_demo_command_end_to_end(tmp_path: Path) -> None:
    """`trailguard demo` as a user runs it, on 9 days with 12 live hours: moto_server, the real DAGs,
    the local Slack. Exit 0, the three incidents fired and were posted, the summary's counts add up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TRAILGUARD_"))}
    root = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "trailguard", "demo", "--dir", str(root), "--days", "9", "--live-hours", "12"],
        env={**env, "PYTHONPATH": str(PROJECT_ROOT / "plugins")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{(root / 'demo.log').read_text()[-3000:]}"
    out = done.stdout
    assert out.count("\u2713 fired") == 3 and "\u2717 missed" not in out
    assert "Slack      3 message(s) received by the local receiver" in out
    assert "n/a" in out and "_n/a_" not in out  # Slack's _italic_ n/a rendered, not shown as underscores

    plan = demo.Plan(root, datetime.fromisoformat(json.loads((root / "trail" / MANIFEST).read_text())["end"]))
    alerts = demo.alert_rows(plan.state_url)
    assert sorted(json.dumps(a.key, sort_keys=True) for a in alerts) == sorted(
        json.dumps(k, sort_keys=True)
        for k in (
            {"country": "BR"},
            {"requesting_account_id": "999988887777", "requested_account_id": "271828182845"},
            {"requesting_account_id": "161803398874", "requested_account_id": "271828182845"},
        )
    )
    assert {a.status for a in alerts} == {"sent"}
    generated = json.loads((root / "trail" / MANIFEST).read_text())
    counts, late = demo.ledger_counts(plan.state_url), demo.delivered_from(root / "trail", plan.end)
    assert (counts.objects + late[0], counts.events + late[1]) == (generated["objects"], generated["records"])
    assert f"Ingested   {counts.events:,} events from {counts.objects:,} CloudTrail objects" in out
