"""The real DAGs, run with dag.test() in order over constructed history and across a midnight
(so baseline_update runs), against a fake Slack: the alerts equal, payload for payload, what
``replay`` computes over the same hours, and each is posted exactly once."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from builders import utc
from fake_slack import (  # ruff: ignore[unused-import] - the *_fixture names register pytest fixtures
    FakeSlack,
    fake_slack_fixture,
    slack_webhook_conn_fixture,
)
from test_detections import BR, RU, A, C, World, assume_role, provision
from trailguard import store as st
from trailguard.airflow_glue import ingest_run_date
from trailguard.detect import Engine
from trailguard.lake import Lake
from trailguard.replay import replay
from trailguard.store import StateStore

T0 = utc(2026, 11, 20, 21)  # baseline_initial runs here; then hourly ingest + detections
HOURS = 6  # 22:00 .. 03:00, across midnight
MIDNIGHT = utc(2026, 11, 21)


def _alerts(state: StateStore) -> list[tuple[str, str, str, str, dict]]:
    """Everything an alert is but its delivery status."""
    with state.engine.connect() as conn:
        rows = conn.execute(st.alerts.select().order_by(st.alerts.c.id)).mappings().all()
    return [
        (r["detection_id"], r["key"], r["first_seen"].isoformat(), r["fired_at"].isoformat(), json.loads(r["payload"]))
        for r in rows
    ]


def _run(dagbag, dag_id: str, **kwargs):
    run = dagbag.get_dag(dag_id).test(**kwargs)
    assert run.state == "success", (dag_id, kwargs)
    return run


@pytest.mark.e2e
def test_hourly_dag_runs_across_midnight_equal_replay_and_post_each_alert_once(
    dagbag, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    (tmp_path / "world").mkdir()
    world = World(tmp_path / "world")
    world.history()  # ingests history through the library; the DAG runs below use their own state
    world.add(
        provision(T0 + timedelta(minutes=30), BR),  # alerts at 22:00
        assume_role(A, C, T0 + timedelta(hours=2, minutes=40)),  # 23:40, delivered 23:50: alerts at 00:00
        provision(MIDNIGHT + timedelta(minutes=20), RU),  # alerts at 01:00, after the update
        provision(MIDNIGHT + timedelta(hours=1, minutes=30), BR),  # known by then: quiet
    )
    monkeypatch.setenv("TRAILGUARD_SOURCE", str(world.source))
    monkeypatch.setenv("TRAILGUARD_LAKE", str(tmp_path / "dag-lake"))
    monkeypatch.setenv("TRAILGUARD_DB", f"sqlite:///{tmp_path}/dag-state.db")
    monkeypatch.setenv("TRAILGUARD_WORKERS", "1")
    monkeypatch.setenv("TRAILGUARD_ALERT_HORIZON_HOURS", str(24 * 365 * 20))  # post, do not digest

    _run(dagbag, "cloudtrail_ingest", logical_date=T0, run_conf={"start": "2026-10-01T00:00Z", "end": T0.isoformat()})
    _run(dagbag, "baseline_initial", run_conf={"at": T0.isoformat(), "lookback_days": 90})
    for hour in range(1, HOURS + 1):
        at = T0 + timedelta(hours=hour)
        # dag.test() keeps an earlier run_conf in the DAG's params: say the hourly run has no range.
        _run(dagbag, "cloudtrail_ingest", logical_date=at, run_conf={"start": None, "end": None})
        run = _run(dagbag, "detections", logical_date=at)
        assert run.get_task_instance("deliver").state == "success"
        if at == MIDNIGHT:  # after that midnight's detections: the order must not matter
            update = _run(dagbag, "baseline_update", logical_date=at)
            assert update.get_task_instance("update").state == "success"

    dag_state = StateStore(f"sqlite:///{tmp_path}/dag-state.db")
    dag_engine = Engine(Lake(str(tmp_path / "dag-lake")), dag_state, world.engine.geo)
    assert {dag_engine.baseline_watermark(spec) for spec in world.specs.values()} == {MIDNIGHT}  # the update ran
    from_dags = _alerts(dag_state)
    assert [(json.loads(a[1]), a[3]) for a in from_dags] == [
        ({"country": "BR"}, (T0 + timedelta(hours=1)).isoformat()),
        ({"requested_account_id": C, "requesting_account_id": A}, MIDNIGHT.isoformat()),
        ({"country": "RU"}, (MIDNIGHT + timedelta(hours=1)).isoformat()),
    ]

    # Replay on the same lake, from a copy of the state with no detection state (the lake's
    # partition manifest and the ingest ledger live in the state store, so they travel together).
    with sqlite3.connect(tmp_path / "dag-state.db") as src, sqlite3.connect(tmp_path / "replay-state.db") as dst:
        src.backup(dst)  # a consistent copy, WAL included
    replay_state = StateStore(f"sqlite:///{tmp_path}/replay-state.db")
    with replay_state.begin() as conn:
        for table in (st.alerts, st.baselines, st.watermarks):
            conn.execute(table.delete())
    engine = Engine(Lake(str(tmp_path / "dag-lake")), replay_state, world.engine.geo)
    for spec in world.specs.values():
        engine.baseline_initial(spec, T0)
    list(replay(engine, list(world.specs.values()), T0, T0 + timedelta(hours=HOURS)))
    assert _alerts(replay_state) == from_dags  # whole payloads, rows and known countries included

    posts = fake_slack.posts()
    assert len(posts) == 3
    texts = [json.dumps(p.body) for p in posts]
    assert any("Previously Unseen Country" in t and "BR" in t for t in texts)
    assert any("Cross Account" in t and C in t for t in texts)


@pytest.mark.parametrize(
    ("logical_date", "interval", "run_after", "expected"),
    [
        # scheduled and backfill runs: logical date = interval start; the ingest of the same hour
        (T0, (T0, T0 + timedelta(hours=1)), T0 + timedelta(hours=1), T0),
        # the daily update of [Nov 20, Nov 21): the ingest of [23:00, 24:00) on Nov 20
        (utc(2026, 11, 20), (utc(2026, 11, 20), MIDNIGHT), MIDNIGHT, utc(2026, 11, 20, 23)),
        # manual, no logical date: T = run_after on the hour; the scheduled ingest of the hour before
        (None, (None, None), T0 + timedelta(minutes=27), T0 - timedelta(hours=1)),
        # triggered with a logical date (dag.test, the UI): the ingest triggered alike
        (MIDNIGHT, (utc(2026, 11, 20), MIDNIGHT), MIDNIGHT + timedelta(minutes=5), MIDNIGHT),
    ],
    ids=["scheduled-hourly", "scheduled-daily", "manual", "with-logical-date"],
)
def test_the_sensors_target_the_ingest_of_the_hour_ending_at_t(logical_date, interval, run_after, expected) -> None:
    context = {
        "dag_run": SimpleNamespace(logical_date=logical_date, run_after=run_after),
        "data_interval_start": interval[0],
        "data_interval_end": interval[1],
    }
    assert ingest_run_date(logical_date or run_after, **context) == expected


@pytest.mark.e2e
def test_a_manual_detections_run_waits_for_its_hours_ingest_not_forever(
    dagbag, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    """Triggered from the UI: no logical date, run_after = the click. T is that hour, and the sensor
    waits for the ingest run of the hour before it (the scheduled one's logical date)."""
    world = World(tmp_path)
    world.history()  # the lake, ledger and baselines (fresh enough for T0) the DAGs use here
    world.add(provision(T0 - timedelta(minutes=50), BR))
    monkeypatch.setenv("TRAILGUARD_SOURCE", str(world.source))
    monkeypatch.setenv("TRAILGUARD_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("TRAILGUARD_DB", f"sqlite:///{tmp_path}/state.db")
    monkeypatch.setenv("TRAILGUARD_WORKERS", "1")
    monkeypatch.setenv("TRAILGUARD_ALERT_HORIZON_HOURS", str(24 * 365 * 20))
    # The ingest run the sensor must find: the scheduler gives the ingest of [20:00, 21:00) the
    # logical date 20:00 (under dag.test() it covers the hour before; the ledger has it all anyway).
    _run(dagbag, "cloudtrail_ingest", logical_date=T0 - timedelta(hours=1), run_conf={"start": None, "end": None})
    detections = dagbag.get_dag("detections")
    monkeypatch.setattr(detections.get_task("wait_for_ingest"), "timeout", 60)  # fail, not hang, if it regresses
    run = _run(dagbag, "detections", logical_date=None, run_after=T0 + timedelta(minutes=27))
    assert run.get_task_instance("wait_for_ingest").state == "success"
    assert [(json.loads(a[1]), a[3]) for a in _alerts(world.state)] == [({"country": "BR"}, T0.isoformat())]
    assert len(fake_slack.posts()) == 1
