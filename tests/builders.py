"""Hand-made CloudTrail records and delivery files for tests."""

from __future__ import annotations

import gzip
import itertools
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

_counter = itertools.count()


def record(**fields) -> dict:
    """A plausible management-event record; keyword arguments override or add fields."""
    base = {
        "eventVersion": "1.08",
        "userIdentity": {
            "type": "IAMUser",
            "principalId": "AIDAEXAMPLE",
            "arn": "arn:aws:iam::111122223333:user/alice",
            "accountId": "111122223333",
            "accessKeyId": "AKIAEXAMPLE",
            "userName": "alice",
        },
        "eventTime": "2026-11-20T13:05:00Z",
        "eventSource": "ec2.amazonaws.com",
        "eventName": "DescribeInstances",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "81.2.69.160",
        "userAgent": "aws-cli/2.15.0",
        "requestParameters": None,
        "responseElements": None,
        "requestID": str(uuid.uuid4()),
        "eventID": str(uuid.uuid4()),
        "readOnly": True,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": "111122223333",
        "eventCategory": "Management",
    }
    base.update(fields)
    return base


def log_name(account: str, region: str, delivered: datetime) -> str:
    suffix = f"T{next(_counter):015d}"[:16]
    return f"{account}_CloudTrail_{region}_{delivered.astimezone(timezone.utc):%Y%m%dT%H%MZ}_{suffix}.json.gz"


def log_key(account: str, region: str, delivered: datetime, prefix: str = "") -> str:
    day = delivered.astimezone(timezone.utc)
    return f"{prefix}AWSLogs/{account}/CloudTrail/{region}/{day:%Y/%m/%d}/{log_name(account, region, delivered)}"


def gz(records: list[dict] | None = None, raw: bytes | None = None) -> bytes:
    return gzip.compress(raw if raw is not None else json.dumps({"Records": records or []}).encode())


def write_log(
    root: Path,
    records: list[dict] | None,
    delivered: datetime,
    account: str = "111122223333",
    region: str = "us-east-1",
    raw: bytes | None = None,
    data: bytes | None = None,
) -> Path:
    """A delivery file at its CloudTrail path under ``root``; ``data`` gives the bytes verbatim."""
    path = root / log_key(account, region, delivered)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if data is not None else gz(records, raw))
    return path


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)
