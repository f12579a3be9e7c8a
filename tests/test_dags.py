"""DAG integrity for every DAG file, and the ingest DAG run for real against S3 over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from airflow.sdk import CronDataIntervalTimetable
from builders import utc
from trailguard.lake import s3_filesystem

DAG_IDS = {
    "cloudtrail_ingest",
    "detections",
    "baseline_update",
    "baseline_initial",
    "pipeline_health",
    "pipeline_daily_summary",
}


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) >= DAG_IDS


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_every_dag_is_tagged_retried_and_documented(dagbag, dag_id: str) -> None:
    dag = dagbag.get_dag(dag_id)
    assert "trailguard" in dag.tags
    assert dag.doc_md
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.on_failure_callback, f"{task.task_id} has no failure callback to the ops channel"


def test_ingest_has_real_hourly_intervals(dagbag) -> None:
    dag = dagbag.get_dag("cloudtrail_ingest")
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.max_active_runs == 1
    assert [o.name for o in dag.get_task("announce").outlets] == ["trailguard_events"]


@pytest.mark.e2e
def test_ingest_dag_pulls_from_s3_over_http_into_an_s3_lake(
    dagbag, s3, moto_endpoint: str, shared_cloudtrail: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.create_bucket(Bucket="trail-bucket")
    s3.create_bucket(Bucket="lake-bucket")
    flaws = shared_cloudtrail / "flaws2_defender"
    files = sorted(flaws.rglob("*.json.gz"))
    for path in files:
        s3.upload_file(str(path), "trail-bucket", f"cloudtrail/{path.relative_to(flaws).as_posix()}")
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"region_name": "us-east-1", "endpoint_url": moto_endpoint},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    monkeypatch.setenv("TRAILGUARD_SOURCE", "s3://trail-bucket/cloudtrail")
    monkeypatch.setenv("TRAILGUARD_LAKE", "s3://lake-bucket/lake")
    monkeypatch.setenv("TRAILGUARD_DB", f"sqlite:///{tmp_path}/state.db")

    dag = dagbag.get_dag("cloudtrail_ingest")
    # Interval [23:00, 00:00) plus the 2-hour late-delivery look-back covers all 8 flaws2 files.
    run = dag.test(logical_date=utc(2018, 11, 29, 0, 0))
    assert run.state == "success"
    assert run.get_task_instance("announce").state == "success"

    fs = s3_filesystem(endpoint_url=moto_endpoint, access_key="testing", secret_key="testing")
    # As Athena or Trino would read it: every file under events/, Hive partitions from the folders.
    dataset = ds.dataset("lake-bucket/lake/events", filesystem=fs, format="parquet", partitioning="hive")
    assert set(dataset.schema.names) >= {"event_id", "raw", "event_date", "event_hour"}
    table = dataset.to_table(columns=["event_id", "source_key"])
    assert table.num_rows == 37 == len(set(table.column("event_id").to_pylist()))
    assert all(
        key.startswith("s3://trail-bucket/cloudtrail/AWSLogs/") for key in table.column("source_key").to_pylist()
    )

    again = dag.test(logical_date=utc(2018, 11, 29, 0, 0))
    assert again.state == "success"
    assert again.get_task_instance("announce").state == "skipped"  # nothing new: no asset event
    assert dataset.count_rows() == 37
