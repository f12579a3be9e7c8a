"""Ingest: CloudTrail objects from a source into the events lake, once each, nothing lost.

One delivery hour at a time: fetch its objects with threads, parse them on parser threads,
write one scratch file per event-hour partition, then merge each into the lake under that
partition's lock and record every object's outcome in the ledger. A crash between the two
only means the hour is processed again, which replaces rather than doubles.
"""

from __future__ import annotations

import ctypes
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import groupby

import pyarrow as pa
import pyarrow.compute as pc

from trailguard import store as st
from trailguard.cloudtrail import BadObject, LogObject, Parsed, Rejected, parse_objects
from trailguard.lake import FileWriter, Lake, commit_file, delivery_tag, partition_of
from trailguard.sources import Listing, ObjectRef, ObjectVanished, Store, list_objects

HOUR_MS = 3_600_000
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MAX_BYTES_IN_FLIGHT = 32 * 1024 * 1024  # compressed; about ten times that once inflated and parsed
BATCH_BYTES = 256 * 1024  # compressed bytes per parse job: larger objects are parsed on their own
BATCH_OBJECTS = 256


@dataclass
class Summary:
    objects_listed: int = 0
    objects_processed: int = 0
    objects_already_done: int = 0
    records: int = 0
    new_events: int = 0
    duplicates: int = 0
    skipped: Counter = field(default_factory=Counter)
    quarantined_records: int = 0
    quarantined_objects: int = 0
    partitions: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "objects_listed": self.objects_listed,
            "objects_processed": self.objects_processed,
            "objects_already_done": self.objects_already_done,
            "records": self.records,
            "new_events": self.new_events,
            "duplicates": self.duplicates,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(self.skipped),
            "quarantined_records": self.quarantined_records,
            "quarantined_objects": self.quarantined_objects,
            "partitions_written": len(self.partitions),
            "seconds": round(self.seconds, 2),
        }

    def text(self) -> str:
        d = self.as_dict()
        lines = [
            f"objects   {d['objects_listed']} listed, {d['objects_processed']} processed, "
            f"{d['objects_already_done']} already done",
            f"records   {d['records']}",
            f"events    {d['new_events']} new, {d['duplicates']} duplicates",
            f"skipped   {d['skipped']} objects",
            *(f"          {n} {reason}" for reason, n in sorted(self.skipped.items())),
            f"quarantine {d['quarantined_records']} records, {d['quarantined_objects']} whole objects",
            f"partitions {d['partitions_written']} written",
            f"seconds   {d['seconds']}",
        ]
        return "\n".join(lines)


Progress = Callable[[int, int], None]


def ingest(
    source: Store,
    lake: Lake,
    state: st.StateStore,
    start: datetime | None = None,
    end: datetime | None = None,
    accounts: tuple[str, ...] = (),
    regions: tuple[str, ...] = (),
    workers: int = 1,
    threads: int = 16,
    reprocess: bool = False,
    progress: Progress | None = None,
) -> Summary:
    """Ingest every log object delivered in [start, end) (everything when no range)."""
    began = time.monotonic()
    _return_large_frees_to_the_os()
    listing = list_objects(source, start, end, accounts, regions, threads)
    summary = Summary(objects_listed=len(listing.logs) + len(listing.skipped))
    _record_skipped(state, listing, summary)
    todo = _pending(state, listing.logs, reprocess)
    summary.objects_already_done = len(listing.logs) - len(todo)
    done = 0
    with _parser_pool(workers) as parsers, ThreadPoolExecutor(max(1, threads)) as fetchers:
        # One stream across all hours keeps workers parsing the next hour while this one commits.
        results = _fetch_and_parse(source, todo, parsers, fetchers, threads, workers)
        for tag, hour_results in groupby(results, key=lambda item: delivery_tag(item[0].delivered_at)):
            done += _ingest_hour(lake, state, tag, hour_results, summary)
            if progress:
                progress(done, len(todo))
    summary.seconds = time.monotonic() - began
    return summary


def _pending(state: st.StateStore, logs: list[ObjectRef], reprocess: bool) -> list[ObjectRef]:
    if reprocess:
        return logs
    ledger = state.ledger(r.uri for r in logs)
    return [r for r in logs if r.uri not in ledger or ledger[r.uri][0] != r.etag]


def _record_skipped(state: st.StateStore, listing: Listing, summary: Summary) -> None:
    for ref in listing.skipped:
        summary.skipped[ref.skip_reason] += 1
    known = state.ledger(r.uri for r in listing.skipped)
    fresh = [r for r in listing.skipped if r.uri not in known]
    state.record((_outcome(r, st.SKIPPED, error=r.skip_reason) for r in fresh), {})


