"""The ``trailguard`` command as a user runs it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from builders import record, utc, write_log
from fake_slack import (  # ruff: ignore[unused-import] - the *_fixture names register pytest fixtures
    FakeSlack,
    fake_slack_fixture,
    slack_webhook_conn_fixture,
)
from test_detections import BR, A, C, T, World, assume_role, provision
from test_outbox import insert, rows
from trailguard.cli import main
from trailguard.settings import Settings
from trailguard.store import FAILED, PENDING, SENT, StateStore


def test_ingest_prints_a_summary_and_a_second_run_finds_nothing_new(tmp_path: Path, tg_env, capsys) -> None:
    write_log(tmp_path / "src", [record(), record()], utc(2026, 11, 20, 13, 5))
    assert main(["ingest", "--source", str(tmp_path / "src"), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["objects_listed"], first["records"], first["new_events"]) == (1, 2, 2)
    assert main(["ingest", "--source", str(tmp_path / "src")]) == 0
    text = capsys.readouterr().out
    assert "0 processed, 1 already done" in text
    assert "0 new" in text


def test_interval_needs_both_ends(tmp_path: Path, tg_env, capsys) -> None:
    assert main(["ingest", "--source", str(tmp_path), "--start", "2026-11-20T13:00Z"]) == 2
    assert "--start and --end go together" in capsys.readouterr().err


def test_unusable_sources_exit_non_zero_with_a_clear_message(tmp_path: Path, tg_env) -> None:
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing"): "no such folder",
        str(tmp_path / "empty"): "not a CloudTrail layout",
    }
    for source, message in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "trailguard", "ingest", "--source", source],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "plugins")},
        )
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr


# -- the detection commands ---------------------------------------------------------------------
def _json_lines(text: str) -> list[dict]:
    """Every stdout line is one JSON alert (anything else there would break a pipe to jq)."""
    return [json.loads(line) for line in text.splitlines()]


def _statuses(root: Path) -> list[str]:
    with sqlite3.connect(root / "state.db") as conn:
        return [status for (status,) in conn.execute("SELECT status FROM alerts ORDER BY id")]


@pytest.fixture
def world(tmp_path: Path, tg_env, monkeypatch: pytest.MonkeyPatch) -> World:
    """History and baselines in the lake and state store the TRAILGUARD_* variables point at."""
    monkeypatch.setenv("TRAILGUARD_ALERT_HORIZON_HOURS", str(24 * 365 * 20))  # post, do not digest
    w = World(tmp_path)
    w.history()
    w.add(provision(T - timedelta(hours=2), BR))
    return w


def test_detect_prints_alert_lines_and_posts_only_with_notify(
    world: World, capsys, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    assert main(["detect", "--at", T.isoformat()]) == 0
    [alert] = _json_lines(capsys.readouterr().out)
    assert (alert["detection"], alert["key"]) == (world.country.name, {"country": "BR"})
    assert fake_slack.posts() == []  # queued for the DAG's deliver task, not sent
    world.add(assume_role(A, C, T - timedelta(hours=1)))
    assert main(["detect", "--at", T.isoformat(), "--notify"]) == 0
    [alert] = _json_lines(capsys.readouterr().out)
    assert alert["key"] == {"requesting_account_id": A, "requested_account_id": C}
    assert len(fake_slack.posts()) == 2  # both pending alerts
    assert _statuses(world.source.parent) == ["sent", "sent"]


def test_replay_prints_json_lines_logs_on_stderr_and_sends_nothing(
    world: World, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    start, end = T - timedelta(hours=3), T + timedelta(hours=1)
    proc = subprocess.run(
        [sys.executable, "-m", "trailguard", "replay", "--start", start.isoformat(), "--end", end.isoformat()],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "plugins")},
    )
    assert proc.returncode == 0, proc.stderr
    [alert] = _json_lines(proc.stdout)
    assert (alert["key"], alert["fired_at"]) == ({"country": "BR"}, (T - timedelta(hours=1)).isoformat())
    assert "INFO trailguard: replay" in proc.stderr and "1 alerts" in proc.stderr
    assert fake_slack.posts() == []
    assert _statuses(world.source.parent) == ["replayed"]  # delivery never takes these


def test_replay_with_notify_posts_its_alerts(world: World, capsys, fake_slack: FakeSlack, slack_webhook_conn: str):
    assert main(["replay", "--start", (T - timedelta(hours=3)).isoformat(), "--end", T.isoformat(), "--notify"]) == 0
    assert [a["key"] for a in _json_lines(capsys.readouterr().out)] == [{"country": "BR"}]
    assert len(fake_slack.posts()) == 1
    assert _statuses(world.source.parent) == ["sent"]


def test_replay_refuses_to_rebuild_newer_baselines_unless_told(world: World, capsys) -> None:
    before = T - timedelta(days=2)  # the baselines were built at Nov 19 00:00, after this
    args = ["replay", "--start", before.isoformat(), "--end", T.isoformat(), "--baseline-days", "14"]
    assert main(args) == 2
    assert "newer than --start" in capsys.readouterr().err
    assert _statuses(world.source.parent) == []
    assert main([*args, "--overwrite-baselines"]) == 0
    assert [a["key"] for a in _json_lines(capsys.readouterr().out)] == [{"country": "BR"}]


def test_requeue_alerts_puts_failed_alerts_back_in_the_queue(tg_env, capsys) -> None:
    state = StateStore(Settings.from_env().db)
    failed, other_failed, sent = (insert(state, n, status=s) for n, s in ((1, FAILED), (2, FAILED), (3, SENT)))
    assert main(["requeue-alerts", "--id", str(failed)]) == 0
    assert "1 failed alert(s) back to pending" in capsys.readouterr().out
    assert [rows(state)[i]["status"] for i in (failed, other_failed, sent)] == [PENDING, FAILED, SENT]
    assert main(["requeue-alerts"]) == 0
    assert [rows(state)[i]["status"] for i in (failed, other_failed, sent)] == [PENDING, PENDING, SENT]
