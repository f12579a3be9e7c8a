"""The real DAGs, run with dag.test() in order over constructed history, against a fake Slack:
the alerts equal what ``replay`` computes over the same hours, each posted exactly once."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from builders import utc
from fake_slack import (  # ruff: ignore[unused-import] - the *_fixture names register pytest fixtures
    FakeSlack,
    fake_slack_fixture,
    slack_webhook_conn_fixture,
)
from test_detections import BR, A, C, World, assume_role, provision
from trailguard import store as st
from trailguard.detect import Engine
from trailguard.lake import Lake
from trailguard.replay import replay
from trailguard.store import StateStore

T0 = utc(2026, 11, 20, 9)  # baseline_initial runs here; then hourly ingest + detections
HOURS = 4


def _alerts(state: StateStore) -> list[tuple[str, str, str]]:
    with state.engine.connect() as conn:
        rows = conn.execute(st.alerts.select().order_by(st.alerts.c.id)).mappings().all()
    return [(r["detection_id"], r["key"], r["fired_at"].isoformat()) for r in rows]


@pytest.mark.e2e
def test_hourly_dag_runs_equal_replay_and_post_each_alert_once(
    dagbag, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_slack: FakeSlack, slack_webhook_conn: str
) -> None:
    (tmp_path / "world").mkdir()
    world = World(tmp_path / "world")
    world.history()  # ingests history through the library; the DAG runs below use their own state
    world.add(
        provision(T0 + timedelta(minutes=30), BR),
        assume_role(A, C, T0 + timedelta(hours=2, minutes=5)),
    )
    monkeypatch.setenv("TRAILGUARD_SOURCE", str(world.source))
    monkeypatch.setenv("TRAILGUARD_LAKE", str(tmp_path / "dag-lake"))
    monkeypatch.setenv("TRAILGUARD_DB", f"sqlite:///{tmp_path}/dag-state.db")
    monkeypatch.setenv("TRAILGUARD_WORKERS", "1")
    monkeypatch.setenv("TRAILGUARD_ALERT_HORIZON_HOURS", str(24 * 365 * 20))  # post, do not digest

    history = dagbag.get_dag("cloudtrail_ingest").test(
        logical_date=T0, run_conf={"start": "2026-10-01T00:00Z", "end": T0.isoformat()}
    )
    assert history.state == "success"
    initial = dagbag.get_dag("baseline_initial").test(run_conf={"at": T0.isoformat(), "lookback_days": 90})
    assert initial.state == "success"
    for hour in range(1, HOURS + 1):
        at = T0 + timedelta(hours=hour)
        # dag.test() keeps an earlier run_conf in the DAG's params: say the hourly run has no range.
        hourly = dagbag.get_dag("cloudtrail_ingest").test(logical_date=at, run_conf={"start": None, "end": None})
        assert hourly.state == "success"
        run = dagbag.get_dag("detections").test(logical_date=at)
        assert run.state == "success", at
        assert run.get_task_instance("deliver").state == "success"

    dag_state = StateStore(f"sqlite:///{tmp_path}/dag-state.db")
    from_dags = _alerts(dag_state)
    assert len(from_dags) == 2

    # Replay on the same lake, from a copy of the state with no detection state (the lake's
    # partition manifest lives in the state store, so the two travel together).
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
    assert _alerts(replay_state) == from_dags

    posts = fake_slack.posts()
    assert len(posts) == 2
    texts = [json.dumps(p.body) for p in posts]
    assert any("Previously Unseen Country" in t and "BR" in t for t in texts)
    assert any("Cross Account" in t and C in t for t in texts)
