"""CloudTrail log objects -> typed rows (Arrow) plus quarantine records.

Pure functions of bytes: no I/O here, so a worker thread can run them and tests can feed them
anything an attacker or a broken delivery could produce.

Two ways through an object, with the same result:
- the fast path, for objects whose every record has the shape CloudTrail writes: Arrow's JSON
  reader decodes the fields trailguard keeps straight into columns (C++, without the GIL), and
  the ``raw`` column is built from the records' original bytes in one copy;
- the careful path, record by record, for an object with anything unusual in it (a record
  that is not an object, no eventID, an odd eventTime, an object where a string belongs, an
  Insights event): each record is checked on its own, kept or quarantined with its reason.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

Text = pa.Buffer | bytes  # an object's JSON: from Arrow's inflate, or Python's gzip when that declined

EXCERPT_CHARS = 300
MAX_TEXT_BYTES = 2**31 - 1  # one Arrow string array (int32 offsets) holds an object's records
GZIP_MAGIC = b"\x1f\x8b"

RESOURCE_TYPE = pa.struct([("arn", pa.string()), ("account_id", pa.string()), ("type", pa.string())])
TS = pa.timestamp("ms", tz="UTC")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# The lake's row schema; docs/schema.md describes each column.
SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_time", TS),
        ("event_name", pa.string()),
        ("event_source", pa.string()),
        ("aws_region", pa.string()),
        ("recipient_account_id", pa.string()),
        ("event_version", pa.string()),
        ("event_type", pa.string()),
        ("event_category", pa.string()),
        ("management_event", pa.bool_()),
        ("read_only", pa.bool_()),
        ("user_type", pa.string()),
        ("user_arn", pa.string()),
        ("user_name", pa.string()),
        ("user_account_id", pa.string()),
        ("principal_id", pa.string()),
        ("access_key_id", pa.string()),
        ("invoked_by", pa.string()),
        ("session_issuer_arn", pa.string()),
        ("session_issuer_user_name", pa.string()),
        ("source_ip", pa.string()),
        ("user_agent", pa.string()),
        ("error_code", pa.string()),
        ("shared_event_id", pa.string()),
        ("request_role_arn", pa.string()),
        ("role_session_name", pa.string()),
        ("assumed_role_arn", pa.string()),
        ("resources", pa.list_(RESOURCE_TYPE)),
        ("source_key", pa.string()),
        ("delivered_at", TS),
        ("raw", pa.string()),
    ]
)
COLUMNS = SCHEMA.names

# Column -> where it is in a record. Both paths read this table, so they cannot drift apart.
FIELDS: dict[str, tuple[str, ...]] = {
    "event_id": ("eventID",),
    "event_time": ("eventTime",),
    "event_name": ("eventName",),
    "event_source": ("eventSource",),
    "aws_region": ("awsRegion",),
    "recipient_account_id": ("recipientAccountId",),
    "event_version": ("eventVersion",),
    "event_type": ("eventType",),
    "event_category": ("eventCategory",),
    "management_event": ("managementEvent",),
    "read_only": ("readOnly",),
    "user_type": ("userIdentity", "type"),
    "user_arn": ("userIdentity", "arn"),
    "user_name": ("userIdentity", "userName"),
    "user_account_id": ("userIdentity", "accountId"),
    "principal_id": ("userIdentity", "principalId"),
    "access_key_id": ("userIdentity", "accessKeyId"),
    "invoked_by": ("userIdentity", "invokedBy"),
    "session_issuer_arn": ("userIdentity", "sessionContext", "sessionIssuer", "arn"),
    "session_issuer_user_name": ("userIdentity", "sessionContext", "sessionIssuer", "userName"),
    "source_ip": ("sourceIPAddress",),
    "user_agent": ("userAgent",),
    "error_code": ("errorCode",),
    "shared_event_id": ("sharedEventID",),
    "request_role_arn": ("requestParameters", "roleArn"),
    "role_session_name": ("requestParameters", "roleSessionName"),
    "assumed_role_arn": ("responseElements", "assumedRoleUser", "arn"),
    "resources": ("resources",),
}
RESOURCE_FIELDS = {"arn": "ARN", "account_id": "accountId", "type": "type"}
BOOL_COLUMNS = {"management_event", "read_only"}


class BadObject(Exception):
    """The whole object is unusable; the message is the quarantine reason."""


@dataclass(frozen=True)
class Rejected:
    record_index: int
    reason: str
    excerpt: str


@dataclass
class Parsed:
    rows: pa.RecordBatch
    rejected: list[Rejected]
    records: int


class _Envelope(msgspec.Struct):
    Records: list[msgspec.Raw]


_ENVELOPE = msgspec.json.Decoder(_Envelope)


def decompress(data: bytes) -> Text:
    """The JSON text of a gzip object.

    Arrow inflates it into one buffer of the size the gzip trailer states, taken from Arrow's
    memory pool: no growing copies, no pages left behind. What it cannot do in one go (several
    gzip members, zero padding, damage) goes through Python's gzip, whose errors say what is wrong.
    """
    if not data:
        raise BadObject("empty object (0 bytes)")
    stated = int.from_bytes(data[-4:], "little") if data[:2] == GZIP_MAGIC and len(data) > 18 else 0
    if 0 < stated <= MAX_TEXT_BYTES:
        with suppress(OSError, pa.ArrowException):
            return pa.decompress(data, decompressed_size=stated, codec="gzip", asbytes=False)
    try:
        text = gzip.decompress(data)
    except gzip.BadGzipFile as exc:
        raise BadObject(f"not gzip data ({exc})") from None
    except EOFError:
        raise BadObject("truncated gzip: the stream ends before its end marker") from None
    except zlib.error as exc:
        raise BadObject(f"corrupt gzip: {exc}") from None
    if len(text) > MAX_TEXT_BYTES:
        raise BadObject(f"object too large: {len(text):,} bytes of JSON (at most {MAX_TEXT_BYTES:,})")
    return text


def split_records(text: Text) -> list[msgspec.Raw]:
    """The ``Records`` array, each record still as its original JSON bytes (views into ``text``)."""
    try:
        return _ENVELOPE.decode(text).Records
    except msgspec.ValidationError:
        raise BadObject("JSON without a Records array (not a CloudTrail log file)") from None
    except msgspec.DecodeError as exc:
        raise BadObject(f"invalid JSON: {exc}") from None


@dataclass(frozen=True)
class LogObject:
    """One delivery object as fetched, with what its key says."""

    data: bytes
    source_key: str
    delivered_at: datetime
    account: str  # fills recipientAccountId, which eventVersion 1.0x records lack: the delivering account


@dataclass(frozen=True)
class _Opened:
    obj: LogObject
    text: Text
    raws: list[msgspec.Raw]


def parse_objects(objects: Sequence[LogObject]) -> list[Parsed | BadObject]:
    """Parse objects together; one result per object, in order.

    Most objects hold a few records, and then Arrow's cost per call, not per record, is most of
    the work: read together, a thousand small objects cost about what one large one does.
    """
    results: list[Parsed | BadObject | None] = []
    opened: list[_Opened] = []
    for obj in objects:
        try:
            text = decompress(obj.data)
            opened.append(_Opened(obj, text, split_records(text)))
            results.append(None)
        except BadObject as exc:
            results.append(exc)
    parsed = iter(_parse_opened(opened))
    return [next(parsed) if result is None else result for result in results]


def parse_object(data: bytes, source_key: str, delivered_at: datetime, fallback_account: str) -> Parsed:
    """One object -> rows; raises BadObject when nothing in it is usable."""
    (result,) = parse_objects([LogObject(data, source_key, delivered_at, fallback_account)])
    if isinstance(result, BadObject):
        raise result
    return result


def _parse_opened(opened: list[_Opened]) -> list[Parsed]:
    """Fast for all, or else each on its own: an odd record sends only its own object the careful way."""
    if not opened:
        return []
    fast = _fast(opened)
    if fast is not None:
        return fast
    if len(opened) > 1:
        return [parsed for one in opened for parsed in _parse_opened([one])]
    return [_careful(opened[0])]


def _batch(columns: dict[str, pa.Array], objects: list[LogObject], counts: list[int]) -> pa.RecordBatch:
    """The columns plus each row's object and delivery time."""
    owner = pa.array(np.repeat(np.arange(len(objects)), counts))
    columns["source_key"] = pa.array([o.source_key for o in objects], pa.string()).take(owner)
    columns["delivered_at"] = pa.array([_ms(o.delivered_at) for o in objects], pa.int64()).take(owner).cast(TS)
    return pa.RecordBatch.from_arrays([columns[name] for name in COLUMNS], schema=SCHEMA)


