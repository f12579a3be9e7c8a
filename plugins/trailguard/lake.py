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
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trailguard.cloudtrail import SCHEMA

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
    """Rows for one (partition, delivery hour) file, written to a scratch file in row groups.

    Each row group is encoded on a thread of its own while the caller goes on (one at a time, so
    groups stay in order and memory holds at most two): the caller is ingest's main thread,
    which must keep handing work to the parsers."""

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
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="parquet")
        self._encoding: Future | None = None

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        self._pending.extend(batch.to_batches() if isinstance(batch, pa.Table) else [batch])
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def close(self) -> str:
        self._wait()
        if self._pending:  # the last group: nothing left to overlap it with
            self._writer.write_table(pa.Table.from_batches(self._pending, schema=SCHEMA))
        self._encoder.shutdown()
        self._writer.close()
        return self.path

    def discard(self) -> None:
        with suppress(Exception):
            self._wait()
        self._encoder.shutdown()
        self._writer.close()
        Path(self.path).unlink(missing_ok=True)

    def _flush(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending, schema=SCHEMA)
            self._pending, self._pending_rows = [], 0
            self._wait()
            self._encoding = self._encoder.submit(self._writer.write_table, table)

    def _wait(self) -> None:
        if self._encoding is not None:
            encoding, self._encoding = self._encoding, None
            encoding.result()


def commit_file(lake: Lake, partition: str, tag: str, scratch: str, replaced_keys: set[str]) -> FileStats:
    """Merge a scratch file into partition ``partition`` as the file for delivery hour ``tag``.

    Call under the partition's lock. Every copy of an eventID in the partition competes and the
    earliest delivery (delivered_at, then object key) wins, whatever order runs happen in. Rows
    in the existing file for this hour that came from ``replaced_keys`` (objects processed again)
    are replaced by the new rows. In the common case, no id seen twice, only ``event_id`` is read.
    """
    own_path = lake.file_path(partition, tag)
    new = _Keys("new", pafs.LocalFileSystem(), scratch)
    old = [_Keys(other, lake.fs, path) for other, path in sorted(lake.files(partition).items())]
    sources = [new, *old]
    for source in old:
        if source.name == tag and replaced_keys:  # rows of objects processed again give way
            gone = pc.is_in(source.column("source_key"), pa.array(sorted(replaced_keys)))
            source.keep = ~gone.to_numpy(zero_copy_only=False)
    set_aside = [s.gone_ids() for s in old]  # copies of reprocessed objects, if any
    if _repeats([ids for s in sources for ids in s.live_ids()]):
        _choose_winners(sources)
        set_aside = [s.ids for s in old]
    new_events = int(new.keep.sum()) - _count_in(new.live_ids(), set_aside)
    # Settled before any file is replaced: on S3 a rewritten object no longer matches its open handle.
    delivered = [d for s in sources if (d := s.max_delivered_at()) is not None]
    rows = sum(int(s.keep.sum()) for s in sources)

    for source in old:  # files of other delivery hours that lost rows to this one (out-of-order runs)
        if source.name != tag and not source.keep.all():
            _rewrite(lake, [source], source.path)
    own = [s for s in (new, *old) if s.name in {"new", tag} and s.keep.any()]
    if not own:
        if any(s.name == tag for s in old):
            lake.delete(own_path)
    elif own == [new] and new.keep.all():
        lake.publish(scratch, own_path)  # the common case: a new hour (or a whole hour again), nothing to drop
    else:
        _rewrite(lake, own, own_path)
    Path(scratch).unlink(missing_ok=True)

    return FileStats(
        rows=rows,
        new_events=new_events,
        duplicates=new.rows - new_events,
        max_delivered_at=max(delivered) if delivered else None,
    )


