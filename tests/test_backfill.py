"""Backfill as users run it: ``airflow backfill create`` against a real scheduler gives the same
lake and alert ledger as hourly live runs over the same hours.

A real scheduler, because ``backfill create`` only writes queued DagRun rows: the scheduler runs
them (LocalExecutor), and in Airflow 3 every task talks to the api-server's Execution API. The
components run in their own AIRFLOW_HOME (SQLite); ``airflow dags reserialize`` serializes the
DAGs, so no dag-processor is needed. The live side is the hourly ``dag.test()`` sequence the
scheduler would produce, into a second lake and state store.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from builders import record, utc, write_log
from fake_slack import FakeSlack, fake_slack_fixture  # ruff: ignore[unused-import] - registers the fixture
from test_detections import BR, DE, GB, A, B, C, assume_role, iso, provision
from trailguard.detect import Engine
from trailguard.geoip import GeoIP
from trailguard.ingest import ingest
from trailguard.lake import Lake
from trailguard.settings import Settings
from trailguard.sources import LocalStore
from trailguard.specs import load_specs
from trailguard.store import StateStore

ROOT = Path(__file__).resolve().parents[1]
T0 = utc(2026, 11, 20, 9)  # baselines are built here; the range is the HOURS after it
HOURS = 4
BIN = Path(sys.executable).parent
READY_TIMEOUT = 120  # api-server health, on a busy 2-core machine
RUNS_TIMEOUT = 150  # every backfill run of one DAG finished
CLI_TIMEOUT = 120


# -- the CloudTrail ---------------------------------------------------------------------------------
def write_trail(source: Path) -> set[str]:
    """History (18 days of office provisioning from DE and A -> B role use), then the range: routine
    reads, a late delivery, a duplicate delivery, a BR provisioning and a first A -> C AssumeRole.
    Returns every event id written."""
    written: set[str] = set()

    def deliver(rec: dict, at: datetime) -> None:
        write_log(source, [rec], at, account=A)
        written.add(rec["eventID"])

    for day in range(18):
        at = utc(2026, 11, 1, 9) + timedelta(days=day)
        deliver(provision(at, DE), at + timedelta(minutes=10))
        deliver(assume_role(A, B, at + timedelta(hours=1)), at + timedelta(hours=1, minutes=10))
    for hour in range(HOURS):
        for minute in (7, 29, 48):
            at = T0 + timedelta(hours=hour, minutes=minute)
            deliver(record(eventTime=iso(at), sourceIPAddress=GB), at + timedelta(minutes=8))
    late = record(eventTime=iso(T0 + timedelta(hours=1, minutes=15)), eventName="ListBuckets")
    deliver(late, T0 + timedelta(hours=2, minutes=40))  # found by the next runs' look-back
    twice = record(eventTime=iso(T0 + timedelta(hours=2, minutes=1)), eventName="GetBucketAcl")
    deliver(twice, T0 + timedelta(hours=2, minutes=10))
    deliver(twice, T0 + timedelta(hours=3, minutes=20))  # CloudTrail may deliver an event twice
    deliver(provision(T0 + timedelta(minutes=30), BR), T0 + timedelta(minutes=40))
    deliver(assume_role(A, C, T0 + timedelta(hours=2, minutes=5)), T0 + timedelta(hours=2, minutes=15))
    return written


@dataclass(frozen=True)
class Side:
    """One lake and state store, prepared up to T0 the same way for both sides."""

    lake: Path
    db: Path

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def prepare(self, source: Path) -> None:
        lake, state = Lake(str(self.lake)), StateStore(self.url)
        ingest(LocalStore(source), lake, state, utc(2026, 10, 1), T0)
        engine = Engine(lake, state, GeoIP(Settings().geoip_db))
        for spec in load_specs(Settings().detections_dir):
            engine.baseline_initial(spec, T0)
        state.close()

    def env(self, source: Path) -> dict[str, str]:
        return {
            "TRAILGUARD_SOURCE": str(source),
            "TRAILGUARD_LAKE": str(self.lake),
            "TRAILGUARD_DB": self.url,
            "TRAILGUARD_WORKERS": "1",  # a parser pool inside a real task re-runs the `airflow` script
        }

    def event_ids(self) -> tuple[int, list[str]]:
        """(rows, sorted distinct event ids) of the lake."""
        files = f"{self.lake}/events/*/*/*.parquet"
        with duckdb.connect() as con:
            rows = con.execute(f"SELECT count(*) FROM read_parquet('{files}')").fetchone()[0]
            ids = [
                r[0]
                for r in con.execute(f"SELECT DISTINCT event_id FROM read_parquet('{files}') ORDER BY 1").fetchall()
            ]
        return rows, ids

    def alerts(self) -> list[tuple]:
        with sqlite3.connect(self.db) as con:
            return con.execute(
                "SELECT detection_id, key, first_seen, fired_at, status FROM alerts ORDER BY detection_id, key"
            ).fetchall()


# -- a real scheduler -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Airflow:
    """api-server and scheduler in their own home; the ``airflow`` CLI and REST against them."""

    home: Path
    env: dict[str, str]
    port: int
    procs: list[subprocess.Popen]
    outputs: list = field(default_factory=list)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "airflow"), *args], env=self.env, capture_output=True, text=True, timeout=CLI_TIMEOUT
        )
        assert done.returncode == 0, f"airflow {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def rest(self, path: str, body: dict | None = None, method: str = "GET") -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/v2{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # no token: ALL_ADMINS
            return json.loads(response.read())

    def start(self, name: str, *args: str) -> None:
        log = open(self.home / f"{name}.log", "wb")  # ruff: ignore[open-file-with-context-handler] - closed by stop()
        self.outputs.append(log)
        self.procs.append(
            subprocess.Popen(
                [str(BIN / "airflow"), *args], env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        )

    def unpause(self, dag_id: str, attempts: int = 5) -> None:
        """Unpause through REST; again if SQLite was busy (unpausing twice is harmless)."""
        for attempt in range(attempts):
            try:
                assert self.rest(f"/dags/{dag_id}", {"is_paused": False}, "PATCH")["is_paused"] is False
                return
            except urllib.error.HTTPError:
                if attempt == attempts - 1:
                    raise
                time.sleep(1)

    def start_components(self) -> None:
        """The api-server (tasks report through its Execution API) and the scheduler."""
        self.start("api-server", "api-server", "--port", str(self.port), "--host", "127.0.0.1")
        self.start("scheduler", "scheduler")
        self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in self.procs), self.logs()
            try:
                if self.rest("/monitor/health")["metadatabase"]["status"] == "healthy":
                    return
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"api-server not healthy within {READY_TIMEOUT} s\n{self.logs()}")

    def backfill_runs(self, dag_id: str) -> list[dict]:
        runs = self.rest(f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
        return [r for r in runs if r["run_type"] == "backfill"]

    def wait_for_backfill(self, dag_id: str, count: int) -> list[dict]:
        deadline = time.monotonic() + RUNS_TIMEOUT
        while time.monotonic() < deadline:
            runs = self.backfill_runs(dag_id)
            if len(runs) == count and all(r["state"] in ("success", "failed") for r in runs):
                return runs
            time.sleep(2)
        raise AssertionError(f"{dag_id}: backfill not done in {RUNS_TIMEOUT} s: {self.backfill_runs(dag_id)}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in self.home.glob("*.log"))

    def stop(self) -> None:
        """SIGINT to each process group (what Ctrl-C does), then SIGKILL whatever is left."""
        for proc in self.procs:
            _signal_group(proc, signal.SIGINT)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)  # also reaps workers the main process left behind
            proc.wait(timeout=10)
        for log in self.outputs:
            log.close()


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the pid


def _airflow_env(home: Path, port: int, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TRAILGUARD_"))}
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": "trailguard-backfill-test",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            **extra,
        }
    )
    return env


@pytest.fixture
def airflow_factory(tmp_path: Path) -> Iterator:
    """A migrated AIRFLOW_HOME whose components the test starts; they are always stopped."""
    made: list[Airflow] = []

    def make(extra: dict[str, str]) -> Airflow:
        home = tmp_path / "airflow-home"
        home.mkdir()
        port = _free_port()
        airflow = Airflow(home, _airflow_env(home, port, extra), port, [])
        made.append(airflow)
        airflow.cli("db", "migrate")
        return airflow

    yield make
    for airflow in made:
        airflow.stop()


# -- the live side ----------------------------------------------------------------------------------
def run_live(dagbag, side: Side, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the scheduler does each hour when it keeps up: ingest the hour, then detections."""
    for name, value in side.env(source).items():
        monkeypatch.setenv(name, value)
    for hour in range(1, HOURS + 1):
        at = T0 + timedelta(hours=hour)
        ingest_run = dagbag.get_dag("cloudtrail_ingest").test(logical_date=at, run_conf={"start": None, "end": None})
        assert ingest_run.state == "success", at
        assert dagbag.get_dag("detections").test(logical_date=at).state == "success", at


