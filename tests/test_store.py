"""The state store behaves the same on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from builders import utc
from trailguard import migrate
from trailguard.cloudtrail import Rejected
from trailguard.store import DONE, QUARANTINED, ObjectOutcome, StateStore


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    url = f"sqlite:///{tmp_path}/state.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = StateStore(url)
    yield store
    store.close()


def outcome(uri: str, status: str = DONE, etag: str = "e1") -> ObjectOutcome:
    return ObjectOutcome(uri, etag, 10, "111122223333", "us-east-1", utc(2026, 11, 20, 13, 5), status, 3, 2)


def test_migrates_to_head_and_reopening_is_a_no_op(state: StateStore) -> None:
    assert migrate.current(state.engine) == migrate.head() == migrate.newest_revision()
    tables = set(sa.inspect(state.engine).get_table_names())
    assert {"objects", "quarantine", "lake_partitions", "baselines", "alerts", "watermarks"} <= tables
    StateStore(state.url).close()


def test_ledger_round_trip_with_utc_times(state: StateStore) -> None:
    state.record([outcome("s3://b/a"), outcome("s3://b/b", QUARANTINED)], {"s3://b/b": [Rejected(-1, "bad", "")]})
    assert state.ledger(["s3://b/a", "s3://b/b", "s3://b/c"]) == {
        "s3://b/a": ("e1", DONE),
        "s3://b/b": ("e1", QUARANTINED),
    }
    assert [q["reason"] for q in state.quarantined()] == ["bad"]
    assert state.quarantined()[0]["created_at"].tzinfo is not None


def test_recording_an_object_again_replaces_its_ledger_row_and_quarantine(state: StateStore) -> None:
    state.record([outcome("s3://b/a", QUARANTINED)], {"s3://b/a": [Rejected(1, "missing eventID", "{}")]})
    state.record([outcome("s3://b/a", DONE, etag="e2")], {})
    assert state.ledger(["s3://b/a"]) == {"s3://b/a": ("e2", DONE)}
    assert state.quarantined() == []


def test_partition_lease_records_rows_and_latest_delivery(state: StateStore) -> None:
    with state.partition_lock("2026-11-20T13") as lease:
        lease.rows, lease.max_delivered_at = 5, utc(2026, 11, 20, 14, 5)
    with state.partition_lock("2026-11-20T12") as lease:
        lease.rows, lease.max_delivered_at = 2, utc(2026, 11, 20, 12, 10)
    assert sorted(state.partition_versions("2026-11-20T14")) == ["2026-11-20T12", "2026-11-20T13"]
    assert sorted(state.partition_versions("2026-11-20T13")) == ["2026-11-20T12"]
    assert sorted(state.partition_versions("2026-11-20T14", start="2026-11-20T13")) == ["2026-11-20T13"]
    late = state.partition_versions("2026-11-20T14", start="2026-11-20T14", delivered_since=utc(2026, 11, 20, 13))
    assert sorted(late) == ["2026-11-20T13"]