def _ingest_hour(
    lake: Lake,
    state: st.StateStore,
    tag: str,
    results: Iterable[tuple[ObjectRef, Parsed | str]],
    summary: Summary,
) -> int:
    """Write one delivery hour's objects to the lake and the ledger; returns how many objects."""
    writers: dict[str, FileWriter] = {}
    outcomes: list[st.ObjectOutcome] = []
    rejected: dict[str, list[Rejected]] = {}
    refs: list[ObjectRef] = []
    try:
        for ref, result in results:
            refs.append(ref)
            if isinstance(result, str):
                status = st.VANISHED if result.startswith("vanished:") else st.QUARANTINED
                outcomes.append(_outcome(ref, status, error=result))
                rejected[ref.uri] = [Rejected(st.WHOLE_OBJECT, result, "")]
                summary.quarantined_objects += 1
                continue
            summary.records += result.records
            summary.quarantined_records += len(result.rejected)
            if result.rejected:
                rejected[ref.uri] = result.rejected
            for partition, part_rows in _split_by_hour(result.rows):
                if partition not in writers:
                    writers[partition] = FileWriter(lake)
                writers[partition].write(part_rows)
            outcomes.append(_outcome(ref, st.DONE, records=result.records, events=result.rows.num_rows))
        replaced = {ref.uri for ref in refs}
        scratches = {partition: writer.close() for partition, writer in writers.items()}
        writers = {}
        for partition in sorted(scratches):
            with state.partition_lock(partition) as lease:
                stats = commit_file(lake, partition, tag, scratches[partition], replaced)
                lease.rows, lease.max_delivered_at = stats.rows, stats.max_delivered_at
            summary.new_events += stats.new_events
            summary.duplicates += stats.duplicates
            summary.partitions.add(partition)
        state.record(outcomes, rejected)
        summary.objects_processed += len(refs)
    finally:
        for writer in writers.values():
            writer.discard()
    return len(refs)


def _fetch_and_parse(
    source: Store,
    refs: list[ObjectRef],
    parsers: Executor,
    fetchers: Executor,
    threads: int,
    workers: int,
) -> Iterator[tuple[ObjectRef, Parsed | str]]:
    """(ref, Parsed or the reason it is unusable), in ``refs`` order, with bounded concurrency.

    Fetched objects are parsed in batches of about BATCH_BYTES, so that a hundred small objects
    cost one parse job; a job is handed out as soon as a parser would otherwise sit idle.
    """
    fetches: deque[tuple[ObjectRef, Future]] = deque()
    parses: deque[tuple[list[ObjectRef], Future | list[str]]] = deque()
    batch: list[tuple[ObjectRef, bytes]] = []
    pending = iter(refs)
    fetch_window, parse_window = 2 * max(1, threads), 2 * max(1, workers)
    in_flight = 0  # compressed bytes fetched but not yet handed back: bounds memory
    batch_bytes = 0

    def refill() -> None:
        nonlocal in_flight
        while len(fetches) < fetch_window and in_flight < MAX_BYTES_IN_FLIGHT:
            ref = next(pending, None)
            if ref is None:
                return
            fetches.append((ref, fetchers.submit(source.read, ref.key)))
            in_flight += ref.size

    def hand_out() -> None:
        nonlocal batch_bytes
        if batch:
            objects = [LogObject(data, ref.uri, ref.delivered_at, ref.account_id) for ref, data in batch]
            parses.append(([ref for ref, _ in batch], parsers.submit(_parse_batch, objects)))
            batch.clear()
            batch_bytes = 0

    refill()
    while fetches or parses or batch:
        while fetches and len(parses) < parse_window:
            ref, future = fetches.popleft()
            if ref.size >= BATCH_BYTES:
                hand_out()  # a large object is parsed on its own, never copied into a batch
            try:
                batch.append((ref, future.result()))
                batch_bytes += ref.size
            except ObjectVanished as exc:
                hand_out()  # results stay in refs order
                parses.append(([ref], [f"vanished: {exc}"]))
            if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_OBJECTS:
                hand_out()
            refill()
        if not fetches or not parses:
            hand_out()
        done, job = parses.popleft()
        for ref, result in zip(done, job if isinstance(job, list) else job.result(), strict=True):
            in_flight -= ref.size
            yield ref, result
        refill()


def _parse_batch(objects: list[LogObject]) -> list[Parsed | str]:
    return [str(result) if isinstance(result, BadObject) else result for result in parse_objects(objects)]


def _split_by_hour(rows: pa.RecordBatch) -> Iterator[tuple[str, pa.RecordBatch]]:
    if rows.num_rows == 0:
        return
    hours = pc.divide(rows.column("event_time").cast(pa.int64()), HOUR_MS)
    first, last = pc.min_max(hours).values()
    if first == last:
        yield _label(first.as_py()), rows
        return
    for hour in pc.unique(hours).to_pylist():
        yield _label(hour), rows.filter(pc.equal(hours, hour))


def _label(hour: int) -> str:
    return partition_of(datetime.fromtimestamp(hour * 3600, tz=timezone.utc))


def _outcome(ref: ObjectRef, status: str, records: int = 0, events: int = 0, error: str | None = None):
    return st.ObjectOutcome(
        uri=ref.uri,
        etag=ref.etag,
        size=ref.size,
        account_id=ref.account_id,
        region=ref.region,
        delivered_at=ref.delivered_at,
        status=status,
        records=records,
        events=events,
        error=error,
    )


class _InlineExecutor(Executor):
    """Runs jobs in the calling thread: the pool for ``workers=1`` and for tests."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def _return_large_frees_to_the_os() -> None:
    """Fix glibc's mmap threshold at 256 KiB.

    Left dynamic, glibc raises the threshold each time a large buffer is freed, so the multi-MB
    JSON of each object soon comes from the heap and its pages stay resident after use: peak RSS
    then grows with the hour. Fixed, every such buffer is mapped and returned on free. Without
    glibc (no ``mallopt``) nothing changes.
    """
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 256 * 1024)  # the C library already loaded


def _parser_pool(workers: int) -> Executor:
    """Threads, not processes: gunzip, Arrow's JSON reader and Parquet all release the GIL, and
    threads share the parsed columns with the writer instead of pickling them across."""
    return _InlineExecutor() if workers <= 1 else ThreadPoolExecutor(workers, thread_name_prefix="parse")
