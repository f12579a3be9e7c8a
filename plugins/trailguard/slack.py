"""Slack messages for alerts, digests and pipeline health, and one function that posts them.

Every value that comes from CloudTrail is attacker-controlled (userAgent, userName,
roleSessionName, request parameters...), so it goes through :func:`escape` before it reaches
mrkdwn, and is shown in inline code where possible so Slack applies no formatting to it.

This module keeps no state: :mod:`trailguard.outbox` decides what to post and records outcomes.
``send`` never raises; it classifies the outcome so the outbox can retry without losing alerts:

- ``ok``: posted.
- ``retryable``: Slack is down, throttling, or the answer was lost; try again later.
  ``maybe_delivered`` adds that Slack may have posted it (the re-send is marked).
- ``config_error`` (also retryable): the connection, token, channel or webhook is wrong, so no
  message can post until someone fixes it.
- none of these: Slack rejected this one message (its blocks or size); re-sending cannot help.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from functools import partial
from json import JSONDecodeError
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import quote

from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from trailguard.settings import Settings
from trailguard.specs import KNOWN_PREFIX

# Slack Block Kit limits (https://api.slack.com/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION = 3000
MAX_FIELD = 2000
MAX_FIELDS = 10
MAX_CONTEXT_ELEMENTS = 10
MAX_TEXT = 3000  # our own cap for the notification fallback text
MAX_VALUE_IN_MESSAGE = 120  # an event value quoted in the ESCU message

DEFAULT_TIMEOUT = 10.0
MAX_RETRY_AFTER = 30  # seconds we are willing to sleep in-process for one 429

POSSIBLE_DUPLICATE = "(possible duplicate: an earlier attempt may have been delivered)"
ELLIPSIS = "\u2026"
WORD_JOINER = "\u2060"
NOT_AVAILABLE = "_n/a_"
QUERY_WINDOW = timedelta(hours=24)  # both ESCU detections look at the 24 hours before they fire

# Control, format (bidi overrides, zero-width joiners, tags) and lone surrogate characters.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs"})
_LINE_BREAKS = str.maketrans({"\r": " ", "\n": " ", "\t": " ", "\x85": " ", "\u2028": " ", "\u2029": " "})
# A formatting marker Slack could pair up: not inside a word (``snake_case`` stays as it is).
_FORMAT_MARKER = re.compile(r"(?<![^\W_])[*_~]|[*_~](?![^\W_])")
_LOOK_ALIKES = {"*": "\u2217", "_": "\u02cd", "~": "\u223c"}  # read the same, format nothing
_SPECIAL_MENTION = re.compile(r"(?<=[@!])(?=(?:channel|here|everyone|group)\b)", re.IGNORECASE)
_URL_SCHEME = re.compile(r"(?<=[A-Za-z]):(?=//)")
_TECHNIQUE = re.compile(r"^T\d{4}(?:\.\d{3})?$")
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
_EVENT_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_ACCOUNT_ID = re.compile(r"^\d{12}$")
_SECRET_PATTERNS = (
    re.compile(r"https?://[^\s'\"]*/services/[^\s'\"]+"),
    re.compile(r"xox[a-z]-[A-Za-z0-9-]+"),
)

_CLIENT_LOG = logging.getLogger("trailguard.slack.client")
# slack_sdk logs request URLs (the webhook URL is the secret) at INFO when a retry happens and
# at DEBUG with headers; keep its logger above that so neither URL nor token reaches any log.
_CLIENT_LOG.setLevel(logging.WARNING)


@dataclass(frozen=True)
class Message:
    """A Slack message: ``text`` is the notification/fallback, ``blocks`` the Block Kit body."""

    text: str
    blocks: list[dict[str, Any]]


@dataclass(frozen=True)
class SendResult:
    """How a post went. ``maybe_delivered``: the request reached Slack but no answer came back."""

    ok: bool
    reply: str = ""
    error: str | None = None
    retryable: bool = False
    maybe_delivered: bool = False
    config_error: bool = False


# -- escaping -----------------------------------------------------------------------------------
def escape(value: object, limit: int | None = 300, *, defang_urls: bool = True, in_code: bool = False) -> str:
    """Make an untrusted value inert in mrkdwn: no mentions, links, code-span breaks, formatting
    or invisible characters.

    Truncation (``limit=None``: none) happens before escaping, so an entity such as ``&amp;`` is
    never cut in half. ``in_code=True`` is for text inside a code span or block, where
    ``*bold*``, ``_italic_`` and ``~strike~`` do not apply and are kept; ``defang_urls=False``
    keeps ``scheme://`` intact, for text we build ourselves in code blocks.
    """
    if value is None:
        return ""
    text = _visible(value)
    if limit is not None:
        text = truncate(text, limit)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("`", "\u02cb")  # a look-alike that cannot open or close a code span
    if not in_code:
        text = _FORMAT_MARKER.sub(lambda m: _LOOK_ALIKES[m.group()], text)
    text = _SPECIAL_MENTION.sub(WORD_JOINER, text)
    if defang_urls:
        text = _URL_SCHEME.sub(":" + WORD_JOINER, text)  # no auto-linking (or unfurling) of bare URLs
    return text


def plain(value: object, limit: int) -> str:
    """Clean text for ``plain_text`` objects (headers): Slack does not parse mrkdwn there."""
    if value is None:
        return ""
    return _SPECIAL_MENTION.sub(WORD_JOINER, truncate(_visible(value), limit))


def _visible(value: object) -> str:
    """One line without invisible characters, which could hide or reorder what Slack shows."""
    text = str(value).replace("\r\n", " ").translate(_LINE_BREAKS)
    return "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when something was cut."""
    if limit <= 0:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def clip(text: str, limit: int) -> str:
    """Cut already-escaped mrkdwn to ``limit`` without splitting an ``&...;`` entity or leaving a
    code span open (an open one would pair with the next backtick and garble what follows)."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&", max(0, len(cut) - 5))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    if cut.count("`") % 2:
        cut = cut[: cut.rfind("`")]
    return cut + ELLIPSIS


def code(value: object, limit: int = 300) -> str:
    """An untrusted value as inline code (no formatting applies), or a muted n/a."""
    text = escape(value, limit, in_code=True)
    return f"`{text}`" if text.strip() else NOT_AVAILABLE


# -- block helpers -----------------------------------------------------------------------------
def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": plain(text, MAX_HEADER) or "-", "emoji": True}}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, MAX_SECTION) or " "}}


def _fields(fields: Sequence[str]) -> dict[str, Any]:
    items = [{"type": "mrkdwn", "text": clip(f, MAX_FIELD)} for f in fields[:MAX_FIELDS]]
    return {"type": "section", "fields": items}


def _context(texts: Sequence[str]) -> dict[str, Any]:
    items = [{"type": "mrkdwn", "text": clip(t, MAX_FIELD)} for t in texts[:MAX_CONTEXT_ELEMENTS]]
    return {"type": "context", "elements": items}


def _code_block(body: str) -> str:
    """A fenced code block whose body fits a section (the body must already be escaped)."""
    return "```" + clip(body, MAX_SECTION - 6) + "```"


def _chunk_lines(lines: Iterable[str], limit: int = MAX_SECTION) -> list[str]:
    """Join lines into texts of at most ``limit`` characters, one section each."""
    chunks: list[str] = []
    current = ""
    for line in lines:
        line = clip(line, limit)
        if current and len(current) + 1 + len(line) > limit:
            chunks.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        chunks.append(current)
    return chunks


def _finish(text: str, blocks: list[dict[str, Any]]) -> Message:
    return Message(text=clip(text, MAX_TEXT), blocks=blocks[:MAX_BLOCKS])


# -- alert rendering ---------------------------------------------------------------------------
def severity(risk_score: object) -> tuple[str, str]:
    """(label, emoji) for a risk score: >=70 high, >=40 medium, else low."""
    score = _number(risk_score)
    if score >= 70:
        return "High", ":red_circle:"
    if score >= 40:
        return "Medium", ":large_orange_circle:"
    return "Low", ":large_yellow_circle:"


def attack_url(technique: str) -> str | None:
    """MITRE ATT&CK page for T1078 or T1078.004, None for anything that is not a technique id."""
    if not _TECHNIQUE.match(technique):
        return None
    return "https://attack.mitre.org/techniques/" + technique.replace(".", "/") + "/"


def cloudtrail_event_url(region: object, event_id: object) -> str | None:
    """CloudTrail console Event history link for one event, None when the inputs look wrong.

    China and GovCloud regions live in their own partitions, with their own console hosts."""
    if not isinstance(region, str) or not isinstance(event_id, str):
        return None
    if not _REGION.match(region) or not _EVENT_ID.match(event_id):
        return None
    if region.startswith("cn-"):
        host = "console.amazonaws.cn"
    elif region.startswith("us-gov-"):
        host = "console.amazonaws-us-gov.com"
    else:
        host = f"{region}.console.aws.amazon.com"
    return f"https://{host}/cloudtrailv2/home?region={region}#/events/{quote(event_id, safe='')}"


def duckdb_query(lake_uri: str, alert: dict[str, Any], rows: Sequence[dict[str, Any]], budget: int) -> str:
    """A DuckDB query for the alert's activity: its key in the detection's window before it fired.

    Unescaped SQL (see :func:`code_text`). Only validated values (12-digit accounts, IP
    addresses, event ids) reach the SQL. A listed filter (source IPs or event ids) is shortened,
    never cut, until the escaped query fits ``budget`` characters.
    """
    key = alert.get("key") if isinstance(alert.get("key"), dict) else {}
    accounts = _account_filter(key)
    where = [*_window_filter(alert.get("fired_at")), *accounts]
    column, values = ("", []) if accounts else _listed_filter(key, rows)
    query = ""
    for cap in [len(values), *(n for n in (40, 20, 10, 5, 1, 0) if n < len(values))]:
        query = _duckdb_sql(lake_uri, where, column, values[:cap], len(values))
        if len(code_text(query)) <= budget:
            break
    return query


def code_text(sql: str) -> str:
    """SQL (or any text we build) escaped for a code block, line by line and never shortened."""
    return "\n".join(escape(line, None, defang_urls=False, in_code=True) for line in sql.splitlines())


def _window_filter(fired_at: object) -> list[str]:
    """[fired_at - 24h, fired_at), with the date partitions it spans; nothing for a bad time."""
    try:
        end = datetime.fromisoformat(str(fired_at))
    except ValueError:
        return []
    end = end.astimezone(timezone.utc) if end.tzinfo else end.replace(tzinfo=timezone.utc)
    start = end - QUERY_WINDOW
    return [
        f"event_date BETWEEN '{start:%Y-%m-%d}' AND '{end - timedelta(microseconds=1):%Y-%m-%d}'",
        f"event_time >= TIMESTAMPTZ '{start:%Y-%m-%d %H:%M:%S}+00' AND event_time < TIMESTAMPTZ "
        f"'{end:%Y-%m-%d %H:%M:%S}+00'",
    ]


def _account_filter(key: dict[str, Any]) -> list[str]:
    """The cross-account key: AssumeRole calls from the requesting account into the requested one."""
    requesting, requested = key.get("requesting_account_id"), key.get("requested_account_id")
    if not all(isinstance(a, str) and _ACCOUNT_ID.match(a) for a in (requesting, requested)):
        return []
    return [
        f"event_name = 'AssumeRole' AND coalesce(nullif(user_account_id, ''), recipient_account_id) = '{requesting}'",
        f"coalesce(request_role_arn, assumed_role_arn) LIKE 'arn:%::{requested}:%'",
    ]


def _listed_filter(key: dict[str, Any], rows: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """The source IPs of a country alert's events, else the events' ids."""
    if "country" in key:
        ips = [str(r.get("src")) for r in rows if _is_ip(r.get("src"))]
        if ips:
            return "source_ip", list(dict.fromkeys(ips))
    ids = [r["event_id"] for r in rows if isinstance(r.get("event_id"), str) and _EVENT_ID.match(r["event_id"])]
    return "event_id", list(dict.fromkeys(ids))


def _is_ip(value: object) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def _duckdb_sql(lake_uri: str, where: Sequence[str], column: str, values: Sequence[str], total: int) -> str:
    lines = ["-- the alert's activity in the 24 hours before it fired"]
    root = lake_root(lake_uri)
    if root.startswith("s3://"):
        lines += ["INSTALL httpfs; LOAD httpfs;", "CREATE OR REPLACE SECRET (TYPE s3, PROVIDER credential_chain);"]
    lines += [
        "SELECT event_time, event_id, event_name, aws_region, recipient_account_id, user_name, user_arn,",
        "  source_ip, request_role_arn, role_session_name, error_code, user_agent",
        f"FROM read_parquet('{root.replace(chr(39), chr(39) * 2)}/events/*/*/*.parquet', hive_partitioning = true)",
    ]
    conditions = list(where)
    if values:
        conditions.append(f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")")
    if conditions:
        lines.append("WHERE " + "\n  AND ".join(conditions))
    lines.append("ORDER BY event_time;")
    if len(values) < total:
        lines.append(f"-- {len(values)} of {total} {column} values listed: the message has no room for more")
    return "\n".join(lines)


def lake_root(lake_uri: str) -> str:
    """The lake as an absolute location: the query is run from anywhere, not the worker's cwd."""
    if "://" in lake_uri:
        return lake_uri.rstrip("/")
    return str(Path(lake_uri).expanduser().resolve())


