"""Alert delivery: a small state machine over ``store.alerts``.

States (docs/alerts.md is the operator's version)::

    pending --claim--> sending --ok--> sent
                          |----old, in the digest--> digested
                          |----retryable / config error / unknown--> pending (attempts+1)
                          `----this message rejected by Slack---> failed --requeue--> pending

Only 'pending' rows (and stale 'sending' claims) are ever delivered: alerts that ``trailguard
replay`` stores without ``--notify`` ('replayed') never are. A retryable error never turns into
'failed', however long Slack is down: ``attempts`` only counts, for the log and the operators.

Delivery is *at least once*. A post whose outcome is unknown (timeout or reset after the
request went out, Slack's ``internal_error``/``fatal_error``, a 502/504) stays pending with
``possible_duplicate`` set, and the re-send says "(possible duplicate: an earlier attempt may
have been delivered)". We prefer a marked possible duplicate to a lost alert.

Claims make concurrent runs safe: a row is posted only by the run whose
``UPDATE ... SET status='sending' WHERE id=? AND status='pending'`` changed it (rowcount 1),
which is atomic on SQLite and PostgreSQL alike. While a row is 'sending', ``claimed_at`` holds
the claim time and is the claim's token: a run settles only rows still carrying its own
``claimed_at``. A claim older than ``stale_after`` (a run that died mid-post) is taken over and
the re-send is marked as a possible duplicate, since the dead run may have posted it.

Alerts that fired before ``now - horizon`` (backfills, catch-up after an outage) are not posted
one by one: they go into one digest per ``digest_limit`` alerts and become 'digested'. A digest
Slack does not take (down, configuration) leaves them pending; one Slack rejects as a message is
split in halves until the alerts it can take are digested and the ones it cannot are 'failed'.

A retryable failure or a configuration error stops the call: Slack is down, throttling or set
up wrongly, so the other alerts wait for the next run untouched instead of each burning an
attempt. ``DeliveryReport.problem`` says when the operators must act (failed alerts, a
configuration error); the deliver task then fails so its failure callback tells them.
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
from trailguard.store import DIGESTED, FAILED, PENDING, SENDING, SENT, StateStore, alerts

log = logging.getLogger(__name__)

STALE_CLAIM = timedelta(minutes=15)  # far above one send: timeout x (1 + retries) + Retry-After
DIGEST_LIMIT = 5000  # alerts per digest message (bounded memory; a digest lists the top 20)
DIGEST_POSTS = 32  # digest posts per call, splits included: enough to isolate a rejected alert in 5000
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
    config_error: bool = False  # it stopped because the Slack setup is wrong

    @property
    def problem(self) -> str | None:
        """What the operators must act on, or None when waiting (or nothing) will do."""
        parts = []
        if self.config_error:
            parts.append(f"alert delivery stopped by a Slack configuration error: {self.stopped}")
        if self.failures:
            shown = "; ".join(f"alert {alert_id}: {error}" for alert_id, error in self.failures[:5])
            more = f" and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
            parts.append(f"{len(self.failures)} alert(s) rejected by Slack and marked failed ({shown}{more})")
        if not parts:
            return None
        waiting = f"{self.still_pending} alert(s) wait, pending. " if self.still_pending else ""
        return ". ".join(parts) + f". {waiting}See docs/alerts.md to fix and re-queue."


@dataclass
class _Tally:
    sent: int = 0
    digested: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)
    stopped: str | None = None
    config_error: bool = False
    digest_posts: int = DIGEST_POSTS  # left in this call

    def stop(self, reason: str, result: SendResult) -> None:
        self.stopped, self.config_error = reason, result.config_error


def deliver_pending(
    state: StateStore,
    send: Sender,
    now: datetime,
    horizon: timedelta,
    lake_uri: str,
    *,
    stale_after: timedelta = STALE_CLAIM,
    digest_limit: int = DIGEST_LIMIT,
) -> DeliveryReport:
    """Post pending alerts that fired within ``horizon`` of ``now`` (wall-clock time), digest older ones."""
    tally = _Tally()
    cutoff = now - horizon
    candidates = _candidates(state, store.now() - stale_after)
    recent = [alert_id for alert_id, fired_at in candidates if fired_at >= cutoff]
    old = [alert_id for alert_id, fired_at in candidates if fired_at < cutoff]

    for alert_id in recent:
        claimed = _claim(state, [alert_id], store.now() - stale_after)
        if not claimed:
            continue  # another run has it
        row = claimed[0]
        result = _post_alert(row, send, lake_uri)
        status = _settle(state, row, result)
        if status == FAILED:
            tally.failures.append((row.id, result.error or "unknown error"))
        elif status == SENT:
            tally.sent += 1
        else:
            tally.stop(result.error or "unknown error", result)
            break

    for i in range(0, len(old), digest_limit):
        if tally.stopped is not None:
            break
        rows = _claim(state, old[i : i + digest_limit], store.now() - stale_after)
        if rows:
            _deliver_digest(state, send, rows, tally)

    return DeliveryReport(
        sent=tally.sent,
        digested=tally.digested,
        failed=len(tally.failures),
        still_pending=_count_pending(state),
        failures=tuple(tally.failures),
        stopped=tally.stopped,
        config_error=tally.config_error,
    )


def requeue_failed(state: StateStore, ids: Sequence[int] | None = None) -> int:
    """Put failed alerts (all, or those of ``ids``) back to pending; returns how many.

    For after the cause is fixed: the next delivery run posts them, or digests them when they
    fired before the horizon. ``attempts`` and ``last_error`` stay, as the record of what happened.
    """
    where = alerts.c.status == FAILED
    if ids is not None:
        where = sa.and_(where, alerts.c.id.in_(list(ids)))
    with state.begin() as conn:
        return conn.execute(alerts.update().where(where).values(status=PENDING, claimed_at=None)).rowcount


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
    columns = (
        alerts.c.id,
        alerts.c.payload,
        alerts.c.attempts,
        alerts.c.possible_duplicate,
        alerts.c.fired_at,
        alerts.c.claimed_at,
    )
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


def next_status(result: SendResult) -> str:
    """The state after an attempt: anything worth trying again stays pending, however often."""
    if result.ok:
        return SENT
    return PENDING if result.retryable else FAILED


def _settle(state: StateStore, row: Row[Any], result: SendResult) -> str:
    """Record the outcome of posting one claimed alert; returns its new status."""
    status = next_status(result)
    values: dict[str, Any] = {"status": status, "attempts": alerts.c.attempts + 1}
    if status == SENT:
        values.update(sent_at=store.now(), slack_reply=result.reply, last_error=None)
    else:
        values.update(_unsent(result.error or "unknown error", result))
    if status == FAILED:
        log.error("alert %s failed after %s attempt(s): %s", row.id, row.attempts + 1, values["last_error"])
    if _update_claimed(state, [row.id], row.claimed_at, values) != 1:
        log.warning("alert %s was taken over by another run before it was settled", row.id)
    return status


def _unsent(error: str, result: SendResult) -> dict[str, Any]:
    """Column values for a post that did not (surely) happen."""
    values: dict[str, Any] = {"claimed_at": None, "last_error": error[:MAX_ERROR]}
    if result.maybe_delivered:
        values["possible_duplicate"] = True
    return values


# -- digest ------------------------------------------------------------------------------------
def _deliver_digest(state: StateStore, send: Sender, rows: list[Row[Any]], tally: _Tally) -> None:
    """Digest claimed old alerts; a digest Slack rejects as a message is split in halves.

    Splitting stops at single alerts (those become 'failed') or when this call's digest posts
    run out; whatever is not settled then goes back to pending, for the next call.
    """
    claimed_at = rows[0].claimed_at
    parts = [rows]
    while parts:
        if tally.digest_posts == 0:
            left = _release(state, parts, claimed_at)
            tally.stopped = f"digest post limit reached; {left} old alert(s) wait for the next run"
            return
        tally.digest_posts -= 1
        part = parts.pop(0)
        ids = [r.id for r in part]
        result = _post_digest(part, send)
        error = f"digest: {result.error}"
        tried: dict[str, Any] = {"attempts": alerts.c.attempts + 1}
        if result.ok:
            tried.update(status=DIGESTED, sent_at=store.now(), slack_reply=result.reply, last_error=None)
            tally.digested += _update_claimed(state, ids, claimed_at, tried)
            continue
        if result.retryable:
            _update_claimed(state, ids, claimed_at, {**tried, "status": PENDING, **_unsent(error, result)})
            _release(state, parts, claimed_at)
            tally.stop(f"digest not posted: {result.error}", result)
            return
        if len(part) == 1:
            tried.update(status=FAILED, **_unsent(error, result))
            tally.failures.append((part[0].id, error))
        else:
            tried["last_error"] = error[:MAX_ERROR]
            parts[:0] = [part[: len(part) // 2], part[len(part) // 2 :]]
        _update_claimed(state, ids, claimed_at, tried)


def _release(state: StateStore, parts: Sequence[Sequence[Row[Any]]], claimed_at: datetime) -> int:
    """Give claimed rows back to pending, untried; returns how many."""
    ids = [r.id for part in parts for r in part]
    return _update_claimed(state, ids, claimed_at, {"status": PENDING, "claimed_at": None})


def _post_digest(rows: Sequence[Row[Any]], send: Sender) -> SendResult:
    """Render and post one digest; a digest we cannot render is rejected like a bad message."""
    try:
        payloads = [_payload(r) for r in rows]
        message = render_digest(payloads, len(rows), possible_duplicate=any(r.possible_duplicate for r in rows))
    except Exception as err:
        return SendResult(ok=False, error=f"cannot render digest: {type(err).__name__}: {err}")
    return _safe_send(send, message)


def _payload(row: Row[Any]) -> dict[str, Any]:
    """The alert dict, or a stub naming the row when the stored JSON is unreadable."""
    try:
        payload = json.loads(row.payload)
    except ValueError:
        payload = None
    return payload if isinstance(payload, dict) else {"detection": f"alert {row.id} (unreadable payload)"}


def _update_claimed(state: StateStore, ids: Sequence[int], claimed_at: datetime, values: dict[str, Any]) -> int:
    """Update rows this run still holds (its claim, by ``claimed_at``); returns how many."""
    done = 0
    with state.begin() as conn:
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            mine = sa.and_(alerts.c.id.in_(chunk), alerts.c.status == SENDING, alerts.c.claimed_at == claimed_at)
            done += conn.execute(alerts.update().where(mine).values(**values)).rowcount
    return done


def _count_pending(state: StateStore) -> int:
    query = sa.select(sa.func.count()).select_from(alerts).where(alerts.c.status.in_([PENDING, SENDING]))
    with state.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
