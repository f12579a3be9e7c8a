"""Everything Airflow-specific: settings from Variables, S3 through the amazon provider, intervals.

DAG files call these and nothing else, so the rest of the package runs without Airflow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import ChainMap
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from trailguard.settings import Settings

if TYPE_CHECKING:  # DAG files import this module when parsed: the pipeline itself loads in tasks only
    from trailguard.runtime import Runtime

log = logging.getLogger(__name__)

SETTINGS_VARIABLE = "trailguard_settings"


def settings() -> Settings:
    """Environment, overridden by the JSON object in the Airflow Variable ``trailguard_settings``."""
    from airflow.sdk import Variable

    overrides = Variable.get(SETTINGS_VARIABLE, default=None)
    values = json.loads(overrides) if overrides else {}
    if not isinstance(values, dict):
        raise ValueError(f"Variable {SETTINGS_VARIABLE} must hold a JSON object of TRAILGUARD_* settings")
    return Settings.from_mapping(ChainMap({k: str(v) for k, v in values.items()}, os.environ))


def runtime() -> Runtime:
    """A Runtime whose S3 access (source and lake) goes through the configured AWS connection."""
    from trailguard.runtime import Runtime

    cfg = settings()
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=cfg.aws_conn_id)
    lake_fs = None
    if cfg.lake.startswith("s3://"):
        from trailguard.lake import s3_filesystem

        creds = hook.get_credentials()
        lake_fs = s3_filesystem(
            endpoint_url=hook.conn_config.endpoint_url,
            access_key=creds.access_key,
            secret_key=creds.secret_key,
            session_token=creds.token,
            region=hook.conn_region_name,
        )
    return Runtime(cfg, s3_client=hook.get_conn, lake_filesystem=lake_fs)


def interval(context: dict[str, Any], default_hours: int = 1) -> tuple[datetime, datetime]:
    """[start, end) of the run. Manual and asset-triggered runs have no data interval in
    Airflow 3; they cover the ``default_hours`` before ``run_after``, on the hour."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None and end > start:
        return start, end
    end = _on_the_hour(context["dag_run"].run_after)
    return end - timedelta(hours=default_hours), end


def _on_the_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def ingest_interval(context: dict[str, Any]) -> dict[str, Any]:
    """The ingest task: the run's interval plus the late-delivery look-back (the ledger makes
    the overlap free: objects already ingested are not read again), or the range in the
    run's ``start``/``end`` params (a manual run from the UI or the demo)."""
    rt = runtime()
    params = context.get("params") or {}
    if params.get("start") and params.get("end"):
        start, end = _parse_at(params["start"]), _parse_at(params["end"])
    else:
        start, end = interval(context)
        start -= timedelta(hours=rt.settings.late_lookback_hours)
    summary = rt.ingest(rt.settings.source, start, end)
    log.info("ingest %s .. %s from %s\n%s", start.isoformat(), end.isoformat(), rt.settings.source, summary.text())
    return {**summary.as_dict(), "start": start.isoformat(), "end": end.isoformat()}


def detection_ids() -> list[str]:
    """Spec ids for mapping one task per detection (read at parse time: small local YAML)."""
    from trailguard.specs import load_specs

    return [spec.id for spec in load_specs(Settings.from_env().detections_dir)]


def _at(context: dict[str, Any]) -> datetime:
    return interval(context)[1]


def baseline_initial(context: dict[str, Any]) -> list[dict[str, Any]]:
    rt = runtime()
    params = context["params"]
    at = _parse_at(params.get("at")) or _at(context)
    reports = [rt.engine.baseline_initial(spec, at, params.get("lookback_days")).as_dict() for spec in rt.specs]
    log.info("baseline initial at %s: %s", at.isoformat(), json.dumps(reports))
    return reports


def baseline_update(context: dict[str, Any]) -> list[dict[str, Any]]:
    rt = runtime()
    at = _at(context)
    reports = [rt.engine.baseline_update(spec, at).as_dict() for spec in rt.specs]
    log.info("baseline update at %s: %s", at.isoformat(), json.dumps(reports))
    return reports


def detect(spec_id: str, context: dict[str, Any]) -> dict[str, Any]:
    rt = runtime()
    report = rt.engine.detect(rt.spec(spec_id), _at(context))
    log.info("%s", json.dumps(report.as_dict()))
    for alert in report.alerts:
        log.info("ALERT %s", json.dumps(alert.as_dict()))
    return report.as_dict()


def deliver_alerts() -> dict[str, Any]:
    """The deliver task: post pending alerts to Slack.

    It needs the state store and Slack, not AWS: the messages' DuckDB query needs only the lake
    URI, so a broken AWS connection cannot hold alerts back. When alerts ended failed or a Slack
    configuration error stopped delivery, the task fails without retrying (a retry would find
    nothing new and succeed), so its failure callback tells ops. A Slack outage does not fail it:
    the alerts wait, pending, and pipeline health reports them if they wait too long.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from trailguard.runtime import Runtime

    rt = Runtime(settings())
    try:
        report = rt.deliver_alerts(datetime.now(timezone.utc))
    finally:
        rt.state.close()
    log.info("slack delivery: %s", report)
    if report.problem:
        raise AirflowFailException(report.problem)
    return dataclasses.asdict(report)


def _parse_at(value: str | None) -> datetime | None:
    from trailguard.settings import _datetime

    return _datetime(value) if value else None


def ingest_run_date(_logical_date: datetime, **context: Any) -> datetime:
    """``ExternalTaskSensor.execution_date_fn``: the logical date of the cloudtrail_ingest run of the
    hour that ends at this run's T (the hourly detections' and the daily update's alike).

    - scheduled and backfill runs (logical date = interval start): the scheduled ingest run of
      [T - 1h, T), whose logical date is its start;
    - manual runs without a logical date (Airflow 3's default): T is ``run_after`` on the hour, as
      ``interval`` computes it, and the run waits for that hour's scheduled ingest;
    - runs triggered with a logical date (``dag.test``, the UI): the ingest run triggered with the
      same logical date, whose interval ends at the same T.
    """
    run = context["dag_run"]
    if run.logical_date is None:
        return _on_the_hour(run.run_after) - timedelta(hours=1)
    if run.logical_date == context.get("data_interval_start"):
        return context["data_interval_end"] - timedelta(hours=1)
    return run.logical_date