def render_alert(alert: dict[str, Any], lake_uri: str, *, possible_duplicate: bool = False) -> Message:
    """The Slack message for one alert (see module docstring on escaping)."""
    detection = str(alert.get("detection") or "Unknown detection")
    label, emoji = severity(alert.get("risk_score"))
    rows: list[dict[str, Any]] = [r for r in alert.get("rows") or [] if isinstance(r, dict)]
    first = rows[0] if rows else {}
    rows_total = int(_number(alert.get("rows_total", len(rows))))
    summary = bounded_message(str(alert.get("message") or ""), first)
    message = escape(summary, 2500)

    blocks: list[dict[str, Any]] = [_header(f"{emoji} {detection}")]
    if possible_duplicate:
        blocks.append(_context([f":warning: *{POSSIBLE_DUPLICATE}*"]))
    blocks.append(
        _section(
            f"{emoji} *{label} severity* \u00b7 risk score {_number(alert.get('risk_score')):g} "
            f"(impact {_number(alert.get('impact')):g}, confidence {_number(alert.get('confidence')):g})\n"
            f">{message}"
        )
    )
    blocks.append(_fields(_alert_fields(alert, first, rows_total)))
    if len(rows) > 1:
        sample = _chunk_lines(["*Events (sample)*", *(_row_line(r) for r in rows[:8])])[0]  # whole lines only
        blocks.append(_section(sample))
    for field, values in alert.items():  # a spec's list_known_as: known_countries -> "Countries seen before"
        if field.startswith(KNOWN_PREFIX) and isinstance(values, list):
            what = field[len(KNOWN_PREFIX) :].replace("_", " ")
            known = ", ".join(code(v, 40) for v in values[:60] if v) or "_none: this is the first on record_"
            blocks.append(_section(f"*{escape(what.capitalize(), 40)} seen before*\n{known}"))
    techniques = [str(t) for t in alert.get("mitre_attack") or []]
    mapped = " \u00b7 ".join(_technique_link(t) for t in techniques[:10]) or "none mapped in ESCU"
    blocks.append(_section(f"*MITRE ATT&amp;CK:* {mapped}"))
    blocks.extend(_next_steps(alert, first, lake_uri, rows))
    blocks.append(
        _context(
            [
                f"detection {code(alert.get('detection_id'), 64)}",
                f"fired at {code(alert.get('fired_at'), 40)}",
                f"key {code(json.dumps(alert.get('key')), 200)}",
            ]
        )
    )
    prefix = f"{POSSIBLE_DUPLICATE} " if possible_duplicate else ""
    text = f"{prefix}{emoji} {label}: {escape(detection, 150)}: {escape(summary, 1500)}"
    return _finish(text, blocks)


