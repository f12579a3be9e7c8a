"""Triggered once (and for re-baselining): build every detection's baseline from the lake's history."""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task
from trailguard import airflow_glue as glue
from trailguard.ops import notify_failure
from trailguard.settings import Settings

SETTINGS = Settings.from_env()


@dag(
    dag_id="baseline_initial",
    schedule=None,
    start_date=pendulum.instance(SETTINGS.start_date),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": pendulum.duration(minutes=2), "on_failure_callback": notify_failure},
    params={
        "lookback_days": Param(90, type="integer", minimum=1, description="days of history before T"),
        "at": Param(None, type=["null", "string"], description="T (ISO 8601); default: the run's hour"),
    },
    tags=["trailguard", "baselines"],
    doc_md=__doc__,
)
def baseline_initial() -> None:
    @task(multiple_outputs=False)
    def build(**context) -> list:
        return glue.baseline_initial(context)

    build()


baseline_initial()
