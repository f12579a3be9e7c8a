"""Hourly, after that hour's ingest: every detection spec over the 24-hour window, then Slack."""

from __future__ import annotations

import pendulum
from airflow.providers.standard.sensors.external_task import ExternalTaskSensor
from airflow.sdk import CronDataIntervalTimetable, dag, task
from trailguard import airflow_glue as glue
from trailguard.ops import notify_failure
from trailguard.settings import Settings

SETTINGS = Settings.from_env()


@dag(
    dag_id="detections",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.instance(SETTINGS.start_date),
    catchup=SETTINGS.catchup,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=2), "on_failure_callback": notify_failure},
    tags=["trailguard", "detections"],
    doc_md=__doc__,
)
def detections() -> None:
    ingested = ExternalTaskSensor(
        task_id="wait_for_ingest",
        external_dag_id="cloudtrail_ingest",
        external_task_id="ingest",
        execution_date_fn=glue.ingest_run_date,  # the ingest of the hour ending at T, manual runs too
        allowed_states=["success"],
        failed_states=["failed"],
        mode="reschedule",
        poke_interval=60,
        timeout=3 * 3600,
    )

    @task(multiple_outputs=False)
    def detect(spec_id: str, **context) -> dict:
        return glue.detect(spec_id, context)

    @task(trigger_rule="all_done", multiple_outputs=False)
    def deliver() -> dict:
        return glue.deliver_alerts()

    ingested >> detect.expand(spec_id=glue.detection_ids()) >> deliver()


detections()