# -- the fast path ---------------------------------------------------------------------------------
def _record_type() -> pa.StructType:
    """The JSON shape the fast path accepts, merged from FIELDS: anything else in a record is ignored."""
    tree: dict = {}
    for column, path in FIELDS.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = SCHEMA.field(column).type if column in BOOL_COLUMNS else pa.string()
    tree["resources"] = pa.list_(pa.struct([(key, pa.string()) for key in RESOURCE_FIELDS.values()]))

    def build(node: dict) -> pa.StructType:
        return pa.struct([(k, build(v) if isinstance(v, dict) else v) for k, v in node.items()])

    return build(tree)


_JSON_SCHEMA = pa.schema([("Records", pa.list_(_record_type()))])
_JSON_PARSE = pj.ParseOptions(explicit_schema=_JSON_SCHEMA, unexpected_field_behavior="ignore", newlines_in_values=True)


def _fast(opened: list[_Opened]) -> list[Parsed] | None:
    """Rows of objects whose records are all well formed, or None: then the careful path decides.

    Arrow's reader refuses any value of another JSON type than the schema's (an object where a
    string belongs, a string "false" for a boolean), so what it accepts the careful path would
    read the same way; the checks below catch what it accepts but the careful path would not.
    """
    counts = [len(o.raws) for o in opened]
    columns = _fast_columns(opened, counts)
    if columns is None:
        return None
    batch = _batch(columns, [o.obj for o in opened], counts)
    starts = np.cumsum([0, *counts[:-1]]).tolist()
    return [Parsed(batch.slice(start, n), [], n) for start, n in zip(starts, counts, strict=True)]