class _Keys:
    """One file taking part in a merge: its ids, which of its rows stay, other columns on demand."""

    def __init__(self, name: str, fs: pafs.FileSystem, path: str) -> None:
        self.name, self.fs, self.path = name, fs, path
        self.file = pq.ParquetFile(path, filesystem=fs)
        self.ids = self.file.read(columns=["event_id"]).column(0)
        self._columns: dict[str, pa.ChunkedArray] = {}
        self.rows = len(self.ids)
        self.keep = np.ones(self.rows, dtype=bool)

    def column(self, name: str) -> pa.ChunkedArray:
        if name not in self._columns:
            self._columns[name] = self.file.read(columns=[name]).column(0)
        return self._columns[name]

    def live_ids(self) -> list[pa.Array]:
        ids = self.ids if self.keep.all() else self.ids.filter(pa.array(self.keep))
        return ids.chunks

    def gone_ids(self) -> pa.ChunkedArray:
        return self.ids.filter(pa.array(~self.keep))

    def max_delivered_at(self) -> datetime | None:
        """From the row-group statistics while every row stays (no read); else from the rows kept."""
        if not self.keep.any():
            return None
        if self.keep.all():
            meta = self.file.metadata
            leaf = next(i for i in range(meta.num_columns) if meta.schema.column(i).path == "delivered_at")
            stats = [meta.row_group(g).column(leaf).statistics for g in range(meta.num_row_groups)]
            if stats and all(s is not None and s.has_min_max for s in stats):
                return max(s.max for s in stats)
        return pc.max(self.column("delivered_at").filter(pa.array(self.keep))).as_py()


def _count_in(ids: list[pa.Array], sets: list[pa.ChunkedArray]) -> int:
    """How many of ``ids`` occur in ``sets`` (hashing only the sets, usually empty)."""
    value_set = pa.chunked_array([c for s in sets for c in s.chunks], pa.string()).combine_chunks()
    if not len(value_set) or not ids:
        return 0
    return sum(int(pc.sum(pc.is_in(chunk, value_set=value_set)).as_py() or 0) for chunk in ids)


def _repeats(chunks: list[pa.Array]) -> bool:
    """Does any id occur twice? By sorting: a hash set of a busy partition's ids would take several
    times their size. Ids of one length (CloudTrail's are UUIDs) sort as fixed-width bytes in numpy,
    in one copy of the ids; others through Arrow."""
    total = sum(len(c) for c in chunks)
    if total < 2:
        return False
    width = _common_width(chunks)
    if width:
        fixed = np.empty(total, dtype=f"S{width}")
        at = 0
        for chunk in chunks:
            start = int(_offsets(chunk)[0])
            data = chunk.buffers()[2]
            fixed[at : at + len(chunk)] = np.frombuffer(data, dtype=f"S{width}", count=len(chunk), offset=start)
            at += len(chunk)
        fixed.sort()
        return bool((fixed[1:] == fixed[:-1]).any())
    ids = pa.chunked_array(chunks, pa.string()).combine_chunks()
    ordered = ids.take(pc.sort_indices(ids))
    return pc.any(pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))).as_py()


def _common_width(chunks: list[pa.Array]) -> int | None:
    """The byte length every id has, if they all have one and none is null. (numpy's fixed-width
    bytes ignore trailing NULs when comparing: at worst a false "repeat", which the exact merge
    then settles.)"""
    widths = set()
    for chunk in chunks:
        if not len(chunk):
            continue
        if chunk.null_count:
            return None
        lengths = np.diff(_offsets(chunk))
        if lengths.min() != lengths.max():
            return None
        widths.add(int(lengths[0]))
    if len(widths) != 1 or not (width := widths.pop()):
        return None
    return width


def _offsets(strings: pa.StringArray) -> np.ndarray:
    """Where each value of a (possibly sliced) string array starts in its data buffer, and the end."""
    return np.frombuffer(strings.buffers()[1], dtype=np.int32)[strings.offset : strings.offset + len(strings) + 1]


def _choose_winners(sources: list[_Keys]) -> None:
    """Per eventID, keep only its earliest copy (delivered_at, then source_key) over all live rows."""
    frames = []
    for number, source in enumerate(sources):
        frame = pa.table(
            {
                "event_id": source.ids,
                "delivered_at": source.column("delivered_at"),
                "source_key": source.column("source_key"),
                "file": pa.array(np.full(source.rows, number, dtype=np.int32)),
                "idx": pa.array(np.arange(source.rows, dtype=np.int64)),
            }
        )
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
