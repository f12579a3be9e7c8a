"""Backfill as users run it, against a real scheduler: the history ingested by one range run of
``cloudtrail_ingest``, ``airflow backfill create`` for ``cloudtrail_ingest`` over the range, then a
``baseline_initial`` run, then ``airflow backfill create`` for ``detections``. It gives the same lake
and alert ledger as hourly live runs over the same hours, and Slack gets digests, not one post per alert.

A real scheduler, because ``backfill create`` only writes queued DagRun rows: the scheduler runs
them (LocalExecutor), and in Airflow 3 every task talks to the api-server's Execution API. The
components run in their own AIRFLOW_HOME (SQLite); ``airflow dags reserialize`` serializes the
DAGs, so no dag-processor is needed. The live side is the same DAGs through ``dag.test()``: the
history run, baseline_initial, then the hourly sequence the scheduler would produce, into a second
lake and state store.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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
from fake_slack import WEBHOOK_PATH, FakeSlack, fake_slack_fixture  # ruff: ignore[unused-import] - the fixture
from test_detections import BR, DE, GB, A, B, C, assume_role, iso, provision

ROOT = Path(__file__).resolve().parents[1]
HISTORY_START = utc(2026, 10, 1)  # the history (one range run of cloudtrail_ingest) is [HISTORY_START, T0)
T0 = utc(2026, 11, 20, 9)  # baselines are built here; the range is the HOURS after it
DIGEST = re.compile(r"(\d+) alerts? from historical intervals")
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


HISTORY_CONF = {"start": HISTORY_START.isoformat(), "end": T0.isoformat()}  # cloudtrail_ingest's range params
BASELINE_CONF = {"at": T0.isoformat(), "lookback_days": 90}


@dataclass(frozen=True)
class Side:
    """One lake and state store, filled by the DAGs (one side backfilled, the other live)."""

    lake: Path
    db: Path

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def env(self, source: Path) -> dict[str, str]:
        return {"TRAILGUARD_SOURCE": str(source), "TRAILGUARD_LAKE": str(self.lake), "TRAILGUARD_DB": self.url}

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

    def runs(self, dag_id: str) -> list[dict]:
        return self.rest(f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]

    def run_to_the_end(self, dag_id: str, count: int) -> list[dict]:
        """Unpause ``dag_id`` and wait until its ``count`` queued runs (backfill or manual) have ended."""
        self.unpause(dag_id)
        deadline = time.monotonic() + RUNS_TIMEOUT
        while time.monotonic() < deadline:
            runs = self.runs(dag_id)
            if len(runs) == count and all(r["state"] in ("success", "failed") for r in runs):
                return runs
            time.sleep(2)
        raise AssertionError(f"{dag_id}: runs not done in {RUNS_TIMEOUT} s: {self.runs(dag_id)}")

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
            # Only the runs the test creates: no scheduled run of the current hour beside them.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
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
    """The same DAGs when the scheduler keeps up: the history, the baseline, then each hour's
    ingest and detections."""
    for name, value in side.env(source).items():
        monkeypatch.setenv(name, value)
    history = dagbag.get_dag("cloudtrail_ingest").test(logical_date=T0, run_conf=HISTORY_CONF)
    assert history.state == "success"
    assert dagbag.get_dag("baseline_initial").test(run_conf=BASELINE_CONF).state == "success"
    for hour in range(1, HOURS + 1):
        at = T0 + timedelta(hours=hour)
        ingest_run = dagbag.get_dag("cloudtrail_ingest").test(logical_date=at, run_conf={"start": None, "end": None})
        assert ingest_run.state == "success", at
        assert dagbag.get_dag("detections").test(logical_date=at).state == "success", at


def digested_alerts(fake_slack: FakeSlack) -> tuple[int, list[str]]:
    """(alerts the digests announced, every message's text) of what reached the alerts webhook."""
    texts = [json.dumps(p.body) for p in fake_slack.posts(WEBHOOK_PATH) if p.delivered and p.body]
    counts = [int(m[1]) for m in (DIGEST.search(t) for t in texts) if m]
    return sum(counts), texts


@pytest.mark.e2e
def test_backfill_equals_hourly_live_runs(
    dagbag, airflow_factory, fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src"
    written = write_trail(source)
    backfilled = Side(tmp_path / "backfill" / "lake", tmp_path / "backfill" / "state.db")
    live = Side(tmp_path / "live" / "lake", tmp_path / "live" / "state.db")
    slack_conn = json.dumps({"conn_type": "slackwebhook", "password": fake_slack.webhook_url})
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", slack_conn)

    airflow = airflow_factory({**backfilled.env(source), "AIRFLOW_CONN_SLACK_ALERTS": slack_conn})
    # The CLI writes happen before the scheduler starts: with SQLite, a CLI write that meets the
    # scheduler's fails with "database is locked" and leaves a half-made backfill behind. Runs of
    # paused DAGs stay queued, so unpausing one DAG at a time gives the order: ingest, baseline,
    # detections.
    airflow.cli("dags", "reserialize")
    first, last = T0.isoformat(), (T0 + timedelta(hours=HOURS - 1)).isoformat()  # logical dates = interval starts
    airflow.cli("dags", "trigger", "cloudtrail_ingest", "--conf", json.dumps(HISTORY_CONF))
    airflow.cli("backfill", "create", "--dag-id", "cloudtrail_ingest", "--from-date", first, "--to-date", last)
    airflow.cli("dags", "trigger", "baseline_initial", "--conf", json.dumps(BASELINE_CONF))
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
    for dag_id, count in (("cloudtrail_ingest", 1 + HOURS), ("baseline_initial", 1), ("detections", HOURS)):
        runs = airflow.run_to_the_end(dag_id, count)
        assert {r["state"] for r in runs} == {"success"}, airflow.logs()
    assert {r["run_type"] for r in airflow.runs("detections")} == {"backfill"}

    alerts = backfilled.alerts()
    announced, texts = digested_alerts(fake_slack)
    assert texts and announced == len(alerts) == len(texts)  # one digest per hour that fired, nothing else
    assert any("BR" in t for t in texts) and any(C in t for t in texts)

    run_live(dagbag, live, source, monkeypatch)

    rows, ids = backfilled.event_ids()
    assert (rows, ids) == live.event_ids()
    assert rows == len(ids) == len(written) and set(ids) == written  # every event once, the duplicate too
    assert alerts == live.alerts()
    countries = [json.loads(a[1]).get("country") for a in alerts]
    pairs = [json.loads(a[1]).get("requested_account_id") for a in alerts]
    assert len(alerts) == 2 and "BR" in countries and C in pairs
    assert {a[4] for a in alerts} == {"digested"}  # historical intervals: one digest, not one post each
