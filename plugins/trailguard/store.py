"""The state store: what has been ingested, what was quarantined, and who may write a lake partition.

SQLAlchemy Core over SQLite (default) or PostgreSQL (production). The schema is owned by the
Alembic migrations in ``trailguard/migrations``; ``StateStore`` upgrades to head when opened.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:  # an annotation only: the store loads without the parser (pyarrow, msgspec)
    from trailguard.cloudtrail import Rejected


class UTCDateTime(sa.types.TypeDecorator):
    """Timezone-aware UTC in, timezone-aware UTC out, on every backend (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


metadata = sa.MetaData()

objects = sa.Table(
    "objects",
    metadata,
    sa.Column("uri", sa.String(2048), primary_key=True),
    sa.Column("etag", sa.String(128), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("account_id", sa.String(64)),
    sa.Column("region", sa.String(64)),
    sa.Column("delivered_at", UTCDateTime),
    sa.Column("records", sa.Integer, nullable=False, default=0),
    sa.Column("events", sa.Integer, nullable=False, default=0),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("processed_at", UTCDateTime, nullable=False),
    sa.Index("ix_objects_account_region_delivered", "account_id", "region", "delivered_at"),
    sa.Index("ix_objects_processed_at", "processed_at"),
    sa.Index("ix_objects_delivered_at", "delivered_at"),
)

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("object_uri", sa.String(2048), nullable=False, index=True),
    sa.Column("record_index", sa.Integer, nullable=False),  # -1: the whole object
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("excerpt", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_quarantine_created_at", "created_at"),
)

lake_partitions = sa.Table(
    "lake_partitions",
    metadata,
    sa.Column("partition", sa.String(32), primary_key=True),
    sa.Column("rows", sa.Integer, nullable=False, default=0),
    sa.Column("max_delivered_at", UTCDateTime),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

baselines = sa.Table(
    "baselines",
    metadata,
    sa.Column("detection_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(512), primary_key=True),  # canonical JSON of the baseline key fields
    sa.Column("alert_key", sa.String(512), nullable=False),  # the alert key it counts for (e.g. its country)
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("attrs", sa.Text, nullable=False),  # JSON: what was known at first sight (e.g. geography)
    # The earliest max(event time, delivered_at) over its occurrences: from then on it was known.
    sa.Column("visible_from", UTCDateTime, nullable=False),
    sa.Index("ix_baselines_alert_key", "detection_id", "alert_key"),
)

watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("value", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("detection_id", sa.String(64), nullable=False),
    sa.Column("key", sa.String(512), nullable=False),  # canonical JSON of the alert key
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("fired_at", UTCDateTime, nullable=False),  # the evaluation time T
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # the alert as JSON (see detect.Alert.as_dict)
    sa.Column("status", sa.String(16), nullable=False),  # pending / sent / digested / failed / replayed
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("slack_reply", sa.Text),
    sa.Column("sent_at", UTCDateTime),
    sa.Column("claimed_at", UTCDateTime),  # when a delivery run took it ('sending'); stale claims expire
    sa.Column("possible_duplicate", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("detection_id", "key", "first_seen", name="uq_alerts_detection_key_first_seen"),
    sa.Index("ix_alerts_status", "status"),
    sa.Index("ix_alerts_fired_at", "fired_at"),
)

health_incidents = sa.Table(
    "health_incidents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(64), nullable=False),  # e.g. delivery_gap, ingest_lag, quarantine_growth
    sa.Column("subject", sa.String(256), nullable=False),  # e.g. "123456789012/us-east-1"
    sa.Column("opened_at", UTCDateTime, nullable=False),
    sa.Column("last_seen_at", UTCDateTime, nullable=False),
    sa.Column("closed_at", UTCDateTime),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("open_notified", sa.Boolean, nullable=False, default=False),
    sa.Column("close_notified", sa.Boolean, nullable=False, default=False),
)

# Object ledger statuses.
DONE, QUARANTINED, SKIPPED, VANISHED = "done", "quarantined", "skipped", "vanished"
# Alert ledger statuses (docs/alerts.md): a detection writes 'pending', or 'replayed' (never
# delivered) for `trailguard replay`; delivery moves 'pending' through 'sending' to the others.
PENDING, SENDING, SENT, DIGESTED, FAILED, REPLAYED = "pending", "sending", "sent", "digested", "failed", "replayed"
WHOLE_OBJECT = -1


@dataclass(frozen=True)
class ObjectOutcome:
    uri: str
    etag: str
    size: int
    account_id: str
    region: str
    delivered_at: datetime | None
    status: str
    records: int = 0
    events: int = 0
    error: str | None = None


def now() -> datetime:
    return datetime.now(timezone.utc)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class StateStore:
    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if migrate:
            from trailguard.migrate import upgrade

            upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def begin(self) -> Generator[Connection, None, None]:
        with self.engine.begin() as conn:
            yield conn

    # -- object ledger ---------------------------------------------------------------------
    def ledger(self, uris: Iterable[str]) -> dict[str, tuple[str, str]]:
        """uri -> (etag, status) for the given objects already in the ledger."""
        uris = list(uris)
        out: dict[str, tuple[str, str]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(uris), 500):
                chunk = uris[i : i + 500]
                q = sa.select(objects.c.uri, objects.c.etag, objects.c.status).where(objects.c.uri.in_(chunk))
                out.update({uri: (etag, status) for uri, etag, status in conn.execute(q)})
        return out

    def record(self, outcomes: Iterable[ObjectOutcome], rejected: dict[str, list[Rejected]]) -> None:
        """Write the outcome of each object and replace its quarantine records, in one transaction."""
        outcomes = list(outcomes)
        if not outcomes:
            return
        stamp = now()
        with self.engine.begin() as conn:
            uris = [o.uri for o in outcomes]
            for i in range(0, len(uris), 500):
                chunk = uris[i : i + 500]
                conn.execute(objects.delete().where(objects.c.uri.in_(chunk)))
                conn.execute(quarantine.delete().where(quarantine.c.object_uri.in_(chunk)))
            conn.execute(
                objects.insert(),
                [
                    {
                        "uri": o.uri,
                        "etag": o.etag,
                        "size": o.size,
                        "account_id": o.account_id,
                        "region": o.region,
                        "delivered_at": o.delivered_at,
                        "records": o.records,
                        "events": o.events,
                        "status": o.status,
                        "error": o.error,
                        "processed_at": stamp,
                    }
                    for o in outcomes
                ],
            )
            rows = [
                {
                    "object_uri": uri,
                    "record_index": r.record_index,
                    "reason": r.reason,
                    "excerpt": r.excerpt,
                    "created_at": stamp,
                }
                for uri, items in rejected.items()
                for r in items
            ]
            if rows:
                conn.execute(quarantine.insert(), rows)

    def quarantined(self) -> list[dict]:
        with self.engine.connect() as conn:
            q = sa.select(quarantine).order_by(quarantine.c.object_uri, quarantine.c.record_index)
            return [dict(r._mapping) for r in conn.execute(q)]

    # -- lake partitions ---------------------------------------------------------------------
    @contextmanager
    def partition_lock(self, partition: str) -> Generator[PartitionLease, None, None]:
        """Serialise writers of one lake partition (concurrent backfill runs share event hours)."""
        with self.engine.begin() as conn:
            insert = insert_ignore(conn, lake_partitions)
            conn.execute(insert.values(partition=partition, rows=0, updated_at=now()))
            conn.execute(
                lake_partitions.update().where(lake_partitions.c.partition == partition).values(updated_at=now())
            )
            lease = PartitionLease()
            yield lease
            if lease.rows is not None:
                conn.execute(
                    lake_partitions.update()
                    .where(lake_partitions.c.partition == partition)
                    .values(rows=lease.rows, max_delivered_at=lease.max_delivered_at, updated_at=now())
                )

    def partition_versions(
        self, end: str, start: str | None = None, delivered_since: datetime | None = None
    ) -> dict[str, datetime]:
        """partition -> when it was last written, for the partitions with events before event hour
        ``end`` whose hour is at or after ``start`` or that hold deliveries at or after
        ``delivered_since`` (every partition before ``end`` when neither is given)."""
        c = lake_partitions.c
        wanted = [c.partition >= start] if start is not None else []
        if delivered_since is not None:
            wanted.append(c.max_delivered_at >= delivered_since)
        q = sa.select(c.partition, c.updated_at).where(c.rows > 0, c.partition < end)
        if wanted:
            q = q.where(sa.or_(*wanted))
        with self.engine.connect() as conn:
            return dict(conn.execute(q).all())

    def objects_to_merge(
        self, previous: datetime, at: datetime, merged_until: datetime, now: datetime
    ) -> dict[str, datetime]:
        """uri -> delivered_at of the ingested objects a baseline update at ``at`` merges: delivered
        before ``at`` and processed by ``now``, and not merged by the previous update (at
        ``previous``, snapshot ``merged_until``): delivered since ``previous``, or processed later."""
        c = objects.c
        done = sa.select(c.uri, c.delivered_at).where(c.status == DONE, c.processed_at <= now)
        recent = done.where(c.delivered_at >= previous, c.delivered_at < at)
        late = done.where(c.delivered_at < previous, c.processed_at > merged_until)
        with self.engine.connect() as conn:
            return dict(conn.execute(recent).all()) | dict(conn.execute(late).all())

    def first_partition(self, since: str) -> str | None:
        """The earliest lake partition at or after ``since`` that holds events."""
        c = lake_partitions.c
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.min(c.partition)).where(c.partition >= since, c.rows > 0)).scalar()


@dataclass
class PartitionLease:
    rows: int | None = None
    max_delivered_at: datetime | None = None


def insert_ignore(conn: Connection, table: sa.Table):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()