@pytest.mark.e2e
def test_backfill_equals_hourly_live_runs(
    dagbag, airflow_factory, fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    written = write_trail(source)
    backfilled = Side(tmp_path / "backfill" / "lake", tmp_path / "backfill" / "state.db")
    live = Side(tmp_path / "live" / "lake", tmp_path / "live" / "state.db")
    for side in (backfilled, live):
        side.prepare(source)
    slack_conn = json.dumps({"conn_type": "slackwebhook", "password": fake_slack.webhook_url})
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", slack_conn)

    airflow = airflow_factory({**backfilled.env(source), "AIRFLOW_CONN_SLACK_ALERTS": slack_conn})
    # The CLI writes happen before the scheduler starts: with SQLite, a CLI write that meets the
    # scheduler's fails with "database is locked" and leaves a half-made backfill behind.
    airflow.cli("dags", "reserialize")
    first, last = T0.isoformat(), (T0 + timedelta(hours=HOURS - 1)).isoformat()  # logical dates = interval starts
    airflow.cli("backfill", "create", "--dag-id", "cloudtrail_ingest", "--from-date", first, "--to-date", last)
    # Detections one run at a time, in order: each key alerts in the first hour that shows it.
    airflow.cli(
        "backfill",
        "create",
        "--dag-id",
        "detections",
        "--from-date",
        first,
        "--to-date",
        last,
        "--max-active-runs",
        "1",
    )
    airflow.start_components()
    # Backfill runs of a paused DAG stay queued. Detections are unpaused once the hours are
    # ingested, so their sensors find the ingest done instead of waiting a 60 s poke interval.
    for dag_id in ("cloudtrail_ingest", "detections"):
        airflow.unpause(dag_id)
        runs = airflow.wait_for_backfill(dag_id, HOURS)
        assert {r["state"] for r in runs} == {"success"}, airflow.logs()

    run_live(dagbag, live, source, monkeypatch)

    rows, ids = backfilled.event_ids()
    assert (rows, ids) == live.event_ids()
    assert rows == len(ids) == len(written) and set(ids) == written  # every event once, the duplicate too
    alerts = backfilled.alerts()
    assert alerts == live.alerts()
    countries = [json.loads(a[1]).get("country") for a in alerts]
    pairs = [json.loads(a[1]).get("requested_account_id") for a in alerts]
    assert len(alerts) == 2 and "BR" in countries and C in pairs
    assert {a[4] for a in alerts} == {"digested"}  # historical intervals: one digest, not one post each
