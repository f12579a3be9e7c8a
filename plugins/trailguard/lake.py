"""The events lake: Parquet files under ``<lake>/events/``, on a local path or S3.

Layout: ``events/event_date=YYYY-MM-DD/event_hour=HH/delivered-YYYYMMDDTHH.parquet``.
Partitions follow event time, because a duplicate delivery of an event always has the same
eventTime and so always lands in the same partition: deduplication never looks further than
one partition. Inside a partition there is one file per delivery hour, so an hourly ingest
writes new files and re-running an hour replaces exactly the files it wrote.
Hive-style folders make it readable as-is by DuckDB, Athena and Trino.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trailguard.cloudtrail import SCHEMA

if TYPE_CHECKING:  # readers only: ingest never loads DuckDB or pyarrow.dataset (and the pandas it brings)
    import duckdb
    import pyarrow.dataset as ds

ROW_GROUP_ROWS = 16_000  # a row group holds ~25 MB of raw JSON: memory stays bounded
# Dictionary-encode only the columns with few distinct values; statistics where readers prune.
DICTIONARY_COLUMNS = [
    "event_name",
    "event_source",
    "aws_region",
    "recipient_account_id",
    "event_version",
    "event_type",
    "event_category",
    "user_type",
    "user_account_id",
    "invoked_by",
    "error_code",
    "source_key",
]
STATISTICS_COLUMNS = ["event_id", "event_time", "event_name", "recipient_account_id", "delivered_at"]
PARTITION_SCHEMA = pa.schema([("event_date", pa.string()), ("event_hour", pa.int32())])


def partition_of(hour: datetime) -> str:
    """'2024-11-20T13' for any time within that UTC hour."""
    return hour.astimezone(timezone.utc).strftime("%Y-%m-%dT%H")


def delivery_tag(delivered_at: datetime) -> str:
    return delivered_at.astimezone(timezone.utc).strftime("%Y%m%dT%H")


def s3_filesystem(endpoint_url: str | None = None, **credentials: str | None) -> pafs.S3FileSystem:
    """An Arrow S3 filesystem; the endpoint defaults to ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {k: v for k, v in credentials.items() if v}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs.setdefault("allow_bucket_creation", False)
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region and "region" not in kwargs:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class FileStats:
    rows: int
    new_events: int
    duplicates: int
    max_delivered_at: datetime | None