def bounded_message(message: str, row: dict[str, Any], limit: int = MAX_VALUE_IN_MESSAGE) -> str:
    """The ESCU message with each long event value it quotes shortened, so an attacker's
    3,000-character userName cannot push the rest of the sentence out of the notification."""
    for value in sorted({v for v in row.values() if isinstance(v, str) and len(v) > limit}, key=len, reverse=True):
        message = message.replace(value, truncate(value, limit))
    return message


def _alert_fields(alert: dict[str, Any], first: dict[str, Any], rows_total: int) -> list[str]:
    key = alert.get("key") if isinstance(alert.get("key"), dict) else {}
    if "country" in key:
        subject = f"*Country*\n{code(key.get('country'), 8)} {escape(first.get('country_name'), 80)}"
    else:
        requesting = key.get("requesting_account_id") or first.get("requesting_account_id")
        requested = key.get("requested_account_id") or first.get("requested_account_id")
        subject = f"*Accounts* (requesting \u2192 requested)\n{code(requesting, 40)} \u2192 {code(requested, 40)}"
    source = code(first.get("src"), 64)
    where = ", ".join(escape(first.get(k), 60) for k in ("city", "region", "country") if first.get(k))
    asn = " ".join(escape(first.get(k), 80) for k in ("asn", "asn_org") if first.get(k))
    source += "".join(f"\n{part}" for part in (where, f"ASN {asn}" if asn else "") if part)
    user = code(first.get("user"), 200)
    if first.get("user_arn") and first.get("user_arn") != first.get("user"):
        user += f"\n{code(first.get('user_arn'), 300)}"
    fields = [
        subject,
        f"*Account* (recorded in)\n{code(first.get('recipient_account_id'), 40)}",
        f"*User*\n{user}",
        f"*Source IP*\n{source}",
    ]
    if first.get("role_arn") or first.get("role_session_name"):
        role = code(first.get("role_arn"), 300)
        if first.get("role_session_name"):
            role += f"\nsession {code(first.get('role_session_name'), 100)}"
        fields.append(f"*Role*\n{role}")
    fields += [
        f"*First seen*\n{code(alert.get('first_seen'), 40)}",
        f"*Events*\n{rows_total}",
        f"*Event*\n{code(first.get('event_name'), 100)} in {code(first.get('aws_region'), 30)}",
        f"*User agent*\n{code(first.get('user_agent'), 300)}",
    ]
    if first.get("object") or first.get("command"):
        fields.append(f"*Object / command*\n{code(first.get('object'), 200)}\n{code(first.get('command'), 200)}")
    return fields


