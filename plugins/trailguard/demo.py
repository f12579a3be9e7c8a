"""``trailguard demo``: the whole pipeline on a generated month, on this machine, in a few minutes.

Why a command and not a script of shortcuts: it has to work on a fresh machine with no cloud
account and no configuration, yet run the code a deployment runs. CloudTrail objects sit in S3
(``moto_server`` on 127.0.0.1), Airflow runs the real DAGs (``dag.test`` in a throw-away
AIRFLOW_HOME), and alerts go through the real Slack delivery, either to the user's own
connection or to a local receiver whose messages are printed. Airflow's logging goes to a file
so that the terminal tells the story.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, TextIO

from trailguard.generate import MANIFEST, OUTSIDE_ACCOUNT, Incident, Trail, generate_trail, last_full_hour
from trailguard.settings import PROJECT_ROOT
from trailguard.store import SENT

DEFAULT_DAYS = 30  # a month: ~8,200 objects, about 2 minutes on 2 cores (README, "What the demo shows")
DEFAULT_EVENTS_PER_HOUR = 10  # a quiet organisation: ~270 objects a day instead of ~1,200
MIN_DAYS = 9  # the detections' 7-day warm-up plus the 2 live days
LIVE_HOURS = 48  # the incidents all fall in the last 2 days
MIN_LIVE_HOURS = 4  # the three incidents need a few hours between them
DELIVERY_STAMP = re.compile(r"_(\d{8}T\d{4}Z)_[^/_]+\.json\.gz$")
BUCKET = "trailguard-demo-cloudtrail"
WEBHOOK_PATH = "/services/TDEMO/BDEMO/trailguard-demo"
UPLOAD_THREADS = 16
KEEP_ENV = (
    "TRAILGUARD_SLACK_CONN_ID",
    "TRAILGUARD_OPS_SLACK_CONN_ID",
    "TRAILGUARD_SLACK_TIMEOUT",
    "TRAILGUARD_SLACK_CHANNEL",
)
# rich's live displays would otherwise take over sys.stdout/sys.stderr and show Airflow's logs.
NO_REDIRECT = {"redirect_stdout": False, "redirect_stderr": False}
SEVERITY_BORDERS = {":red_circle:": "red", ":large_orange_circle:": "dark_orange", ":large_yellow_circle:": "yellow"}
INCIDENT_TITLES = {
    "new_country_provisioning": "new-country provisioning",
    "outside_account_assume_role": "an outside account assumes a role",
    "role_chaining_new_account": "role chaining into a new account",
}


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its log is."""


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What the demo generates and where it puts things (everything under ``root``)."""

    root: Path
    end: datetime
    days: int = DEFAULT_DAYS
    events_per_hour: int = DEFAULT_EVENTS_PER_HOUR
    live_hours: int = LIVE_HOURS

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)

    @property
    def live_start(self) -> datetime:
        """Where the history ingest stops and hour-by-hour operation begins."""
        return self.end - timedelta(hours=self.live_hours)

    @property
    def hours(self) -> list[datetime]:
        """The data-interval ends of the hourly runs, as the scheduler would produce them."""
        return [self.live_start + timedelta(hours=h) for h in range(1, self.live_hours + 1)]

    @property
    def trail(self) -> Path:
        return self.root / "trail"

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def state_url(self) -> str:
        return f"sqlite:///{self.root / 'state.db'}"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def log(self) -> Path:
        return self.root / "demo.log"


def make_plan(
    root: Path,
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
    events_per_hour: int = DEFAULT_EVENTS_PER_HOUR,
    live_hours: int = LIVE_HOURS,
) -> Plan:
    """A plan ending at the last full hour, so the alerts look like today's."""
    if days < MIN_DAYS:
        raise ValueError(f"--days must be at least {MIN_DAYS} (7 days of warm-up plus the 2 live days)")
    if not MIN_LIVE_HOURS <= live_hours <= LIVE_HOURS:
        raise ValueError(f"--live-hours must be between {MIN_LIVE_HOURS} and {LIVE_HOURS}")
    if events_per_hour < 0:
        raise ValueError("--events-per-hour must not be negative")
    return Plan(root.resolve(), last_full_hour(now), days, events_per_hour, live_hours)