class Lake:
    def __init__(self, uri: str, filesystem: pafs.FileSystem | None = None) -> None:
        self.uri = uri
        if uri.startswith("s3://"):
            self.fs = filesystem or s3_filesystem()
            self.base = uri[5:].rstrip("/")
            self.local = False
        else:
            self.fs = filesystem or pafs.LocalFileSystem()
            self.base = str(Path(uri).expanduser().resolve())
            self.local = True
        self.events = f"{self.base}/events"
        self._duckdb: duckdb.DuckDBPyConnection | None = None

    # -- paths -----------------------------------------------------------------------------------
    def partition_dir(self, partition: str) -> str:
        date, hour = partition.split("T")
        return f"{self.events}/event_date={date}/event_hour={hour}"

    def file_path(self, partition: str, tag: str) -> str:
        return f"{self.partition_dir(partition)}/delivered-{tag}.parquet"

    def files(self, partition: str) -> dict[str, str]:
        """delivery tag -> path of every data file in a partition."""
        selector = pafs.FileSelector(self.partition_dir(partition), allow_not_found=True)
        out = {}
        for info in self.fs.get_file_info(selector):
            name = info.base_name
            if info.type == pafs.FileType.File and name.startswith("delivered-") and name.endswith(".parquet"):
                out[name[len("delivered-") : -len(".parquet")]] = info.path
        return out

    def scratch_path(self) -> str:
        """A local file for a data file in the making (same filesystem as a local lake, for rename)."""
        folder = Path(self.base) / ".tmp" if self.local else Path(_tmpdir())
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder / f"{uuid.uuid4().hex}.parquet")

    def publish(self, scratch: str, dest: str) -> None:
        """Make ``scratch`` visible at ``dest`` in one step (rename locally; one PUT on S3)."""
        if self.local:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch, dest)
        else:
            pafs.copy_files(scratch, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
            os.unlink(scratch)

    def delete(self, path: str) -> None:
        self.fs.delete_file(path)

    # -- reading ---------------------------------------------------------------------------------
    def dataset(self, partitions: Iterable[str] | None = None) -> ds.Dataset | None:
        """The events as an Arrow dataset (DuckDB scans it with projection and filter pushdown).

        ``partitions`` limits it to those event hours; None means all. None is returned when
        there is no file at all."""
        paths = [info.path for info in self.file_infos(partitions)]
        if not paths:
            return None
        import pyarrow.dataset as ds

        return ds.dataset(
            sorted(paths),
            schema=SCHEMA,
            format="parquet",
            filesystem=self.fs,
            partitioning=ds.partitioning(PARTITION_SCHEMA, flavor="hive"),
            partition_base_dir=self.events,
        )

    def connect(self, partitions: Iterable[str] | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB cursor with the events (all, or those partitions) as the view ``events``.
        Cursors share one in-memory database: opening a database costs more than most queries."""
        if self._duckdb is None:
            import duckdb

            self._duckdb = duckdb.connect()
        con = self._duckdb.cursor()
        dataset = self.dataset(partitions)
        if dataset is None:
            dataset = pa.schema([*SCHEMA, *PARTITION_SCHEMA]).empty_table()
        con.register("events", dataset)
        return con

    def file_infos(self, partitions: Iterable[str] | None = None) -> list[pafs.FileInfo]:
        """Data files (with size and mtime) of those event hours, or of all when None."""
        if partitions is None:
            return self._data_files(self.events)
        wanted = set(partitions)
        dates = {p.split("T")[0] for p in wanted} & self._dates()
        return [
            info
            for date in sorted(dates)
            for info in self._data_files(f"{self.events}/event_date={date}")
            if partition_of_path(info.path) in wanted
        ]

    def _dates(self) -> set[str]:
        """The event dates the lake holds (one listing), so long ranges cost nothing per empty day."""
        selector = pafs.FileSelector(self.events, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return {i.base_name[len("event_date=") :] for i in infos if i.base_name.startswith("event_date=")}

    def _data_files(self, folder: str) -> list[pafs.FileInfo]:
        """One recursive listing per folder (a date folder costs one S3 LIST, not 24)."""
        selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
        return sorted((i for i in self.fs.get_file_info(selector) if _is_data(i)), key=lambda i: i.path)


class FileWriter:
    """Rows for one (partition, delivery hour) file, written to a scratch file in row groups."""

    def __init__(self, lake: Lake) -> None:
        self.path = lake.scratch_path()
        self._writer = pq.ParquetWriter(
            self.path,
            SCHEMA,
            compression="zstd",
            use_dictionary=DICTIONARY_COLUMNS,
            write_statistics=STATISTICS_COLUMNS,
        )
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        self._pending.extend(batch.to_batches() if isinstance(batch, pa.Table) else [batch])
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def close(self) -> str:
        self._flush()
        self._writer.close()
        return self.path

    def discard(self) -> None:
        self._writer.close()
        Path(self.path).unlink(missing_ok=True)

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_batches(self._pending, schema=SCHEMA))
            self._pending, self._pending_rows = [], 0


def commit_file(lake: Lake, partition: str, tag: str, scratch: str, replaced_keys: set[str]) -> FileStats:
    """Merge a scratch file into partition ``partition`` as the file for delivery hour ``tag``.

    Call under the partition's lock. Every copy of an eventID in the partition competes and the
    earliest delivery (delivered_at, then object key) wins, whatever order runs happen in. Rows
    in the existing file for this hour that came from ``replaced_keys`` (objects processed again)
    are replaced by the new rows. Column arithmetic throughout, and in the common case (no id
    seen twice) only ``event_id`` and ``delivered_at`` are read.
    """
    own_path = lake.file_path(partition, tag)
    new = _Keys("new", pafs.LocalFileSystem(), scratch)
    old = [_Keys(other, lake.fs, path) for other, path in sorted(lake.files(partition).items())]
    sources = [new, *old]
    for source in old:
        if source.name == tag and replaced_keys:  # rows of objects processed again give way
            source.keep = pc.invert(pc.is_in(source.source_keys(), pa.array(sorted(replaced_keys)))).to_numpy(
                zero_copy_only=False
            )
    set_aside = _concat([s.gone("event_id") for s in old])  # copies of reprocessed objects, if any
    if _repeats(_concat([s.live("event_id") for s in sources])):
        _choose_winners(sources)
        set_aside = _concat([s.keys["event_id"].combine_chunks() for s in old])
    known = pc.sum(pc.is_in(new.live("event_id"), value_set=set_aside)).as_py() if len(set_aside) else 0
    new_events = int(new.keep.sum()) - int(known or 0)

    for source in old:  # files of other delivery hours that lost rows to this one (out-of-order runs)
        if source.name != tag and not source.keep.all():
            _rewrite(lake, [source], source.path)
    own = [new, *(s for s in old if s.name == tag)]
    if not any(s.keep.any() for s in own):
        if len(own) > 1:
            lake.delete(own_path)
    elif len(own) == 1 and new.keep.all():
        lake.publish(scratch, own_path)  # the common case: a new hour, nothing to drop
    else:
        _rewrite(lake, own, own_path)
    Path(scratch).unlink(missing_ok=True)

    delivered = [pc.max(s.live("delivered_at")).as_py() for s in sources if s.keep.any()]
    return FileStats(
        rows=sum(int(s.keep.sum()) for s in sources),
        new_events=new_events,
        duplicates=new.rows - new_events,
        max_delivered_at=max(delivered) if delivered else None,
    )


class _Keys:
    """One file taking part in a merge: its key columns and which of its rows stay."""

    def __init__(self, name: str, fs: pafs.FileSystem, path: str) -> None:
        self.name, self.fs, self.path = name, fs, path
        self.keys = pq.read_table(path, columns=["event_id", "delivered_at"], filesystem=fs)
        self.rows = self.keys.num_rows
        self.keep = np.ones(self.rows, dtype=bool)

    def live(self, column: str) -> pa.Array:
        return pc.filter(self.keys[column], pa.array(self.keep)).combine_chunks()

    def gone(self, column: str) -> pa.Array:
        return pc.filter(self.keys[column], pa.array(~self.keep)).combine_chunks()

    def source_keys(self) -> pa.Array:
        """Read only when needed: the object of every row (few distinct values, so a dictionary)."""
        table = pq.read_table(self.path, columns=["source_key"], filesystem=self.fs, read_dictionary=["source_key"])
        return table["source_key"].combine_chunks().dictionary_decode()


def _concat(arrays: list[pa.Array]) -> pa.Array:
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())


def _repeats(ids: pa.Array) -> bool:
    """Does any id occur twice? By sorting: a hash set of a busy partition's ids takes twice the memory."""
    if len(ids) < 2:
        return False
    ordered = ids.take(pc.sort_indices(ids))
    return pc.any(pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))).as_py()


