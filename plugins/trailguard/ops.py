"""Telling the operators about the pipeline itself: task failures, health checks, the daily summary.

``notify_failure`` is every DAG's task ``on_failure_callback``. It posts to the ops Slack
connection (``TRAILGUARD_OPS_SLACK_CONN_ID``) and never raises: a broken Slack or an odd
callback context must not mask the task's own error. Exception texts are redacted (webhook
URLs, tokens, passwords in URLs) before they reach Slack or a log. A sensor that failed only
because the task it waits for failed posts nothing: that task's own callback told ops.

Airflow is imported only inside functions, so the package still imports without it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from trailguard import health, slack
from trailguard.settings import Settings
from trailguard.slack import Message

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://localhost:8080"
MAX_ERROR = 900
_SAFE_BASE_URL = re.compile(r"https?://[^\s<>|`]+")
_URL_PASSWORD = re.compile(r"(?<=://)[^/\s:@]*:[^/\s@]*@")


@dataclass(frozen=True)
class FailedTask:
    """What a failure notice says, read out of the callback context."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int
    max_tries: int | None
    interval_start: datetime | None
    interval_end: datetime | None
    run_after: datetime | None
    error: str


# -- the failure callback ------------------------------------------------------------------------
def notify_failure(context: Mapping[str, Any]) -> None:
    """Task ``on_failure_callback``: post the failure to the ops Slack connection; never raises."""
    try:
        if upstream_failed(context.get("exception")):
            log.info("no failure notice: the external task this sensor waits for failed, and said so")
            return
        message = render_failure(failed_task(context), airflow_base_url())
        cfg = ops_settings()
        result = slack.sender(cfg, cfg.ops_slack_conn_id)(message)
    except Exception as err:
        log.warning("failure notice not posted: %s", describe_error(err))
        return
    if not result.ok:
        log.warning("failure notice not posted: %s", result.error)


def upstream_failed(error: object) -> bool:
    """The ExternalTaskSensor's error for "the external task or DAG failed" (not its timeout,
    which means the upstream never ran and is worth a notice of its own)."""
    try:
        from airflow.providers.standard.exceptions import (
            ExternalDagFailedError,
            ExternalTaskFailedError,
            ExternalTaskGroupFailedError,
        )
    except ImportError:  # pragma: no cover - the standard provider is a requirement
        return False
    return isinstance(error, (ExternalDagFailedError, ExternalTaskFailedError, ExternalTaskGroupFailedError))


