"""A fake Slack on 127.0.0.1 for tests: an incoming webhook and chat.postMessage.

Every request is recorded (path, headers, JSON body, the answer given). Answers come from a
script queue shared by both endpoints, then from ``default`` (``OK`` unless set, e.g. to
``SERVER_ERROR`` for "Slack is down"):

- ``OK``: 200 ``ok`` (webhook) or ``{"ok": true, "channel": ..., "ts": ...}`` (Web API)
- ``RATE_LIMITED``: 429 with ``Retry-After: 1``
- ``SERVER_ERROR``: 500
- ``HANG``: no answer for ``hang_seconds`` (longer than the client timeout), then 200
- ``("error", code)``: the webhook's 4xx for that code (404 ``no_service``, 403 ``invalid_token``,
  410 ``channel_is_archived``, else 400) or 200 ``{"ok": false, "error": code}`` (Web API)
- ``("http", "502")``: that status with a short body, on either endpoint

``reject`` (a string): any request whose body contains it is answered
``("error", "invalid_blocks")`` instead, whatever the script says (a message Slack refuses).

Test modules import the fixtures (registered as ``fake_slack``, ``slack_webhook_conn`` and
``slack_bot_conn``; the Python names end in ``_fixture`` so test parameters do not shadow them)::

    from fake_slack import fake_slack_fixture, slack_webhook_conn_fixture  # ruff: ignore[unused-import]
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

OK = "ok"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
HANG = "hang"
WEBHOOK_PATH = "/services/T000/B000/XXXX"
API_PATH = "/api/chat.postMessage"
WEBHOOK_CONN = "slack_alerts"
BOT_CONN = "slack_bot"

Answer = str | tuple[str, str]


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it, and the answer it gave (status; 0 when it hung)."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    raw: str
    status: int

    @property
    def delivered(self) -> bool:
        """Slack would have posted this message (a hung request is posted, only the answer is lost)."""
        return self.status in (0, 200)


class FakeSlack:
    """The server, its recorded requests and its scripted answers."""

    def __init__(self, hang_seconds: float = 3.0, delay: float = 0.0) -> None:
        self.hang_seconds = hang_seconds
        self.delay = delay  # seconds before every answer (lets concurrent clients interleave)
        self.default: Answer = OK
        self.reject: str | None = None
        self.requests: list[Recorded] = []
        self._script: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._ts = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-slack", daemon=True
        )

    # -- control -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def webhook_url(self) -> str:
        return self.base_url + WEBHOOK_PATH

    @property
    def api_url(self) -> str:
        return self.base_url + "/api/"

    def script(self, *answers: Answer) -> None:
        """Queue answers for the next requests, in order."""
        with self._lock:
            self._script.extend(answers)

    def posts(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def start(self) -> FakeSlack:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    # -- serving -------------------------------------------------------------------------
    def _next(self, raw: str) -> Answer:
        with self._lock:
            if self.reject is not None and self.reject in raw:
                return ("error", "invalid_blocks")
            return self._script.popleft() if self._script else self.default

    def _record(self, path: str, headers: dict[str, str], raw: str, status: int) -> None:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(Recorded(path, headers, body if isinstance(body, dict) else None, raw, status))

    def _answer(self, path: str, answer: Answer) -> tuple[int, dict[str, str], bytes]:
        api = path.startswith("/api/")
        if isinstance(answer, tuple) and answer[0] == "http":
            return int(answer[1]), {}, b"bad gateway"
        if isinstance(answer, tuple):
            code = answer[1]
            if api:
                return 200, {}, json.dumps({"ok": False, "error": code}).encode()
            return _WEBHOOK_STATUS.get(code, 400), {}, code.encode()
        if answer == RATE_LIMITED:
            body = json.dumps({"ok": False, "error": "ratelimited"}) if api else "rate_limited"
            return 429, {"Retry-After": "1"}, body.encode()
        if answer == SERVER_ERROR:
            body = json.dumps({"ok": False, "error": "internal_error"}) if api else "internal_error"
            return 500, {}, body.encode()
        if not api:
            return 200, {}, b"ok"
        with self._lock:
            self._ts += 1
            ts = f"1700000000.{self._ts:06d}"
        return 200, {}, json.dumps({"ok": True, "channel": "C000ALERTS", "ts": ts}).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                headers = {k: v for k, v in self.headers.items()}
                answer = fake._next(raw)
                if answer == HANG:
                    fake._record(self.path, headers, raw, 0)
                    fake._release.wait(fake.hang_seconds)
                    status, extra, body = fake._answer(self.path, OK)
                else:
                    if fake.delay:
                        time.sleep(fake.delay)
                    status, extra, body = fake._answer(self.path, answer)
                    fake._record(self.path, headers, raw, _recorded_status(self.path, status, body))
                try:
                    self.send_response(status)
                    for k, v in {"Content-Type": _content_type(self.path), **extra}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (timeout): the answer is lost, the post is not

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


_WEBHOOK_STATUS = {"no_service": 404, "channel_not_found": 404, "invalid_token": 403, "channel_is_archived": 410}


def _content_type(path: str) -> str:
    return "application/json; charset=utf-8" if path.startswith("/api/") else "text/html"


def _recorded_status(path: str, status: int, body: bytes) -> int:
    """The status to record; a Web API 200 with ok=false is recorded as 400 (not posted)."""
    if status == 200 and path.startswith("/api/") and not json.loads(body).get("ok"):
        return 400
    return status


@pytest.fixture(name="fake_slack")
def fake_slack_fixture() -> Iterator[FakeSlack]:
    """A running fake Slack, stopped (hung requests released) at the end of the test."""
    fake = FakeSlack().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(name="slack_webhook_conn")
def slack_webhook_conn_fixture(fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> str:
    """Connection id of an incoming-webhook connection pointing at the fake (short timeout)."""
    conn = {"conn_type": "slackwebhook", "password": fake_slack.webhook_url}
    monkeypatch.setenv(f"AIRFLOW_CONN_{WEBHOOK_CONN.upper()}", json.dumps(conn))
    monkeypatch.setenv("TRAILGUARD_SLACK_TIMEOUT", "1")
    return WEBHOOK_CONN


@pytest.fixture(name="slack_bot_conn")
def slack_bot_conn_fixture(fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> str:
    """Connection id of a bot-token connection (chat.postMessage) pointing at the fake."""
    conn = {
        "conn_type": "slack",
        "password": "xoxb-test",
        "extra": {"base_url": fake_slack.api_url, "channel": "#alerts"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{BOT_CONN.upper()}", json.dumps(conn))
    monkeypatch.setenv("TRAILGUARD_SLACK_TIMEOUT", "1")
    return BOT_CONN


# -- helpers for Slack tests ---------------------------------------------------------------------
HOSTILE_USER_AGENT = "<!channel> <http://evil.example|click> @here `rm -rf` <@U123>"
HOSTILE_SESSION = "<!here>`x`@everyone"
HOSTILE_USER = "<@U0ADMIN> @channel <!subteam^S123>"
# What must never reach Slack from a hostile value: live mentions, links, code-span breaks.
FORBIDDEN = ("<!channel>", "<!here>", "<!subteam", "<@U", "<http://evil", "@here", "@channel", "@everyone", "`rm")


def alert_payload(n: int = 0, *, country: bool = False, hostile: bool = False, risk: int = 15) -> dict[str, Any]:
    """An alert dict like the detections store, unique by ``n`` (its event id is ``evt-<n>``)."""
    row = {
        "event_id": f"evt-{n:04d}",
        "event_time": "2026-11-20T13:05:00+00:00",
        "event_name": "RunInstances" if country else "AssumeRole",
        "aws_region": "us-east-1",
        "recipient_account_id": "444455556666",
        "user": HOSTILE_USER if hostile else "alice",
        "user_arn": "arn:aws:iam::111122223333:user/alice",
        "src": "81.2.69.160",
        "country": "BR" if country else "GB",
        "country_name": "Brazil" if country else "United Kingdom",
        "city": "London",
        "region": "England",
        "asn": "AS20712",
        "asn_org": "Andrews & Arnold",
        "object": "i-0abc" if country else None,
        "command": "RunInstances" if country else None,
        "requesting_account_id": "111122223333",
        "requested_account_id": f"4444{n:08d}",
        "role_arn": f"arn:aws:iam::4444{n:08d}:role/deploy",
        "role_session_name": HOSTILE_SESSION if hostile else "deploy-session",
        "user_agent": HOSTILE_USER_AGENT if hostile else "aws-cli/2.15.0",
    }
    user = row["user"]
    if country:  # what derive.provisioning_rows gives: no accounts pair, no role
        row.update(requesting_account_id=None, requested_account_id=None, role_arn=None, role_session_name=None)
        return {
            "detection": "Cloud Provisioning Activity From Previously Unseen Country",
            "detection_id": "94994255-3acf-4213-9b3f-0494df03bb31",
            "key": {"country": "BR"},
            "first_seen": "2026-11-20T13:05:00+00:00",
            "fired_at": "2026-11-20T14:00:00+00:00",
            "risk_score": risk,
            "impact": 70,
            "confidence": 60,
            "mitre_attack": ["T1078", "T1078.004"],
            "message": f"User {user} is starting or creating an instance i-0abc for the first time in Country BR "
            "from IP address 81.2.69.160",
            "rows": [row],
            "rows_total": 3,
            "known_countries": ["DE", "US"],
        }
    return {
        "detection": "AWS Cross Account Activity From Previously Unseen Account",
        "detection_id": "21193641-cb96-4a2c-a707-d9b9a7f7792b",
        "key": {"requesting_account_id": "111122223333", "requested_account_id": row["requested_account_id"]},
        "first_seen": "2026-11-20T13:05:00+00:00",
        "fired_at": "2026-11-20T14:00:00+00:00",
        "risk_score": risk,
        "impact": 30,
        "confidence": 50,
        "mitre_attack": [],
        "message": f"AWS account 111122223333 is trying to access resource from some other account "
        f"{row['requested_account_id']}, for the first time. {user if hostile else ''}",
        "rows": [row],
        "rows_total": 7,
    }


def strings(obj: Any) -> Iterator[str]:
    """Every string inside a JSON value."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


def assert_block_kit_limits(blocks: list[dict[str, Any]]) -> None:
    """Slack's documented limits for the blocks we use."""
    assert 0 < len(blocks) <= 50
    for block in blocks:
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text"
            assert 0 < len(block["text"]["text"]) <= 150
        elif block["type"] == "section":
            if "text" in block:
                assert 0 < len(block["text"]["text"]) <= 3000
            for f in block.get("fields", []):
                assert 0 < len(f["text"]) <= 2000
            assert len(block.get("fields", [])) <= 10
        elif block["type"] == "context":
            assert 0 < len(block["elements"]) <= 10
        else:
            raise AssertionError(f"unexpected block type {block['type']}")
