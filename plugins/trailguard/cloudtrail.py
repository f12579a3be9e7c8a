"""CloudTrail log objects -> typed rows (Arrow) plus quarantine records.

Pure functions of bytes: no I/O here, so a worker process can run them and tests can feed
them anything an attacker or a broken delivery could produce.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone

import msgspec
import orjson
import pyarrow as pa

EXCERPT_CHARS = 300

RESOURCE_TYPE = pa.struct([("arn", pa.string()), ("account_id", pa.string()), ("type", pa.string())])
TS = pa.timestamp("ms", tz="UTC")

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


class _Issuer(msgspec.Struct):
    arn: str | None = None
    userName: str | None = None


class _Session(msgspec.Struct):
    sessionIssuer: _Issuer | None = None


class _Identity(msgspec.Struct):
    type: str | None = None
    arn: str | None = None
    userName: str | None = None
    accountId: str | None = None
    principalId: str | None = None
    accessKeyId: str | None = None
    invokedBy: str | None = None
    sessionContext: _Session | None = None


class _Request(msgspec.Struct):
    roleArn: str | None = None
    roleSessionName: str | None = None


class _AssumedRoleUser(msgspec.Struct):
    arn: str | None = None


class _Response(msgspec.Struct):
    assumedRoleUser: _AssumedRoleUser | None = None


class _Resource(msgspec.Struct):
    ARN: str | None = None
    accountId: str | None = None
    type: str | None = None


class _Record(msgspec.Struct):
    """The fields trailguard reads, strictly typed: a record that does not fit (an attacker's
    object where a string belongs) takes the slower, forgiving path instead."""

    eventID: str | None = None
    eventTime: str | None = None
    eventName: str | None = None
    eventSource: str | None = None
    awsRegion: str | None = None
    recipientAccountId: str | None = None
    eventVersion: str | None = None
    eventType: str | None = None
    eventCategory: str | None = None
    managementEvent: bool | None = None
    readOnly: bool | None = None
    userIdentity: _Identity | None = None
    sourceIPAddress: str | None = None
    userAgent: str | None = None
    errorCode: str | None = None
    sharedEventID: str | None = None
    requestParameters: _Request | None = None
    responseElements: _Response | None = None
    resources: list[_Resource] | None = None


class _Envelope(msgspec.Struct):
    Records: list[msgspec.Raw]


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_RECORD = msgspec.json.Decoder(_Record)


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


def decompress(data: bytes) -> bytes:
    if not data:
        raise BadObject("empty object (0 bytes)")
    try:
        return gzip.decompress(data)
    except gzip.BadGzipFile as exc:
        raise BadObject(f"not gzip data ({exc})") from None
    except EOFError:
        raise BadObject("truncated gzip: the stream ends before its end marker") from None
    except zlib.error as exc:
        raise BadObject(f"corrupt gzip: {exc}") from None


def split_records(text: bytes) -> list[msgspec.Raw]:
    """The ``Records`` array, each record still as its original JSON text."""
    try:
        return _ENVELOPE.decode(text).Records
    except msgspec.ValidationError:
        raise BadObject("JSON without a Records array (not a CloudTrail log file)") from None
    except msgspec.DecodeError as exc:
        raise BadObject(f"invalid JSON: {exc}") from None


def parse_object(data: bytes, source_key: str, delivered_at: datetime, fallback_account: str) -> Parsed:
    """Gzip bytes of one log object -> rows; raises BadObject when nothing in it is usable.

    ``fallback_account`` (the account in the object's key) fills recipientAccountId, which
    eventVersion 1.0x records lack: that is the account whose trail delivered them.
    """
    raws = split_records(decompress(data))
    fast: list[_Record] = []
    fast_ms: list[int] = []
    fast_raw: list[str] = []
    slow: dict[str, list] = {name: [] for name in COLUMNS}
    rejected: list[Rejected] = []
    for index, raw in enumerate(raws):
        raw_bytes = bytes(raw)
        text = raw_bytes.decode("utf-8", errors="replace")
        try:
            record = _RECORD.decode(raw_bytes)
        except msgspec.ValidationError:
            record = None
        event_ms = _event_ms(record.eventTime) if record is not None else None
        if record is not None and event_ms is not None and record.eventID and record.eventCategory != "Insight":
            fast.append(record)
            fast_ms.append(event_ms)
            fast_raw.append(text)
            continue
        loose = orjson.loads(raw_bytes)  # unusual shapes: checked and read field by field
        reason = _problem(loose)
        if reason is None:
            event_ms = _event_ms(loose["eventTime"])
            if event_ms is None:
                reason = f"malformed eventTime: {_text(loose['eventTime'])[:64]!r}"
        if reason is not None:
            rejected.append(Rejected(index, reason, text[:EXCERPT_CHARS]))
            continue
        _append(slow, loose, event_ms, fallback_account, text)
    cols = _columns(fast, fast_ms, fast_raw, fallback_account)
    if slow["event_id"]:
        cols = {name: cols[name] + slow[name] for name in cols}
    n = len(cols["event_id"])
    cols["source_key"] = [source_key] * n
    cols["delivered_at"] = [int(delivered_at.timestamp() * 1000)] * n
    batch = pa.RecordBatch.from_pydict(cols, schema=SCHEMA)
    return Parsed(rows=batch, rejected=rejected, records=len(raws))


def _columns(recs: list[_Record], event_ms: list[int], raw: list[str], fallback_account: str) -> dict[str, list]:
    """Column lists from typed records, one comprehension per column (the hot loop of ingest)."""
    ids = [r.userIdentity or _NO_IDENTITY for r in recs]
    issuers = [(u.sessionContext or _NO_SESSION).sessionIssuer or _NO_ISSUER for u in ids]
    reqs = [r.requestParameters or _NO_REQUEST for r in recs]
    return {
        "event_id": [r.eventID for r in recs],
        "event_time": event_ms,
        "event_name": [r.eventName for r in recs],
        "event_source": [r.eventSource for r in recs],
        "aws_region": [r.awsRegion for r in recs],
        "recipient_account_id": [r.recipientAccountId or fallback_account for r in recs],
        "event_version": [r.eventVersion for r in recs],
        "event_type": [r.eventType for r in recs],
        "event_category": [r.eventCategory for r in recs],
        "management_event": [r.managementEvent for r in recs],
        "read_only": [r.readOnly for r in recs],
        "user_type": [u.type for u in ids],
        "user_arn": [u.arn for u in ids],
        "user_name": [u.userName for u in ids],
        "user_account_id": [u.accountId for u in ids],
        "principal_id": [u.principalId for u in ids],
        "access_key_id": [u.accessKeyId for u in ids],
        "invoked_by": [u.invokedBy for u in ids],
        "session_issuer_arn": [i.arn for i in issuers],
        "session_issuer_user_name": [i.userName for i in issuers],
        "source_ip": [r.sourceIPAddress for r in recs],
        "user_agent": [r.userAgent for r in recs],
        "error_code": [r.errorCode for r in recs],
        "shared_event_id": [r.sharedEventID for r in recs],
        "request_role_arn": [q.roleArn for q in reqs],
        "role_session_name": [q.roleSessionName for q in reqs],
        "assumed_role_arn": [((r.responseElements or _NO_RESPONSE).assumedRoleUser or _NO_ASSUMED).arn for r in recs],
        "resources": [
            None
            if r.resources is None
            else [{"arn": x.ARN, "account_id": x.accountId, "type": x.type} for x in r.resources]
            for r in recs
        ],
        "raw": raw,
    }


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
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


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


def _obj(value: object) -> dict:
    return value if value.__class__ is dict else {}


def _resources(value: object) -> list[dict] | None:
    if value.__class__ is not list:
        return None
    return [
        {"arn": _text(r.get("ARN")), "account_id": _text(r.get("accountId")), "type": _text(r.get("type"))}
        for r in value
        if r.__class__ is dict
    ]


_NO_IDENTITY, _NO_SESSION, _NO_ISSUER = _Identity(), _Session(), _Issuer()
_NO_REQUEST, _NO_RESPONSE, _NO_ASSUMED = _Request(), _Response(), _AssumedRoleUser()


def _append(cols: dict[str, list], r: dict, event_ms: int, fallback_account: str, raw: str) -> None:
    ui = _obj(r.get("userIdentity"))
    issuer = _obj(_obj(ui.get("sessionContext")).get("sessionIssuer"))
    req = _obj(r.get("requestParameters"))
    resp = _obj(r.get("responseElements"))
    t = _text
    cols["event_id"].append(r["eventID"])
    cols["event_time"].append(event_ms)
    cols["event_name"].append(t(r.get("eventName")))
    cols["event_source"].append(t(r.get("eventSource")))
    cols["aws_region"].append(t(r.get("awsRegion")))
    cols["recipient_account_id"].append(t(r.get("recipientAccountId")) or fallback_account)
    cols["event_version"].append(t(r.get("eventVersion")))
    cols["event_type"].append(t(r.get("eventType")))
    cols["event_category"].append(t(r.get("eventCategory")))
    cols["management_event"].append(_flag(r.get("managementEvent")))
    cols["read_only"].append(_flag(r.get("readOnly")))
    cols["user_type"].append(t(ui.get("type")))
    cols["user_arn"].append(t(ui.get("arn")))
    cols["user_name"].append(t(ui.get("userName")))
    cols["user_account_id"].append(t(ui.get("accountId")))
    cols["principal_id"].append(t(ui.get("principalId")))
    cols["access_key_id"].append(t(ui.get("accessKeyId")))
    cols["invoked_by"].append(t(ui.get("invokedBy")))
    cols["session_issuer_arn"].append(t(issuer.get("arn")))
    cols["session_issuer_user_name"].append(t(issuer.get("userName")))
    cols["source_ip"].append(t(r.get("sourceIPAddress")))
    cols["user_agent"].append(t(r.get("userAgent")))
    cols["error_code"].append(t(r.get("errorCode")))
    cols["shared_event_id"].append(t(r.get("sharedEventID")))
    cols["request_role_arn"].append(t(req.get("roleArn")))
    cols["role_session_name"].append(t(req.get("roleSessionName")))
    cols["assumed_role_arn"].append(t(_obj(resp.get("assumedRoleUser")).get("arn")))
    cols["resources"].append(_resources(r.get("resources")))
    cols["raw"].append(raw)
