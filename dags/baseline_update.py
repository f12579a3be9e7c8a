"""Daily, after the day's last hourly ingest: merge what was delivered since the previous update."""

from __future__ import annotations

import pendulum
from airflow.providers.standard.sensors.external_task import ExternalTaskSensor
from airflow.sdk import CronDataIntervalTimetable, dag, task
from trailguard import airflow_glue as glue
from trailguard.ops import notify_failure
from trailguard.settings import Settings

SETTINGS = Settings.from_env()


@dag(
    dag_id="baseline_update",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.instance(SETTINGS.start_date),
    catchup=SETTINGS.catchup,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=5), "on_failure_callback": notify_failure},
    tags=["trailguard", "baselines"],
    doc_md=__doc__,
)
def baseline_update() -> None:
    last_hour_ingested = ExternalTaskSensor(
        task_id="wait_for_last_hour",
        external_dag_id="cloudtrail_ingest",
        external_task_id="ingest",
        execution_date_fn=glue.ingest_run_date,  # the ingest of [23:00, 24:00) before this run's midnight
        allowed_states=["success"],
        failed_states=["failed"],
        mode="reschedule",
        poke_interval=120,
        timeout=6 * 3600,
    )

    @task(multiple_outputs=False)
    def update(**context) -> list:
        return glue.baseline_update(context)

    last_hour_ingested >> update()


baseline_update()
