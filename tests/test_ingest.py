"""Ingest end to end on local folders: exactly-once events, quarantine, idempotent re-runs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from builders import gz, record, utc, write_log
from trailguard.ingest import ingest
from trailguard.lake import Lake
from trailguard.sources import LocalStore
from trailguard.store import StateStore


def lake_sql(lake: Lake, query: str, *params: object) -> list[tuple]:
    """``query`` over the lake's files as DuckDB reads them as-is (``events`` is the view)."""
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW events AS SELECT * FROM read_parquet('{lake.events}/*/*/*.parquet', hive_partitioning = true)"
    )
    return con.execute(query, list(params)).fetchall()


def lake_counts(lake: Lake) -> tuple[int, int]:
    return lake_sql(lake, "SELECT count(*), count(DISTINCT event_id) FROM events")[0]


@pytest.fixture
def parts(tmp_path: Path):
    return Lake(str(tmp_path / "lake")), StateStore(f"sqlite:///{tmp_path}/state.db")


def test_shared_data_gives_every_event_exactly_once(shared_cloudtrail: Path, parts) -> None:
    lake, state = parts
    summary = ingest(LocalStore(shared_cloudtrail), lake, state, workers=2)
    assert summary.records == 51_367
    assert summary.new_events == 44_866
    assert summary.duplicates == 51_367 - 44_866
    assert summary.quarantined_records == summary.quarantined_objects == 0
    assert lake_counts(lake) == (44_866, 44_866)

    again = ingest(LocalStore(shared_cloudtrail), lake, state)
    assert (again.objects_processed, again.objects_already_done, again.new_events) == (0, 5_073, 0)


def test_reprocessing_replaces_and_never_doubles(shared_cloudtrail: Path, parts) -> None:
    """The SANS lab: two trails deliver 6,496 repeat copies into one prefix."""
    lake, state = parts
    source = LocalStore(shared_cloudtrail / "sans-504-s3-ransomware-lab")
    first = ingest(source, lake, state, workers=2)
    assert first.duplicates == 6_496
    counts = lake_counts(lake)
    assert counts[0] == counts[1] == first.new_events == first.records - 6_496
    forced = ingest(source, lake, state, reprocess=True, workers=2)
    assert (forced.objects_processed, forced.new_events) == (first.objects_processed, 0)
    assert lake_counts(lake) == counts


def test_duplicates_across_trails_and_hours_keep_the_earliest_delivery(tmp_path: Path, parts) -> None:
    lake, state = parts
    twin = record(eventTime="2026-11-20T13:58:00Z")
    later = write_log(tmp_path / "src", [twin, record(eventTime="2026-11-20T14:01:00Z")], utc(2026, 11, 20, 14, 5))
    earlier = write_log(tmp_path / "src", [twin], utc(2026, 11, 20, 13, 59), account="111122223333")
    src = LocalStore(tmp_path / "src")
    # The later hour first (a backwards backfill), then the earlier one: the earlier copy must win.
    first = ingest(src, lake, state, utc(2026, 11, 20, 14), utc(2026, 11, 20, 15))
    second = ingest(src, lake, state, utc(2026, 11, 20, 13), utc(2026, 11, 20, 14))
    assert (first.new_events, second.new_events, second.duplicates) == (2, 0, 1)
    assert lake_counts(lake) == (2, 2)
    kept = lake_sql(lake, "SELECT source_key FROM events WHERE event_id = ?", twin["eventID"])
    assert kept == [(str(earlier),)]
    assert str(later) != str(earlier)


def test_bad_objects_and_records_are_quarantined_and_the_run_goes_on(tmp_path: Path, parts) -> None:
    lake, state = parts
    root = tmp_path / "src"
    at = utc(2026, 11, 20, 13, 5)
    good = write_log(root, [record(), {"eventTime": "2026-11-20T13:00:00Z"}], at)
    write_log(root, None, at, data=b"")
    write_log(root, None, at, data=gz(raw=b'{"Records": [')[:-9])
    write_log(root, None, at, raw=b"<html>not json</html>")
    summary = ingest(LocalStore(root), lake, state)
    assert summary.new_events == 1
    assert summary.quarantined_objects == 3
    assert summary.quarantined_records == 1
    reasons = sorted(q["reason"].split(":")[0] for q in state.quarantined())
    assert reasons == ["empty object (0 bytes)", "invalid JSON", "missing eventID", "truncated gzip"]
    assert [q["record_index"] for q in state.quarantined() if q["object_uri"] == str(good)] == [1]
    # A quarantined object is in the ledger: the next run does not retry it forever.
    assert ingest(LocalStore(root), lake, state).objects_processed == 0


def test_a_changed_object_is_processed_again_and_replaces_its_rows(tmp_path: Path, parts) -> None:
    lake, state = parts
    at = utc(2026, 11, 20, 13, 5)
    first, second = record(), record()
    path = write_log(tmp_path / "src", [first], at)
    ingest(LocalStore(tmp_path / "src"), lake, state)
    path.write_bytes(gz([first, second]))  # re-delivered with more content: new etag
    summary = ingest(LocalStore(tmp_path / "src"), lake, state)
    assert (summary.objects_processed, summary.new_events) == (1, 1)
    assert lake_counts(lake) == (2, 2)