def _fast_columns(opened: list[_Opened], counts: list[int]) -> dict[str, pa.Array] | None:
    texts = [o.text for o in opened]
    blob = texts[0] if len(texts) == 1 else b"\n".join(texts)  # one JSON document per line
    try:
        table = pj.read_json(
            pa.BufferReader(blob),
            read_options=pj.ReadOptions(use_threads=False, block_size=len(blob) + 1),
            parse_options=_JSON_PARSE,
        )
    except pa.ArrowInvalid:
        return None
    lists = table.column("Records").combine_chunks()
    if len(lists) != len(opened) or lists.null_count or np.diff(lists.offsets).tolist() != counts:
        return None
    records = lists.flatten()
    if records.null_count:
        return None  # a null in Records: not an object
    fields = _flatten(records)
    event_id, event_time, category = fields["eventID"], fields["eventTime"], fields["eventCategory"]
    if event_id.null_count or event_time.null_count or pc.any(pc.equal(event_id, "")).as_py():
        return None  # a record without eventID or eventTime
    if pc.any(pc.equal(category, "Insight")).as_py():
        return None
    try:
        event_time = pc.cast(event_time, TS)
    except pa.ArrowInvalid:
        return None
    raw = _raw_column(opened)
    if raw is None:
        return None
    accounts = pa.array([o.obj.account or None for o in opened], pa.string())
    columns = {name: _dig(fields, path) for name, path in FIELDS.items()}
    columns["event_time"] = event_time
    columns["recipient_account_id"] = _fill_empty(
        columns["recipient_account_id"], accounts.take(pa.array(np.repeat(np.arange(len(opened)), counts)))
    )
    columns["resources"] = _resources_column(columns["resources"])
    columns["raw"] = raw
    return columns


def _flatten(array: pa.StructArray) -> dict[str, pa.Array]:
    """A struct's children with the struct's own nulls applied."""
    return {array.type.field(i).name: child for i, child in enumerate(array.flatten())}


def _dig(fields: dict[str, pa.Array], path: tuple[str, ...]) -> pa.Array:
    value = fields[path[0]]
    for key in path[1:]:
        value = _flatten(value)[key]
    return value


def _fill_empty(values: pa.Array, fallback: pa.Array) -> pa.Array:
    missing = pc.fill_null(pc.equal(values, ""), True)
    return pc.if_else(missing, fallback, values)


def _resources_column(values: pa.ListArray) -> pa.ListArray:
    """``resources[]`` renamed to the lake's field names (ARN -> arn, accountId -> account_id)."""
    items = _flatten(values.values)
    renamed = pa.StructArray.from_arrays(
        [items[key] for key in RESOURCE_FIELDS.values()],
        fields=list(RESOURCE_TYPE),
        mask=values.values.is_null(),
    )
    return pa.ListArray.from_arrays(values.offsets, renamed, type=pa.list_(RESOURCE_TYPE), mask=values.is_null())


def _raw_column(opened: list[_Opened]) -> pa.StringArray | None:
    """Each record's original bytes as one string column, copied by Arrow in one pass.
    None when the bytes are not valid UTF-8 (the careful path then replaces what is not)."""
    padded = []  # each record with one byte after it, so that one slice trims them all
    for one in opened:
        lengths = np.fromiter(map(len, one.raws), dtype=np.int64, count=len(one.raws))
        spans = _spans_in_place(one.text, one.raws, lengths)
        if spans is None:  # not CloudTrail's compact layout: gather the records first
            offsets = np.zeros(len(one.raws) + 1, dtype=np.int32)
            np.cumsum(lengths + 1, out=offsets[1:])
            joined = pa.py_buffer(b",".join(one.raws) + b",")
            spans = pa.Array.from_buffers(pa.binary(), len(one.raws), [None, pa.py_buffer(offsets), joined])
        padded.append(spans)
    try:
        return pc.binary_slice(pa.concat_arrays(padded), 0, -1).cast(pa.string())  # the cast checks UTF-8
    except pa.ArrowInvalid:
        return None