def failed_task(context: Mapping[str, Any]) -> FailedTask:
    """The facts of a failure, tolerating a context with parts missing."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    max_tries = _attr(ti, "max_tries")
    return FailedTask(
        dag_id=str(_attr(ti, "dag_id") or _attr(context.get("dag"), "dag_id") or "unknown DAG"),
        task_id=str(_attr(ti, "task_id") or _attr(context.get("task"), "task_id") or "unknown task"),
        run_id=str(_attr(ti, "run_id") or context.get("run_id") or _attr(dag_run, "run_id") or ""),
        map_index=_int(_attr(ti, "map_index"), -1),
        try_number=_int(_attr(ti, "try_number"), 0),
        max_tries=_int(max_tries, 0) if max_tries is not None else None,
        interval_start=_datetime(context.get("data_interval_start") or _attr(dag_run, "data_interval_start")),
        interval_end=_datetime(context.get("data_interval_end") or _attr(dag_run, "data_interval_end")),
        run_after=_datetime(_attr(dag_run, "run_after")),
        error=describe_error(context.get("exception")),
    )


def render_failure(task: FailedTask, base_url: str) -> Message:
    """The failure notice: the error first (Slack's notification preview), then what failed and
    when, and a link to the task's log."""
    name = task.task_id if task.map_index < 0 else f"{task.task_id}[{task.map_index}]"
    lines = [task.error, f"DAG: {task.dag_id}", f"task: {name}", f"run: {task.run_id or 'unknown'}", _when(task)]
    if task.try_number:
        total = f" of {task.max_tries + 1}" if task.max_tries is not None else ""
        lines.append(f"failed on try {task.try_number}{total}; no retry left")
    message = slack.render_ops(f":rotating_light: Task failed: {task.dag_id}.{name}", lines)
    url = task_log_url(base_url, task.dag_id, task.run_id, task.task_id, task.try_number, task.map_index)
    if url is None or not task.run_id:
        return message
    link = {"type": "section", "text": {"type": "mrkdwn", "text": f"<{url}|Open the task log in Airflow>"}}
    return Message(text=message.text, blocks=[*message.blocks, link][: slack.MAX_BLOCKS])


def task_log_url(
    base_url: str, dag_id: str, run_id: str, task_id: str, try_number: int = 0, map_index: int = -1
) -> str | None:
    """The Airflow 3 UI page of a task instance, which opens on its log (same form as
    ``TaskInstance.log_url``); None when ``base_url`` could break a Slack link."""
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    if not _SAFE_BASE_URL.fullmatch(base):
        return None
    path = "/".join(quote(part, safe="") for part in ("dags", dag_id, "runs", run_id, "tasks", task_id))
    mapped = f"/mapped/{map_index}" if map_index >= 0 else ""
    query = f"?try_number={try_number}" if try_number > 0 else ""
    return f"{base}/{path}{mapped}{query}"


def describe_error(error: object) -> str:
    """The exception as one redacted, truncated line (escaping happens in ``render_ops``)."""
    if error is None:
        return "no exception in the callback context"
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return slack.truncate(redact_secrets(text), MAX_ERROR)


def redact_secrets(text: str) -> str:
    """Secrets Airflow's masker knows in this process (connection passwords it handed out),
    Slack webhook URLs and tokens, and ``user:password@`` in any URL, replaced by ``***``."""
    return slack.redact(_URL_PASSWORD.sub("***@", _airflow_redact(text)))


def _airflow_redact(text: str) -> str:
    try:
        from airflow.sdk.log import redact

        return str(redact(text))
    except Exception:  # no Airflow, or a masker that is not set up: the patterns still apply
        return text


def airflow_base_url() -> str:
    """``[api] base_url`` (the UI's address), else Airflow's own fallback ``http://localhost:8080``."""
    try:
        from airflow.sdk.configuration import conf
    except ImportError:  # pragma: no cover - older task SDKs
        from airflow.configuration import conf
    return str(conf.get("api", "base_url", fallback=DEFAULT_BASE_URL) or DEFAULT_BASE_URL)


def ops_settings() -> Settings:
    """The settings (environment plus the ``trailguard_settings`` Variable); a broken setting or
    Variable must not stop a failure notice, so fall back to the environment, then defaults."""
    try:
        return _settings()
    except Exception:
        pass
    try:
        return Settings.from_env()
    except Exception:
        return Settings()


def _settings() -> Settings:
    from trailguard import airflow_glue

    return airflow_glue.settings()


# -- the health DAG's tasks ----------------------------------------------------------------------
def health_check(context: Mapping[str, Any]) -> dict[str, Any]:
    """Task ``check``: reconcile health incidents at the run's data interval end, post notices."""
    cfg = _settings()
    from trailguard.runtime import Runtime

    state = Runtime.local(cfg).state
    try:
        send = slack.sender(cfg, cfg.ops_slack_conn_id)
        report = health.run_health(state, evaluation_time(context), send, health.Thresholds.from_settings(cfg))
    finally:
        state.close()
    log.info("pipeline health: %s", report.as_dict())
    return report.as_dict()


def post_daily_summary(context: Mapping[str, Any]) -> dict[str, Any]:
    """Task ``post_summary``: the previous UTC day's numbers, once per day; fails (and retries)
    if not posted."""
    cfg = _settings()
    start, end = previous_day(evaluation_time(context))
    from trailguard.runtime import Runtime

    state = Runtime.local(cfg).state
    try:
        result = health.post_summary(state, start, end, slack.sender(cfg, cfg.ops_slack_conn_id))
    finally:
        state.close()
    if not result.ok:
        raise RuntimeError(f"daily summary not posted: {result.error}")
    return {"day_start": start.isoformat(), "day_end": end.isoformat(), "reply": result.reply}


def evaluation_time(context: Mapping[str, Any]) -> datetime:
    """The run's data interval end; manual and asset runs have none in Airflow 3, so run_after."""
    end = context.get("data_interval_end") or context["dag_run"].run_after
    return as_utc(end)


def previous_day(moment: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the UTC day before the one ``moment`` falls in."""
    end = as_utc(moment).replace(hour=0, minute=0, second=0, microsecond=0)
    return end - timedelta(days=1), end


def as_utc(value: datetime) -> datetime:
    """A plain ``datetime`` in UTC (Airflow hands out pendulum objects)."""
    v = value.astimezone(timezone.utc)
    return datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, tzinfo=timezone.utc)


# -- small helpers -------------------------------------------------------------------------------
def _when(task: FailedTask) -> str:
    if task.interval_start is not None and task.interval_end is not None and task.interval_end > task.interval_start:
        return f"data interval: {_iso(task.interval_start)} to {_iso(task.interval_end)}"
    if task.run_after is not None:
        return f"run after: {_iso(task.run_after)} (no data interval)"
    return "data interval: unknown"


def _iso(value: datetime) -> str:
    return as_utc(value).strftime("%Y-%m-%d %H:%M UTC")


def _attr(obj: object, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # a lazy attribute that needs a server
        return None


def _int(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


def _datetime(value: object) -> datetime | None:
    return value if isinstance(value, datetime) else None
