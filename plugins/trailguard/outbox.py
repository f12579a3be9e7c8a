"""Alert delivery: a small state machine over ``store.alerts``.

States::

    pending --claim--> sending --ok--> sent
                          |----old, in the digest--> digested
                          |----retryable / unknown--> pending (attempts+1; failed at max_attempts)
                          `----rejected by Slack---> failed

Delivery is *at least once*. A post whose outcome is unknown (timeout or reset after the
request went out, Slack's ``internal_error``/``fatal_error``) stays pending with
``possible_duplicate`` set, and the re-send says "(possible duplicate: an earlier attempt may
have been delivered)". We prefer a marked possible duplicate to a lost alert.

Claims make concurrent runs safe: a row is posted only by the run whose
``UPDATE ... SET status='sending' WHERE id=? AND status='pending'`` changed it (rowcount 1),
which is atomic on SQLite and PostgreSQL alike. While a row is 'sending', ``claimed_at`` holds
the claim time; a claim older than ``stale_after`` (a run that died mid-post) is taken over and the
re-send is marked as a possible duplicate, since the dead run may have posted it.

Alerts that fired before ``now - horizon`` (backfills, catch-up after an outage) are not posted
one by one: each call sends one digest for them and marks them 'digested'; if the digest
cannot be posted they stay pending for the next call.

A retryable failure stops the call: Slack is down or throttling, so the other alerts wait for
the next run untouched instead of each burning an attempt.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from trailguard import store
from trailguard.slack import Message, SendResult, render_alert, render_digest
from trailguard.store import StateStore, alerts

log = logging.getLogger(__name__)

PENDING, SENDING, SENT, DIGESTED, FAILED = "pending", "sending", "sent", "digested", "failed"
STALE_CLAIM = timedelta(minutes=15)  # far above one send: timeout x (1 + retries) + Retry-After
DIGEST_LIMIT = 5000  # alerts per digest call; more wait for the next call (bounded memory)
MAX_ERROR = 2000
_CHUNK = 500

Sender = Callable[[Message], SendResult]


@dataclass(frozen=True)
class DeliveryReport:
    """What one ``deliver_pending`` call did.

    ``still_pending`` counts alerts left pending or being sent (possibly by another run);
    ``failures`` lists (id, error) of the alerts that became 'failed' in this call.
    """

    sent: int = 0
    digested: int = 0
    failed: int = 0
    still_pending: int = 0
    failures: tuple[tuple[int, str], ...] = ()
    stopped: str | None = None  # why the call stopped early (Slack unavailable, digest not posted)


@dataclass
class _Tally:
    sent: int = 0
    digested: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)
    stopped: str | None = None


def deliver_pending(
    state: StateStore,
    send: Sender,
    now: datetime,
    horizon: timedelta,
    lake_uri: str,
    max_attempts: int = 20,
    *,
    stale_after: timedelta = STALE_CLAIM,
    digest_limit: int = DIGEST_LIMIT,
) -> DeliveryReport:
    """Post pending alerts that fired within ``horizon`` of ``now`` (wall-clock time), digest older ones."""
    tally = _Tally()
    cutoff = now - horizon
    candidates = _candidates(state, store.now() - stale_after)
    recent = [alert_id for alert_id, fired_at in candidates if fired_at >= cutoff]
    old = [alert_id for alert_id, fired_at in candidates if fired_at < cutoff][:digest_limit]

    for alert_id in recent:
        claimed = _claim(state, [alert_id], store.now() - stale_after)
        if not claimed:
            continue  # another run has it
        row = claimed[0]
        result = _post_alert(row, send, lake_uri)
        if _settle(state, row, result, max_attempts) == FAILED:
            tally.failures.append((row.id, result.error or "unknown error"))
        elif result.ok:
            tally.sent += 1
        if not result.ok and result.retryable:
            tally.stopped = result.error
            break

    if old and tally.stopped is None:
        _deliver_digest(state, send, old, stale_after, tally)

    return DeliveryReport(
        sent=tally.sent,
        digested=tally.digested,
        failed=len(tally.failures),
        still_pending=_count_pending(state),
        failures=tuple(tally.failures),
        stopped=tally.stopped,
    )


# -- claims ------------------------------------------------------------------------------------
def _claimable(stale_before: datetime) -> sa.ColumnElement[bool]:
    """Pending, or claimed by a run that has not settled it for too long."""
    stale = sa.and_(
        alerts.c.status == SENDING,
        sa.or_(alerts.c.claimed_at.is_(None), alerts.c.claimed_at < stale_before),
    )
    return sa.or_(alerts.c.status == PENDING, stale)


def _candidates(state: StateStore, stale_before: datetime) -> list[tuple[int, datetime]]:
    """(id, fired_at) of every claimable alert, oldest first."""
    query = (
        sa.select(alerts.c.id, alerts.c.fired_at)
        .where(_claimable(stale_before))
        .order_by(alerts.c.fired_at, alerts.c.id)
    )
    with state.engine.connect() as conn:
        return [(r.id, r.fired_at) for r in conn.execute(query)]


def _claim(state: StateStore, ids: Sequence[int], stale_before: datetime) -> list[Row[Any]]:
    """Claim ``ids`` (those still claimable) in one transaction and return the claimed rows.

    One UPDATE per id, in id order: the rowcount says whether this run won the row, and a fixed
    lock order keeps concurrent PostgreSQL transactions from deadlocking. The transaction starts
    with a write, so SQLite takes its write lock first and cannot fail a later lock upgrade.
    A stale claim taken over is flagged as a possible duplicate (the dead run may have posted).
    """
    won: list[int] = []
    claimed_at = store.now()
    with state.begin() as conn:
        for alert_id in sorted(ids):
            update = (
                alerts.update()
                .where(alerts.c.id == alert_id, _claimable(stale_before))
                .values(
                    status=SENDING,
                    claimed_at=claimed_at,
                    possible_duplicate=sa.case(
                        (alerts.c.status == SENDING, sa.true()), else_=alerts.c.possible_duplicate
                    ),
                )
            )
            if conn.execute(update).rowcount == 1:
                won.append(alert_id)
        return _rows(conn, won)


def _rows(conn: Connection, ids: Sequence[int]) -> list[Row[Any]]:
    """The claimed rows, in fired_at order."""
    columns = (alerts.c.id, alerts.c.payload, alerts.c.attempts, alerts.c.possible_duplicate, alerts.c.fired_at)
    out: list[Row[Any]] = []
    for i in range(0, len(ids), _CHUNK):
        out.extend(conn.execute(sa.select(*columns).where(alerts.c.id.in_(ids[i : i + _CHUNK]))))
    return sorted(out, key=lambda r: (r.fired_at, r.id))


# -- one alert ---------------------------------------------------------------------------------
def _post_alert(row: Row[Any], send: Sender, lake_uri: str) -> SendResult:
    """Render and post one claimed alert; a payload we cannot render is a permanent failure."""
    try:
        message = render_alert(json.loads(row.payload), lake_uri, possible_duplicate=bool(row.possible_duplicate))
    except Exception as err:  # a broken payload must not block the outbox
        return SendResult(ok=False, error=f"cannot render alert: {type(err).__name__}: {err}")
    return _safe_send(send, message)


def _safe_send(send: Sender, message: Message) -> SendResult:
    """``send`` that cannot raise: an unexpected exception counts as an unknown outcome."""
    try:
        return send(message)
    except Exception as err:
        log.exception("Slack sender raised; treating the outcome as unknown")
        return SendResult(ok=False, error=f"{type(err).__name__}: {err}", retryable=True, maybe_delivered=True)


def next_status(result: SendResult, attempts: int, max_attempts: int) -> str:
    """The state after an attempt; ``attempts`` already counts this one."""
    if result.ok:
        return SENT
    if result.retryable and attempts < max_attempts:
        return PENDING
    return FAILED


def _settle(state: StateStore, row: Row[Any], result: SendResult, max_attempts: int) -> str:
    """Record the outcome of posting one claimed alert; returns its new status."""
    attempts = row.attempts + 1
    status = next_status(result, attempts, max_attempts)
    values: dict[str, Any] = {"status": status, "attempts": attempts}
    if status == SENT:
        values.update(sent_at=store.now(), slack_reply=result.reply, last_error=None)
    else:
        values.update(claimed_at=None, last_error=(result.error or "unknown error")[:MAX_ERROR])
        if result.maybe_delivered:
            values["possible_duplicate"] = True
    if status == FAILED:
        log.error("alert %s failed after %s attempt(s): %s", row.id, attempts, values["last_error"])
    with state.begin() as conn:
        update = alerts.update().where(alerts.c.id == row.id, alerts.c.status == SENDING).values(**values)
        if conn.execute(update).rowcount != 1:
            log.warning("alert %s was taken over by another run before it was settled", row.id)
    return status


# -- digest ------------------------------------------------------------------------------------
def _deliver_digest(state: StateStore, send: Sender, ids: Sequence[int], stale_after: timedelta, tally: _Tally) -> None:
    """One digest message for the old alerts this run could claim."""
    rows = _claim(state, ids, store.now() - stale_after)
    if not rows:
        return
    payloads = [_payload(r) for r in rows]
    message = render_digest(payloads, len(rows), possible_duplicate=any(r.possible_duplicate for r in rows))
    result = _safe_send(send, message)
    claimed = [r.id for r in rows]
    if result.ok:
        values: dict[str, Any] = {"status": DIGESTED, "sent_at": store.now(), "slack_reply": result.reply}
        values["last_error"] = None
        tally.digested = _update_claimed(state, claimed, values)
        return
    tally.stopped = f"digest not posted: {result.error}"
    values = {"status": PENDING, "claimed_at": None, "last_error": f"digest: {result.error}"[:MAX_ERROR]}
    if result.maybe_delivered:
        values["possible_duplicate"] = True
    _update_claimed(state, claimed, values)


def _payload(row: Row[Any]) -> dict[str, Any]:
    """The alert dict, or a stub naming the row when the stored JSON is unreadable."""
    try:
        payload = json.loads(row.payload)
    except ValueError:
        payload = None
    return payload if isinstance(payload, dict) else {"detection": f"alert {row.id} (unreadable payload)"}


def _update_claimed(state: StateStore, ids: Sequence[int], values: dict[str, Any]) -> int:
    """Settle rows this run still holds; returns how many it updated."""
    done = 0
    with state.begin() as conn:
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            update = alerts.update().where(alerts.c.id.in_(chunk), alerts.c.status == SENDING).values(**values)
            done += conn.execute(update).rowcount
    return done


def _count_pending(state: StateStore) -> int:
    query = sa.select(sa.func.count()).select_from(alerts).where(alerts.c.status.in_([PENDING, SENDING]))
    with state.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