def reset_dirs(plan: Plan) -> None:
    """Remove what an earlier demo left (only the paths this module creates)."""
    for path in (plan.trail, plan.lake, plan.airflow_home, plan.root / "replay"):
        shutil.rmtree(path, ignore_errors=True)
    for path in (plan.root / "state.db", plan.log):
        path.unlink(missing_ok=True)
    plan.root.mkdir(parents=True, exist_ok=True)


def generate_month(plan: Plan) -> Trail:
    """The demo org's CloudTrail for the plan's days, the three incidents in its live hours."""
    return generate_trail(
        plan.trail, plan.days, plan.end, events_per_hour=plan.events_per_hour, incident_hours=plan.live_hours
    )


def delivered_from(trail: Path, at: datetime) -> tuple[int, int]:
    """(objects, records) CloudTrail delivers at or after ``at``: an ingest up to ``at`` cannot see them."""
    stamp = f"{at:%Y%m%dT%H%MZ}"
    late = [p for p in trail.rglob("*.json.gz") if (m := DELIVERY_STAMP.search(p.name)) and m[1] >= stamp]
    return len(late), sum(len(json.loads(gzip.decompress(p.read_bytes()))["Records"]) for p in late)


# -- terminal and log --------------------------------------------------------------------------
@contextmanager
def terminal_and_log(log_path: Path) -> Generator[TextIO, None, None]:
    """Point file descriptors 1 and 2 at the log and yield a stream to the real terminal.

    Descriptors, not ``sys.stdout``: Airflow's task runner, structlog and warnings
    write to them directly, and all of that belongs in the log.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            with suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


# -- S3 on 127.0.0.1 ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def moto_executable() -> str:
    """``moto_server`` beside this Python (the venv's bin), else on PATH."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if not exe:
        raise DemoError("moto_server is not installed (it comes with moto[server] in requirements.txt)")
    return exe


@dataclass(frozen=True)
class Moto:
    endpoint: str
    proc: subprocess.Popen

    def stop(self) -> None:
        _stop(self.proc)


@contextmanager
def moto_server(log: IO[bytes] | int = subprocess.DEVNULL, timeout: float = 30.0) -> Generator[Moto, None, None]:
    """A moto S3 endpoint for the duration of the block; stopped however the block ends."""
    port = free_port()
    proc = subprocess.Popen([moto_executable(), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    try:
        _wait_for_port(port, proc, timeout)
        yield Moto(f"http://127.0.0.1:{port}", proc)
    finally:
        _stop(proc)


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"moto_server exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise DemoError(f"moto_server did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    """TERM, then KILL if it lingers; waiting reaps it so no zombie is left."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def s3_client(endpoint: str, pool: int = UPLOAD_THREADS) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(max_pool_connections=pool),
    )


def upload(
    endpoint: str,
    bucket: str,
    folder: Path,
    threads: int = UPLOAD_THREADS,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Create ``bucket`` and put every delivery file under ``folder`` at its CloudTrail key."""
    client = s3_client(endpoint, threads)
    client.create_bucket(Bucket=bucket)
    files = sorted(folder.rglob("*.json.gz"))
    put = partial(_put, client, bucket, folder)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="upload")
    try:
        futures = [pool.submit(put, path) for path in files]
        for done, future in enumerate(as_completed(futures), 1):
            future.result()
            if progress:
                progress(done, len(files))
    finally:  # Ctrl-C: drop what has not started instead of finishing thousands of puts
        pool.shutdown(wait=True, cancel_futures=True)
    return len(files)


def _put(client: Any, bucket: str, root: Path, path: Path) -> None:
    client.put_object(Bucket=bucket, Key=path.relative_to(root).as_posix(), Body=path.read_bytes())


# -- the environment ---------------------------------------------------------------------------
def airflow_env(plan: Plan) -> dict[str, str]:
    """Airflow's configuration: a throw-away home under the plan's root, this project's DAGs."""
    home = plan.airflow_home
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }


def pipeline_env(plan: Plan, endpoint: str, slack_url: str | None, bucket: str = BUCKET) -> dict[str, str]:
    """trailguard's settings and the connections the DAGs use: S3 is moto, Slack the receiver."""
    aws = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"region_name": "us-east-1", "endpoint_url": endpoint, "config_kwargs": {"max_pool_connections": 32}},
    }
    env = {
        "TRAILGUARD_SOURCE": f"s3://{bucket}",
        "TRAILGUARD_LAKE": str(plan.lake),
        "TRAILGUARD_DB": plan.state_url,
        "TRAILGUARD_AWS_CONN_ID": "aws_default",
        "TRAILGUARD_ALERT_HORIZON_HOURS": str(plan.live_hours + 24),  # post each demo alert, no digest
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    if slack_url:
        env[conn_env_name(slack_conn_id())] = json.dumps({"conn_type": "slackwebhook", "password": slack_url})
    return env


def apply_env(env: dict[str, str]) -> None:
    """Make this process hermetic, then apply ``env``.

    Dropped: other trailguard settings, Airflow configuration (``resetdb`` must only ever see the
    throw-away database) and AWS profile/endpoint variables (the demo must never reach a real
    account). Kept: the user's Slack connection settings.
    """
    for name in list(os.environ):
        drop_trailguard = name.startswith("TRAILGUARD_") and name not in KEEP_ENV
        drop_airflow = name.startswith("AIRFLOW__") or name == "AIRFLOW_CONFIG"
        drop_aws = name in ("AWS_PROFILE", "AWS_SESSION_TOKEN") or name.startswith("AWS_ENDPOINT_URL")
        if drop_trailguard or drop_airflow or drop_aws:
            del os.environ[name]
    os.environ.update(env)


def slack_conn_id() -> str:
    return os.environ.get("TRAILGUARD_SLACK_CONN_ID") or "slack_alerts"


def conn_env_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def users_slack() -> str | None:
    """The alert connection id when the user has configured one in the environment."""
    conn_id = slack_conn_id()
    return conn_id if os.environ.get(conn_env_name(conn_id)) else None


# -- a local Slack -----------------------------------------------------------------------------
class SlackReceiver:
    """An incoming-webhook endpoint on 127.0.0.1 that keeps what it is sent."""

    def __init__(self, port: int = 0) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self.received))
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="slack-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{WEBHOOK_PATH}"

    def __enter__(self) -> SlackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def drain(self) -> list[dict[str, Any]]:
        """The messages received since the last call."""
        out = []
        while True:
            try:
                out.append(self.received.get_nowait())
            except queue.Empty:
                return out


