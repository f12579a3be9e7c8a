"""Hourly at :15: is the pipeline itself healthy?

CloudTrail delivery gaps per account/region, ingest lag, quarantine growth, stale baselines,
alerts Slack rejected and alerts waiting too long to post become incidents (`trailguard.health`);
each one posts to the ops Slack connection (`TRAILGUARD_OPS_SLACK_CONN_ID`) once when it starts
and once when it clears. Evaluated at the run's data interval end. See docs/alerts.md.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task
from trailguard import ops
from trailguard.settings import Settings

SETTINGS = Settings.from_env()
DEFAULT_ARGS = {"retries": 1, "retry_delay": pendulum.duration(minutes=2), "on_failure_callback": ops.notify_failure}
SUMMARY_DOC = """Daily at 00:30 UTC: the previous UTC day in numbers (events and objects ingested, records
quarantined, alerts per detection, alerts waiting or failed, health incidents still open), posted once
to the ops Slack connection."""


@dag(
    dag_id="pipeline_health",
    schedule=CronDataIntervalTimetable("15 * * * *", timezone="UTC"),
    start_date=pendulum.instance(SETTINGS.start_date),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["trailguard", "ops"],
    doc_md=__doc__,
)
def pipeline_health() -> None:
    @task(multiple_outputs=False)
    def check(**context) -> dict:
        return ops.health_check(context)

    check()


@dag(
    dag_id="pipeline_daily_summary",
    schedule=CronDataIntervalTimetable("30 0 * * *", timezone="UTC"),
    start_date=pendulum.instance(SETTINGS.start_date),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["trailguard", "ops"],
    doc_md=SUMMARY_DOC,
)
def pipeline_daily_summary() -> None:
    @task(multiple_outputs=False)
    def post_summary(**context) -> dict:
        return ops.post_daily_summary(context)

    post_summary()


pipeline_health()
pipeline_daily_summary()