def _choose_winners(sources: list[_Keys]) -> None:
    """Per eventID, keep only its earliest copy (delivered_at, then source_key) over all live rows."""
    frames = []
    for number, source in enumerate(sources):
        frame = source.keys.append_column("source_key", source.source_keys())
        frame = frame.append_column("file", pa.array(np.full(source.rows, number, dtype=np.int32)))
        frame = frame.append_column("idx", pa.array(np.arange(source.rows, dtype=np.int64)))
        frames.append(frame.filter(pa.array(source.keep)))
    candidates = pa.concat_tables(frames).combine_chunks()
    order = pc.sort_indices(
        candidates, sort_keys=[(c, "ascending") for c in ("event_id", "delivered_at", "source_key", "file", "idx")]
    )
    ranked = candidates.take(order)
    ids = ranked["event_id"].combine_chunks()
    first = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        first[1:] = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
    files = ranked["file"].to_numpy()
    rows = ranked["idx"].to_numpy()
    for number, source in enumerate(sources):
        source.keep = np.zeros(source.rows, dtype=bool)
        source.keep[rows[first & (files == number)]] = True


def _rewrite(lake: Lake, sources: list[_Keys], dest: str) -> None:
    """Write the kept rows of each source file to ``dest``, streaming row groups."""
    writer = FileWriter(lake)
    try:
        for source in sources:
            offset = 0
            for batch in pq.ParquetFile(source.path, filesystem=source.fs).iter_batches(batch_size=ROW_GROUP_ROWS):
                writer.write(batch.filter(pa.array(source.keep[offset : offset + batch.num_rows])))
                offset += batch.num_rows
        scratch = writer.close()
    except BaseException:
        writer.discard()
        raise
    lake.publish(scratch, dest)


def _is_data(info: pafs.FileInfo) -> bool:
    return (
        info.type == pafs.FileType.File and info.base_name.startswith("delivered-") and info.path.endswith(".parquet")
    )


def partition_of_path(path: str) -> str:
    parts = path.split("/")
    date = next(p for p in parts if p.startswith("event_date="))[len("event_date=") :]
    hour = next(p for p in parts if p.startswith("event_hour="))[len("event_hour=") :]
    return f"{date}T{hour}"


def _tmpdir() -> str:
    import tempfile

    return tempfile.gettempdir()