def _spans_in_place(text: Text, raws: list[msgspec.Raw], lengths: np.ndarray) -> pa.BinaryArray | None:
    """The records where they lie in ``text``, each with the one byte that follows it.

    CloudTrail writes ``{"Records":[{…},{…},…,{…}]}`` without spaces, so from the first record's
    position and the lengths every record's place follows; the bytes around each are checked,
    so any other layout (pretty-printed, spaces) is recognised and declined.
    """
    if not raws:
        return pa.array([], pa.binary())
    whole = np.frombuffer(text, dtype=np.uint8)
    starts = np.empty(len(raws), dtype=np.int64)
    starts[0] = np.frombuffer(raws[0], dtype=np.uint8).ctypes.data - whole.ctypes.data
    np.cumsum(lengths[:-1] + 1, out=starts[1:])
    starts[1:] += starts[0]
    ends = starts + lengths
    if ends[-1] >= len(whole):
        return None
    framed = (whole[starts] == ord("{")).all() and (whole[ends - 1] == ord("}")).all()
    if not (framed and (whole[ends[:-1]] == ord(",")).all() and whole[ends[-1]] == ord("]")):
        return None
    offsets = np.append(starts, ends[-1] + 1).astype(np.int32)
    return pa.Array.from_buffers(pa.binary(), len(raws), [None, pa.py_buffer(offsets), pa.py_buffer(text)])


# -- the careful path ------------------------------------------------------------------------------
def _careful(one: _Opened) -> Parsed:
    columns, rejected = _careful_columns(one.raws, one.obj.account)
    return Parsed(_batch(columns, [one.obj], [len(columns["event_id"])]), rejected, len(one.raws))


def _careful_columns(raws: list[msgspec.Raw], fallback_account: str) -> tuple[dict[str, pa.Array], list[Rejected]]:
    values: dict[str, list] = {name: [] for name in FIELDS}
    values["raw"] = []
    rejected: list[Rejected] = []
    for index, raw in enumerate(raws):
        text = bytes(raw).decode("utf-8", errors="replace")  # bytes that are not UTF-8 become U+FFFD
        record = orjson.loads(text)
        reason = _problem(record)
        event_ms = None if reason else _event_ms(record["eventTime"])
        if reason is None and event_ms is None:
            reason = f"malformed eventTime: {_text(record['eventTime'])[:64]!r}"
        if reason is not None:
            rejected.append(Rejected(index, reason, text[:EXCERPT_CHARS]))
            continue
        for name, path in FIELDS.items():
            values[name].append(_lookup(record, path))
        values["event_id"][-1] = record["eventID"]
        values["event_time"][-1] = event_ms
        values["recipient_account_id"][-1] = values["recipient_account_id"][-1] or fallback_account or None
        values["resources"][-1] = _resources(record.get("resources"))
        values["management_event"][-1] = _flag(record.get("managementEvent"))
        values["read_only"][-1] = _flag(record.get("readOnly"))
        values["raw"].append(text)
    columns = {}
    for name, column in values.items():
        kind = pa.int64() if name == "event_time" else SCHEMA.field(name).type
        columns[name] = pa.array(column, kind)
    columns["event_time"] = columns["event_time"].cast(TS)
    return columns, rejected


def _lookup(record: dict, path: tuple[str, ...]) -> str | None:
    """The value at ``path`` as text, None when any step is missing or not an object."""
    value: object = record
    for key in path:
        if value.__class__ is not dict:
            return None
        value = value.get(key)  # type: ignore[union-attr]
    return _text(value)


def _problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return "record is not a JSON object"
    event_id = record.get("eventID")
    if not isinstance(event_id, str) or not event_id:
        return "missing eventID"
    if "eventTime" not in record or record["eventTime"] in (None, ""):
        return "missing eventTime"
    if record.get("eventCategory") == "Insight":
        return "Insights event (eventCategory=Insight) in a log file"
    return None


def _event_ms(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return _ms(parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc))


def _ms(moment: datetime) -> int:
    """Milliseconds since the epoch, in integers (a float product would round .123 to .122)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _text(value: object) -> str | None:
    """Strings stay; anything else an attacker put in a string field is kept as its JSON text."""
    if value is None or value.__class__ is str:
        return value  # type: ignore[return-value]
    return orjson.dumps(value).decode()


def _flag(value: object) -> bool | None:
    if value is None or value.__class__ is bool:
        return value  # type: ignore[return-value]
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    return None


def _resources(value: object) -> list[dict] | None:
    if value.__class__ is not list:
        return None
    return [
        {name: _text(item.get(key)) for name, key in RESOURCE_FIELDS.items()}
        for item in value  # type: ignore[union-attr]
        if item.__class__ is dict
    ]
