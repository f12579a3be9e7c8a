"""Hourly: CloudTrail objects delivered in the hour (plus a late-delivery look-back) -> events lake."""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task
from trailguard import airflow_glue as glue
from trailguard.ops import notify_failure
from trailguard.settings import Settings

SETTINGS = Settings.from_env()
EVENTS = Asset("trailguard_events", uri="trailguard://lake/events")


@dag(
    dag_id="cloudtrail_ingest",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.instance(SETTINGS.start_date),
    catchup=SETTINGS.catchup,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=2), "on_failure_callback": notify_failure},
    params={
        "start": Param(None, type=["null", "string"], description="ingest this range instead (ISO 8601)"),
        "end": Param(None, type=["null", "string"], description="end of that range (ISO 8601)"),
    },
    tags=["trailguard", "ingest"],
    doc_md=__doc__,
)
def cloudtrail_ingest() -> None:
    @task(multiple_outputs=False)
    def ingest(**context) -> dict:
        return glue.ingest_interval(context)

    @task.short_circuit
    def new_events_landed(summary: dict) -> bool:
        return summary["new_events"] > 0

    @task(outlets=[EVENTS])
    def announce(summary: dict, *, outlet_events=None) -> None:
        outlet_events[EVENTS].extra = {
            "start": summary["start"],
            "end": summary["end"],
            "events": summary["new_events"],
        }

    summary = ingest()
    new_events_landed(summary) >> announce(summary)


cloudtrail_ingest()