def _row_line(row: dict[str, Any]) -> str:
    parts = [code(row.get(k), 120) for k in ("event_time", "event_name", "user", "src")]
    if row.get("country"):
        parts.append(escape(row.get("country"), 8))
    return "\u2022 " + " \u00b7 ".join(parts)


def _technique_link(technique: str) -> str:
    url = attack_url(technique)
    return f"<{url}|{technique}>" if url else code(technique, 20)


def _next_steps(
    alert: dict[str, Any], first: dict[str, Any], lake_uri: str, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The console link (it opens only when signed in to the recording account, so name it) and
    a DuckDB query for the alert's activity in the lake."""
    url = cloudtrail_event_url(first.get("aws_region"), first.get("event_id"))
    where = f"account {code(first.get('recipient_account_id'), 40)}, {code(first.get('aws_region'), 30)}"
    console = (
        f"<{url}|Open the first event in CloudTrail Event history> (sign in to {where})"
        if url
        else f"_no CloudTrail console link: the first event has no usable region or event id_ ({where})"
    )
    query = code_text(duckdb_query(lake_uri, alert, rows, MAX_SECTION - 6))
    return [
        _section(f"*Where to look next*\n\u2022 {console}\n\u2022 The alert's activity in the lake (DuckDB):"),
        _section(_code_block(query)),
    ]


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


# -- digest and ops ----------------------------------------------------------------------------
def render_digest(alerts: list[dict[str, Any]], total: int, *, possible_duplicate: bool = False) -> Message:
    """One message for alerts of historical intervals (backfills, catch-up): the top ones, escaped."""
    ranked = sorted(alerts, key=lambda a: (_number(a.get("risk_score")), str(a.get("first_seen") or "")), reverse=True)
    shown = ranked[:20]
    noun = "alert" if total == 1 else "alerts"
    blocks: list[dict[str, Any]] = [_header(f":card_index_dividers: {total} {noun} from historical intervals")]
    if possible_duplicate:
        blocks.append(_context([f":warning: *{POSSIBLE_DUPLICATE}*"]))
    counts: dict[str, int] = {}
    for a in alerts:
        name = str(a.get("detection") or "Unknown detection")
        counts[name] = counts.get(name, 0) + 1
    summary = "\n".join(f"\u2022 {escape(name, 150)}: {n}" for name, n in sorted(counts.items()))
    blocks.append(
        _section(
            "These fired for intervals older than the delivery horizon (a backfill or a catch-up), "
            f"so they are summarised here instead of posted one by one.\n{summary}"
        )
    )
    lines = [_digest_line(a) for a in shown]
    if total > len(shown):
        lines.append(f"_\u2026and {total - len(shown)} more (highest risk first; see the alerts table)_")
    blocks.extend(_section(chunk) for chunk in _chunk_lines(lines))
    prefix = f"{POSSIBLE_DUPLICATE} " if possible_duplicate else ""
    return _finish(f"{prefix}{total} {noun} from historical intervals", blocks)


def _digest_line(alert: dict[str, Any]) -> str:
    _, emoji = severity(alert.get("risk_score"))
    key = alert.get("key") if isinstance(alert.get("key"), dict) else {}
    if "country" in key:
        rows = [r for r in alert.get("rows") or [] if isinstance(r, dict)]
        account = rows[0].get("recipient_account_id") if rows else None
        subject = f"country {code(key.get('country'), 8)} in account {code(account, 40)}"
    else:
        subject = f"{code(key.get('requesting_account_id'), 40)} \u2192 {code(key.get('requested_account_id'), 40)}"
    return (
        f"{emoji} *{escape(alert.get('detection'), 120)}* \u00b7 {subject} \u00b7 first seen "
        f"{code(alert.get('first_seen'), 40)} \u00b7 {int(_number(alert.get('rows_total')))} events"
    )


def render_ops(title: str, lines: Sequence[object]) -> Message:
    """A pipeline failure or health message; ``lines`` may hold anything, all of it is escaped."""
    shown = [f"\u2022 {escape(line, 1000)}" for line in lines[:40]]
    if len(lines) > len(shown):
        shown.append(f"_\u2026and {len(lines) - len(shown)} more_")
    blocks = [_header(title), *(_section(chunk) for chunk in _chunk_lines(shown))]
    text = escape(title, 150) + (f": {escape(lines[0], 500)}" if lines else "")
    return _finish(text, blocks)


# -- sending -----------------------------------------------------------------------------------
class _BoundedRateLimitHandler(RateLimitErrorRetryHandler):
    """Honour Retry-After in-process only when it is short; longer waits go back to the outbox."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        headers = {k.lower(): v for k, v in (response.headers or {}).items()}
        value = (headers.get("retry-after") or ["1"])[0]
        try:
            return int(value) <= MAX_RETRY_AFTER
        except ValueError:
            return False


class _UnavailableRetryHandler(ServerErrorRetryHandler):
    """Retries 503 only: the Web API answers 500 with ``internal_error``, which may have posted."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code == 503


def retry_handlers(retries: int = 2, *, web_api: bool = False) -> list[RetryHandler]:
    """In-process retries (slack_sdk backs off between them) that cannot cause a duplicate post.

    429 means Slack did not post; so do a webhook's 500/503 and the Web API's 503. A Web API
    500 is not retried here: Slack says the post may have happened, so the outbox re-sends it
    marked. Connection errors are retried only when urllib raised them while connecting/sending
    (``URLError``); a timeout or reset while waiting for the answer is *not* retried here,
    because the first request may have been posted.
    """
    server = _UnavailableRetryHandler if web_api else ServerErrorRetryHandler
    return [
        _BoundedRateLimitHandler(max_retry_count=retries),
        server(max_retry_count=retries),
        ConnectionErrorRetryHandler(max_retry_count=retries, error_types=[URLError]),
    ]


def sender(settings: Settings, conn_id: str) -> Callable[[Message], SendResult]:
    """``send`` bound to a connection and the settings' timeout and default channel."""
    return partial(send, conn_id=conn_id, timeout=settings.slack_timeout, channel=settings.slack_channel)


class SlackConfigError(Exception):
    """The Slack connection cannot be used as it is (wrong type, no channel)."""


def send(
    message: Message,
    conn_id: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    channel: str = "",
    retries: int = 2,
) -> SendResult:
    """Post ``message`` through the Airflow connection ``conn_id``; never raises.

    conn_type ``slackwebhook`` posts to the incoming webhook; ``slack`` calls chat.postMessage
    with the bot token, to the connection's extra ``channel``, else ``channel``. Anything that
    goes wrong before the request (no connection, a bad URL or type) is a configuration error.
    """
    secrets: list[str] = []
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        secrets = [s for s in (conn.password, conn.host) if s]
        post = _poster(conn, conn_id, channel, timeout, retries)
    except Exception as err:  # nothing was sent
        error = str(err) if isinstance(err, SlackConfigError) else f"{type(err).__name__}: {err}"
        return _redacted(_config_error(error), secrets)
    try:
        result = post(message)
    except Exception as err:  # classify, never raise: the outbox must record every outcome
        result = classify_exception(err)
    return _redacted(result, secrets)


def _poster(conn: Any, conn_id: str, channel: str, timeout: float, retries: int) -> Callable[[Message], SendResult]:
    """What posts through the connection: its client is built before anything is sent, so a
    failure here is a configuration error."""
    if conn.conn_type == "slackwebhook":
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        hook = SlackWebhookHook(
            slack_webhook_conn_id=conn_id, timeout=timeout, retry_handlers=retry_handlers(retries), logger=_CLIENT_LOG
        )
        return partial(_post_webhook, hook.client)
    if conn.conn_type == "slack":
        from airflow.providers.slack.hooks.slack import SlackHook

        channel = (conn.extra_dejson or {}).get("channel") or channel
        if not channel:
            raise SlackConfigError(
                f"connection {conn_id!r} has no extra 'channel' and TRAILGUARD_SLACK_CHANNEL is unset"
            )
        handlers = retry_handlers(retries, web_api=True)
        hook = SlackHook(slack_conn_id=conn_id, timeout=timeout, retry_handlers=handlers, logger=_CLIENT_LOG)
        return partial(_post_web_api, hook.client, str(channel))
    raise SlackConfigError(f"connection {conn_id!r} has conn_type {conn.conn_type!r}; use slackwebhook or slack")


def _config_error(error: str) -> SendResult:
    """Nothing can post until someone fixes the setup: alerts wait (pending) and ops is told."""
    return SendResult(ok=False, error=error, retryable=True, config_error=True)


def _redacted(result: SendResult, secrets: Iterable[str]) -> SendResult:
    return replace(result, error=redact(result.error, secrets)) if result.error else result


def _post_webhook(client: Any, message: Message) -> SendResult:
    # The hook's send() would raise on any non-200 and hide the status code we classify on.
    resp = client.send(text=message.text, blocks=message.blocks, unfurl_links=False, unfurl_media=False)
    return classify_webhook(resp.status_code, str(resp.body or ""))


def _post_web_api(client: Any, channel: str, message: Message) -> SendResult:
    from slack_sdk.errors import SlackApiError

    body = {
        "channel": channel,
        "text": message.text,
        "blocks": message.blocks,
        "unfurl_links": False,
        "unfurl_media": False,
    }
    try:
        resp = client.api_call("chat.postMessage", json=body)
    except SlackApiError as err:
        data = err.response.data if isinstance(err.response.data, dict) else {}
        return classify_web_api(err.response.status_code, str(data.get("error") or "unknown_error"))
    reply = {"channel": resp.get("channel"), "ts": resp.get("ts")}
    return SendResult(ok=True, reply=json.dumps(reply))


# Slack rejected this one message; every other code (channel_not_found, not_in_channel,
# invalid_auth, token_revoked, account_inactive, webhook no_service/invalid_token, codes we do
# not know...) is taken as a configuration error: it stops delivery, and nothing is lost.
MESSAGE_ERRORS = frozenset(
    {"invalid_blocks", "invalid_blocks_format", "msg_too_long", "invalid_payload", "no_text", "too_many_attachments"}
)
# chat.postMessage errors worth retrying; for the "maybe" ones Slack says part of the operation
# may already have succeeded, so the re-send is marked a possible duplicate.
_API_RETRYABLE = frozenset({"ratelimited", "rate_limited", "service_unavailable", "request_timeout"})
_API_MAYBE_DONE = frozenset({"internal_error", "fatal_error"})
_GATEWAY = frozenset({502, 504})  # a proxy gave up waiting: Slack may have posted behind it


def classify_webhook(status: int, body: str) -> SendResult:
    """Outcome of an incoming-webhook POST by HTTP status and its short error-code body."""
    if status == 200:
        return SendResult(ok=True, reply=body.strip()[:200] or "ok")
    code = body.strip()[:200]
    error = f"HTTP {status}: {code}"
    if status == 429 or status >= 500:
        return SendResult(ok=False, error=error, retryable=True, maybe_delivered=status in _GATEWAY)
    if status == 400 and code in MESSAGE_ERRORS:
        return SendResult(ok=False, error=error)
    return _config_error(error)


def classify_web_api(status: int, error: str) -> SendResult:
    """Outcome of a failed chat.postMessage by status and Slack's ``error`` code."""
    text = f"HTTP {status}: {error}"
    if error in _API_MAYBE_DONE or status in _GATEWAY:
        return SendResult(ok=False, error=text, retryable=True, maybe_delivered=True)
    if status == 429 or status >= 500 or error in _API_RETRYABLE:
        return SendResult(ok=False, error=text, retryable=True)
    if error in MESSAGE_ERRORS:
        return SendResult(ok=False, error=text)
    return _config_error(text)


def classify_exception(err: BaseException) -> SendResult:
    """Outcome of an exception from the HTTP call.

    urllib wraps failures while connecting or sending in ``URLError``, and rejects a malformed
    URL (``InvalidURL``, other ``ValueError``) before sending: nothing was posted. A timeout,
    reset or broken answer after that means Slack may have posted the message; so may anything
    we do not recognise, which also stops delivery until someone looks.
    """
    name = type(err).__name__
    if isinstance(err, URLError):
        return SendResult(ok=False, error=f"{name}: {err.reason}", retryable=True)
    if isinstance(err, JSONDecodeError):  # an answer came back, unreadable
        return SendResult(ok=False, error=f"{name}: {err}", retryable=True, maybe_delivered=True)
    if isinstance(err, (http.client.InvalidURL, ValueError)):
        return _config_error(f"{name}: {err}")
    if isinstance(err, (OSError, http.client.HTTPException)):
        return SendResult(ok=False, error=f"{name}: {err}", retryable=True, maybe_delivered=True)
    return replace(_config_error(f"{name}: {err}"), maybe_delivered=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without webhook URLs, tokens or the connection's secret values."""
    for secret in secrets:
        if len(secret) >= 6:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("***", text)
    return text