def _handler(received: queue.Queue[dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                message = json.loads(body)
            except ValueError:
                message = None
            ok = self.path == WEBHOOK_PATH and isinstance(message, dict)
            if ok:
                received.put(message)
            reply = b"ok" if ok else b"invalid_payload"
            self.send_response(200 if ok else 400)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the terminal shows the messages, not the requests

    return Handler


# -- rendering Block Kit -----------------------------------------------------------------------
_MRKDWN = re.compile(
    r"```(?P<block>.*?)```|`(?P<code>[^`\n]*)`|\*(?P<bold>[^*\n]+)\*"
    r"|(?<!\w)_(?P<italic>[^_\n]+)_(?!\w)"  # Slack: _italic_ only at word edges, not inside snake_case
    r"|<(?P<url>[^>|\s]+)(?:\|(?P<label>[^>]*))?>",
    re.S,
)

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def mrkdwn(text: str) -> Any:
    """Slack mrkdwn as rich Text. Built span by span, never as rich markup: the values come
    from CloudTrail (attacker-controlled) and must not be able to style the terminal."""
    from rich.style import Style
    from rich.text import Text

    text = _CONTROL.sub("", text)  # no terminal escape sequences, whatever the sender sent
    out = Text()
    pos = 0
    for m in _MRKDWN.finditer(text):
        out.append(_plain(text[pos : m.start()]))
        if m["block"] is not None:
            out.append("\n" + html.unescape(m["block"]).strip("\n") + "\n", style="green")
        elif m["code"] is not None:
            out.append(html.unescape(m["code"]), style="cyan")
        elif m["bold"] is not None:
            out.append(_plain(m["bold"]), style="bold")
        elif m["italic"] is not None:
            out.append(_plain(m["italic"]), style="italic")
        else:
            url = html.unescape(m["url"])
            out.append(html.unescape(m["label"] or url), style=Style(underline=True, link=url))
        pos = m.end()
    out.append(_plain(text[pos:]))
    return out


def _plain(text: str) -> str:
    """Entities decoded, ``:emoji:`` codes drawn, block quotes marked."""
    from rich.emoji import Emoji

    text = re.sub(r"(^|\n)>", "\\1\u258c ", text)
    return Emoji.replace(html.unescape(text).replace(":large_", ":"))  # Slack's :large_orange_circle:


def render_message(message: dict[str, Any]) -> Any:
    """One Slack message (header, sections, fields, context) as a terminal panel."""
    from rich.console import Group
    from rich.panel import Panel

    blocks = message.get("blocks") or []
    title = next((b["text"]["text"] for b in blocks if b.get("type") == "header"), "")
    parts = [_render_block(b) for b in blocks if b.get("type") != "header"]
    body = Group(*[p for p in parts if p is not None]) if parts else mrkdwn(str(message.get("text") or ""))
    border = next((style for code, style in SEVERITY_BORDERS.items() if code in title), "blue")
    return Panel(body, title=mrkdwn(title) if title else None, title_align="left", border_style=border)


def _render_block(block: dict[str, Any]) -> Any:
    from rich.table import Table
    from rich.text import Text

    kind = block.get("type")
    if kind == "section" and block.get("fields"):
        grid = Table.grid(padding=(0, 3))
        grid.add_column(ratio=1)
        grid.add_column(ratio=1)
        cells = [mrkdwn(f.get("text", "")) for f in block["fields"]]
        for i in range(0, len(cells), 2):
            grid.add_row(*cells[i : i + 2])
        return grid
    if kind == "section":
        return mrkdwn((block.get("text") or {}).get("text", ""))
    if kind == "context":
        line = Text(" \u00b7 ", style="dim").join(mrkdwn(e.get("text", "")) for e in block.get("elements", []))
        line.stylize("dim")
        return line
    return None


# -- running the DAGs --------------------------------------------------------------------------
def load_dags() -> Any:
    """Airflow's metadata tables (``dag.test`` needs them) and this project's DAGs."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.resetdb()
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise DemoError(f"DAG import errors: {bag.import_errors}")
    return bag


def _check(run: Any, what: str, log: Path) -> Any:
    if str(run.state) != "success":
        raise DemoError(f"{what} ended {run.state}; the task logs are in {log}")
    return run


def ingest_history(bag: Any, plan: Plan) -> None:
    """One manual cloudtrail_ingest over everything before the live hours (the UI's range params)."""
    conf = {"start": plan.start.isoformat(), "end": plan.live_start.isoformat()}
    run = bag.get_dag("cloudtrail_ingest").test(logical_date=plan.live_start, run_conf=conf)
    _check(run, "cloudtrail_ingest (history)", plan.log)


def build_baselines(bag: Any, plan: Plan) -> None:
    conf = {"at": plan.live_start.isoformat(), "lookback_days": 90}
    _check(bag.get_dag("baseline_initial").test(run_conf=conf), "baseline_initial", plan.log)


def run_hour(bag: Any, at: datetime, log: Path) -> None:
    """What the scheduler does each hour: ingest the hour, then evaluate and deliver."""
    # dag.test() keeps an earlier run_conf in the DAG's params: say this run has no range.
    ingest = bag.get_dag("cloudtrail_ingest").test(logical_date=at, run_conf={"start": None, "end": None})
    _check(ingest, f"cloudtrail_ingest at {at:%Y-%m-%d %H:%M}", log)
    detections = _check(bag.get_dag("detections").test(logical_date=at), f"detections at {at:%Y-%m-%d %H:%M}", log)
    deliver = detections.get_task_instance("deliver")
    if deliver is None or str(deliver.state) != "success":
        raise DemoError(f"detections at {at:%Y-%m-%d %H:%M}: Slack delivery did not succeed; see {log}")


# -- what happened -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Counts:
    objects: int
    events: int


@dataclass(frozen=True)
class AlertRow:
    detection_id: str
    detection: str
    key: dict[str, Any]
    fired_at: datetime
    status: str


@dataclass
class Outcome:
    """The numbers the summary prints (and the tests check)."""

    counts: Counts
    alerts: list[AlertRow]
    incidents: list[Incident]
    messages: list[dict[str, Any]] = field(default_factory=list)
    own_slack: str | None = None
    not_yet_delivered: Counts = Counts(0, 0)  # generated, but CloudTrail delivers it after the last run

    @property
    def fired(self) -> dict[str, AlertRow | None]:
        return match_incidents(self.incidents, self.alerts)


def ledger_counts(state_url: str) -> Counts:
    """Objects processed and events stored, from the ingest ledger."""
    import sqlalchemy as sa

    from trailguard.store import StateStore, objects

    state = StateStore(state_url)
    try:
        with state.engine.connect() as conn:
            query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(objects.c.events), 0))
            n, events = conn.execute(query).one()
        return Counts(int(n), int(events))
    finally:
        state.close()


def alert_rows(state_url: str) -> list[AlertRow]:
    from trailguard.store import StateStore, alerts

    state = StateStore(state_url)
    try:
        with state.engine.connect() as conn:
            rows = conn.execute(alerts.select().order_by(alerts.c.fired_at, alerts.c.id)).mappings().all()
    finally:
        state.close()
    return [
        AlertRow(
            r["detection_id"], json.loads(r["payload"])["detection"], json.loads(r["key"]), r["fired_at"], r["status"]
        )
        for r in rows
    ]


def expected_key(incident: Incident) -> dict[str, str]:
    """The alert key each incident should produce (country, or requesting -> requested account)."""
    if incident.kind == "new_country_provisioning":
        return {"country": incident.country}
    requested = incident.role_arn.split(":")[4]
    requesting = OUTSIDE_ACCOUNT if incident.kind == "outside_account_assume_role" else incident.actor.split(":")[4]
    return {"requesting_account_id": requesting, "requested_account_id": requested}


def match_incidents(incidents: Sequence[Incident], alerts: Sequence[AlertRow]) -> dict[str, AlertRow | None]:
    """Incident kind -> the alert that caught it (None: missed)."""
    return {i.kind: next((a for a in alerts if a.key == expected_key(i)), None) for i in incidents}


def describe(incident: Incident) -> str:
    title = INCIDENT_TITLES.get(incident.kind, incident.kind)
    if incident.kind == "new_country_provisioning":
        return f"{title} ({incident.country}): {incident.actor} from {incident.source_ip}"
    key = expected_key(incident)
    return f"{title}: {key['requesting_account_id']} \u2192 {incident.role_arn}"


# -- Ctrl-C ------------------------------------------------------------------------------------
class Interrupts:
    """Ctrl-C (or SIGTERM) ends the demo at once, after stopping moto_server.

    Not KeyboardInterrupt: under ``dag.test`` tasks run in this process, and Airflow's task runner
    takes any exception, KeyboardInterrupt included, for a task failure and retries the task
    minutes later. It also replaces the SIGTERM handler in every task, hence ``arm`` before each run.
    """

    def __init__(self, terminal: TextIO) -> None:
        self.terminal = terminal
        self.cleanups: list[Callable[[], None]] = []
        self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def arm(self) -> None:
        for sig in self.previous:
            signal.signal(sig, self._stop)

    def disarm(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _stop(self, signum: int, _frame: object) -> None:
        for cleanup in self.cleanups:
            with suppress(Exception):
                cleanup()
        show_cursor = "\x1b[?25h" if self.terminal.isatty() else ""  # a live display may have hidden it
        with suppress(Exception):
            self.terminal.flush()
            os.write(self.terminal.fileno(), f"{show_cursor}\nInterrupted; moto_server is stopped.\n".encode())
        os._exit(128 + signum)


# -- the command -------------------------------------------------------------------------------
def run(
    root: str | Path,
    days: int = DEFAULT_DAYS,
    events_per_hour: int = DEFAULT_EVENTS_PER_HOUR,
    live_hours: int = LIVE_HOURS,
) -> int:
    """``trailguard demo``: everything, with the terminal for the story and a file for the logs."""
    from rich.console import Console

    plan = make_plan(Path(root), days, events_per_hour=events_per_hour, live_hours=live_hours)
    reset_dirs(plan)
    started = time.monotonic()
    with terminal_and_log(plan.log) as terminal:
        console = Console(file=terminal, highlight=False)
        interrupts = Interrupts(terminal)
        interrupts.arm()
        try:
            outcome = _run(plan, console, interrupts)
        except Exception as err:
            traceback.print_exc()  # into the log
            console.print(f"\n[red]The demo failed:[/] {type(err).__name__}: {err}\nDetails: {plan.log}")
            return 1
        finally:
            interrupts.disarm()
        _summary(console, plan, outcome, time.monotonic() - started)
    return 0 if all(outcome.fired.values()) else 1


@dataclass
class _Step:
    done: str = ""


@contextmanager
def _step(console: Any, doing: str) -> Generator[_Step, None, None]:
    """A spinner while the step runs, then one line saying what it did and how long it took."""
    from rich.live import Live
    from rich.spinner import Spinner

    began = time.monotonic()
    step = _Step()
    with Live(Spinner("dots", doing + "\u2026"), console=console, transient=True, **NO_REDIRECT):
        yield step
    console.print(f"[green]\u2713[/] {step.done or doing} [dim]({time.monotonic() - began:.0f} s)[/]")


def _run(plan: Plan, console: Any, interrupts: Interrupts) -> Outcome:
    _intro(console, plan)
    with _step(console, "Generating CloudTrail for the demo organisation") as step:
        trail = generate_month(plan)
        incidents = list(trail.incidents)
        step.done = (
            f"generated {trail.stats.files:,} delivery files with {trail.stats.records:,} records "
            f"in {_relative(plan.trail)}"
        )
    with moto_server() as moto:
        interrupts.cleanups.append(moto.stop)
        _upload(console, plan, moto.endpoint)
        own_slack = users_slack()
        with SlackReceiver() as receiver:
            apply_env(airflow_env(plan) | pipeline_env(plan, moto.endpoint, None if own_slack else receiver.url))
            outcome = _pipeline(console, plan, incidents, receiver, own_slack, interrupts)
    return replace(outcome, not_yet_delivered=Counts(*delivered_from(plan.trail, plan.end)))


def _intro(console: Any, plan: Plan) -> None:
    console.rule("[bold]trailguard demo")
    console.print(
        f"CloudTrail of a 4-account organisation from {plan.start:%d %b %H:%M} to {plan.end:%d %b %H:%M} UTC "
        f"({plan.days} days; offices in DE, GB, IE and US, daily cross-account jobs, AWS-service noise, "
        f"{plan.events_per_hour} background events an hour) with three incidents in the last "
        f"{plan.live_hours} hours. Airflow's logs go to {_relative(plan.log)}."
    )


def _upload(console: Any, plan: Plan, endpoint: str) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    began = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, **NO_REDIRECT) as bar:
        task = bar.add_task(f"Uploading to s3://{BUCKET} (moto_server, {endpoint})", total=None)
        count = upload(
            endpoint, BUCKET, plan.trail, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    console.print(
        f"[green]\u2713[/] uploaded {count:,} objects to s3://{BUCKET} on moto_server at {endpoint} "
        f"[dim]({time.monotonic() - began:.0f} s)[/]"
    )


def _pipeline(
    console: Any,
    plan: Plan,
    incidents: list[Incident],
    receiver: SlackReceiver,
    own_slack: str | None,
    interrupts: Interrupts,
) -> Outcome:
    with _step(console, "Starting Airflow: a throw-away home, this project's DAGs") as step:
        bag = load_dags()
        step.done = f"Airflow ready: {len(bag.dag_ids)} DAGs from dags/, metadata in {_relative(plan.airflow_home)}"
    with _step(console, f"cloudtrail_ingest over the history up to {plan.live_start:%d %b %H:%M}") as step:
        ingest_history(bag, plan)
        counts = ledger_counts(plan.state_url)
        step.done = f"cloudtrail_ingest (history): {counts.objects:,} objects, {counts.events:,} events into the lake"
    interrupts.arm()
    with _step(console, "baseline_initial: what is normal, from the history") as step:
        build_baselines(bag, plan)
        step.done = f"baseline_initial at {plan.live_start:%d %b %H:%M} (lookback 90 days)"
    messages = _hourly(console, plan, bag, receiver, interrupts)
    alerts = alert_rows(plan.state_url)
    return Outcome(ledger_counts(plan.state_url), alerts, incidents, messages, own_slack)


def _hourly(
    console: Any, plan: Plan, bag: Any, receiver: SlackReceiver, interrupts: Interrupts
) -> list[dict[str, Any]]:
    """Each live hour: cloudtrail_ingest, then detections; Slack messages printed as they arrive."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    began = time.monotonic()
    messages: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, **NO_REDIRECT) as bar:
        task = bar.add_task("Hourly runs", total=len(plan.hours))
        for at in plan.hours:
            bar.update(task, description=f"cloudtrail_ingest + detections for {at:%a %d %b %H:%M}")
            interrupts.arm()
            run_hour(bag, at, plan.log)
            for message in receiver.drain():
                messages.append(message)
                console.print(f"[bold]Slack[/], after the {at:%a %H:%M} run:")
                console.print(render_message(message))
            bar.advance(task)
    console.print(
        f"[green]\u2713[/] {len(plan.hours)} hours of cloudtrail_ingest + detections, all succeeded "
        f"[dim]({time.monotonic() - began:.0f} s)[/]"
    )
    return messages


def _summary(console: Any, plan: Plan, outcome: Outcome, seconds: float) -> None:
    console.rule("[bold]Summary")
    c, late = outcome.counts, outcome.not_yet_delivered
    console.print(f"Ingested   {c.events:,} events from {c.objects:,} CloudTrail objects ({plan.days} days)")
    if late.objects:
        console.print(
            f"           not yet: {_count(late.objects, 'generated object')} ({_count(late.events, 'event')}) "
            f"delivered after {plan.end:%H:%M}, the end of the last run (CloudTrail delivers 5 to 10 minutes "
            "late): the next hourly run would take them"
        )
    by_detection: dict[str, int] = {}
    for a in outcome.alerts:
        by_detection[a.detection] = by_detection.get(a.detection, 0) + 1
    for name, n in sorted(by_detection.items()) or [("no detection fired", 0)]:
        console.print(f"Alerts     {n} \u00d7 {name}")
    fired = outcome.fired
    for incident in outcome.incidents:
        alert = fired[incident.kind]
        mark = f"[green]\u2713 fired[/] at {alert.fired_at:%a %H:%M} UTC" if alert else "[red]\u2717 missed[/]"
        console.print(f"Incident   {describe(incident)}: {mark}", soft_wrap=True)
    if outcome.own_slack:
        sent = sum(a.status == SENT for a in outcome.alerts)
        console.print(
            f"Slack      {sent} of {len(outcome.alerts)} alert(s) posted to your connection {outcome.own_slack}"
        )
    else:
        console.print(f"Slack      {len(outcome.messages)} message(s) received by the local receiver, shown above")
    console.print(f"Time       {int(seconds // 60)} min {int(seconds % 60)} s")
    _next_steps(console, plan)


def _next_steps(console: Any, plan: Plan) -> None:
    rel = _relative(plan.root)
    console.rule("[bold]Where to look next")
    console.print(
        f"\u2022 The same alerts from the command line:\n"
        f"    export TRAILGUARD_LAKE={rel}/replay/lake TRAILGUARD_DB=sqlite:///{rel}/replay/state.db\n"
        f"    .venv/bin/trailguard ingest --source {rel}/trail\n"
        f"    .venv/bin/trailguard replay --start {plan.live_start:%Y-%m-%dT%H:%MZ} "
        f"--end {plan.end:%Y-%m-%dT%H:%MZ} --baseline-days 90\n"
        f"\u2022 The DAGs in the Airflow UI, reading this trail: {airflow_command(plan)}  (http://127.0.0.1:8080)\n"
        f"\u2022 The lake with DuckDB:\n"
        f'    .venv/bin/python -c "import duckdb; duckdb.sql(\\"SELECT event_name, count(*) AS n '
        f"FROM read_parquet('{rel}/lake/events/*/*/*.parquet', hive_partitioning=true) "
        f'GROUP BY 1 ORDER BY n DESC LIMIT 10\\").show()"\n'
        f"\u2022 docs/detections.md (what fires and why), docs/schema.md (the lake), docs/operations.md\n"
        f"\u2022 Airflow and task logs of this run: {rel}/demo.log",
        soft_wrap=True,  # whole lines, so the commands can be copied
    )


def airflow_command(plan: Plan) -> str:
    """``make airflow`` reads var/demo/trail by itself; any other demo folder is passed as the source."""
    if plan.trail == (PROJECT_ROOT / "var" / "demo" / "trail").resolve():
        return "make airflow"
    source = _relative(plan.trail) if Path.cwd().resolve() == PROJECT_ROOT.resolve() else str(plan.trail)
    return f"TRAILGUARD_SOURCE={source} make airflow"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- make airflow ------------------------------------------------------------------------------
def serve_sink(port: int, log_path: Path, stop: threading.Event | None = None) -> None:
    """``make airflow``'s Slack: a webhook on 127.0.0.1:``port`` that appends each message, rendered
    as in the demo, to ``log_path`` (``tail -f`` it), until ``stop`` is set or the process is ended."""
    from rich.console import Console

    stop = stop or threading.Event()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with SlackReceiver(port) as receiver, open(log_path, "a", encoding="utf-8") as log:
        console = Console(file=log, width=100, highlight=False, color_system=None)
        while not stop.is_set():
            try:
                message = receiver.received.get(timeout=0.2)
            except queue.Empty:
                continue
            console.print(f"Slack message received {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
            console.print(render_message(message))
            log.flush()


def sink_url(port: int) -> str:
    """The incoming-webhook URL ``serve_sink`` answers on (an ``AIRFLOW_CONN_*`` password)."""
    return f"http://127.0.0.1:{port}{WEBHOOK_PATH}"


def airflow_steps(trail: Path) -> list[str]:
    """What to do in ``make airflow``'s UI to see this trail's incidents alert, with its own dates.

    Ingest the history in one run, baseline at the first incident's hour, then backfill ingest and
    detections over the hours after it, as in the README's backfill section.
    """
    path = trail / MANIFEST
    if not path.is_file():
        return [f"{trail} has no {MANIFEST} (not made by trailguard generate): pick its dates yourself."]
    info = json.loads(path.read_text())
    start, end = datetime.fromisoformat(info["start"]), datetime.fromisoformat(info["end"])
    ats = sorted(datetime.fromisoformat(i["at"]) for i in info["incidents"])
    if not ats:
        return [f"{trail} holds no incidents (generated with --no-incidents): nothing will alert."]
    first = ats[0].replace(minute=0, second=0, microsecond=0)
    last_run = end - timedelta(hours=1)  # the logical date (interval start) of the last full hour
    iso = "%Y-%m-%dT%H:%M:%SZ"
    return [
        f"The trail: {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC, {len(ats)} incidents from "
        f"{ats[0]:%Y-%m-%d %H:%M} UTC. To see them alert (README, 'What to click'):",
        f"  1. cloudtrail_ingest > Trigger: start={start:{iso}} end={first:{iso}}, unpause on trigger",
        f"  2. baseline_initial > Trigger: at={first:{iso}} (unpause it)",
        f"  3. cloudtrail_ingest > Backfill: from {first:{iso}} to {last_run:{iso}}",
        f"  4. detections > Backfill: from {first:{iso}} to {last_run:{iso}}, max active runs 1 (unpause it)",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trailguard.demo slack-sink|airflow-steps``: helpers of scripts/airflow-standalone.sh."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trailguard.demo", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sink = sub.add_parser("slack-sink", help="a local Slack webhook whose messages go to a log file")
    sink.add_argument("--port", type=int, required=True)
    sink.add_argument("--log", type=Path, required=True)
    steps = sub.add_parser("airflow-steps", help="print what to click to see a generated trail alert")
    steps.add_argument("trail", type=Path)
    args = parser.parse_args(argv)
    if args.command == "slack-sink":
        with suppress(KeyboardInterrupt):  # Ctrl-C in make airflow's terminal reaches the sink too
            serve_sink(args.port, args.log)
    else:
        print("\n".join(airflow_steps(args.trail)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
