"""Derived fields: small pure functions from lake rows to what detections key on.

A row builder turns the events a spec selects into candidate rows (one per call), each with
the spec's key fields and the context an alert shows. Rows that cannot be evaluated (no
country for a service address, not a cross-account pair) are counted by reason, never
silently dropped.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from trailguard.geoip import Geo, GeoIP

ACCOUNT_ID = re.compile(r"^\d{12}$")
ARN_ACCOUNT = re.compile(r"^arn:aws[a-zA-Z-]*:(?:iam|sts)::(\d{12}):")

# Source-IP classes
PUBLIC_IPV4, PUBLIC_IPV6 = "public_ipv4", "public_ipv6"
PRIVATE, AWS_SERVICE, AWS_INTERNAL, INVALID = "private_or_reserved", "aws_service", "aws_internal", "invalid"

# The columns every builder needs from the lake.
BASE_COLUMNS = [
    "event_id",
    "event_time",
    "event_name",
    "aws_region",
    "recipient_account_id",
    "user_type",
    "user_arn",
    "user_name",
    "user_account_id",
    "session_issuer_user_name",
    "source_ip",
    "user_agent",
]


@dataclass
class Derived:
    rows: list[dict[str, Any]] = field(default_factory=list)
    not_evaluated: Counter = field(default_factory=Counter)


def source_ip_class(value: str | None) -> str:
    """What a ``sourceIPAddress`` is: only public addresses have a meaningful country."""
    return classify_source(value)[0]


def source_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a source IP names, an IPv4-mapped IPv6 one (``::ffff:a.b.c.d``) as its IPv4
    address; None when it names none (a service name, garbage)."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    return (ip.ipv4_mapped or ip) if ip.version == 6 else ip


@lru_cache(maxsize=65_536)
def classify_source(value: str | None) -> tuple[str, str | None]:
    """(class, address to locate). An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) is its IPv4
    address; leading zeros (``035.1.2.3``, octal to some parsers) are invalid. Cached: a day of
    CloudTrail has few distinct sources."""
    if not value:
        return INVALID, None
    if value == "AWS Internal":
        return AWS_INTERNAL, None
    if value.lower().endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return AWS_SERVICE, None
    ip = source_address(value)
    if ip is None:
        return INVALID, None
    if not ip.is_global or ip.is_multicast:
        return PRIVATE, None
    return (PUBLIC_IPV4 if ip.version == 4 else PUBLIC_IPV6), str(ip)


def account_of_arn(arn: str | None) -> str | None:
    match = ARN_ACCOUNT.match(arn or "")
    return match.group(1) if match else None


def requesting_account(row: dict[str, Any]) -> str | None:
    """The caller's account: ``userIdentity.accountId``, else the account that recorded the call.
    Taken from the identity itself, so role chaining (an AssumedRole caller) works too."""
    return row.get("user_account_id") or row.get("recipient_account_id")


def requested_account(row: dict[str, Any]) -> str | None:
    """The role's account: the requested roleArn, else the IAM role resource, else the assumed-role ARN."""
    account = account_of_arn(row.get("request_role_arn"))
    if account:
        return account
    for resource in row.get("resources") or []:
        if resource.get("type") == "AWS::IAM::Role":
            account = resource.get("account_id") or account_of_arn(resource.get("arn"))
            if account:
                return account
    return account_of_arn(row.get("assumed_role_arn"))


def user_of(row: dict[str, Any]) -> str | None:
    """ESCU's user: userName, else the session issuer's userName, else the ARN."""
    return row.get("user_name") or row.get("session_issuer_user_name") or row.get("user_arn")


_OBJECT_FIELDS = (
    ("responseElements", "groupId"),
    ("requestParameters", "bucketName"),
    ("responseElements", "volumeId"),
    ("requestParameters", "roleName"),
    ("requestParameters", "userName"),
    ("requestParameters", "groupName"),
    ("requestParameters", "policyName"),
    ("requestParameters", "instanceProfileName"),
    ("requestParameters", "functionName"),
    ("requestParameters", "queueName"),
    ("requestParameters", "tableName"),
    ("requestParameters", "logGroupName"),
    ("requestParameters", "logStreamName"),
    ("requestParameters", "stackName"),
    ("requestParameters", "keyspaceName"),
    ("requestParameters", "deliveryStreamName"),
    ("requestParameters", "accountAlias"),
    ("requestParameters", "policyArn"),
    ("responseElements", "networkInterface", "networkInterfaceId"),
    ("responseElements", "networkAcl", "networkAclId"),
    ("requestParameters", "name"),
    ("requestParameters", "url"),
)


def created_object(event_name: str | None, record: dict[str, Any]) -> str | None:
    """ESCU's object: the instance id(s) for Run/StartInstances, else the created resource's name."""
    if event_name in {"RunInstances", "StartInstances"}:
        where = "responseElements" if event_name == "RunInstances" else "requestParameters"
        items = _dig(record, where, "instancesSet", "items") or []
        ids = [i.get("instanceId") for i in items if isinstance(i, dict) and i.get("instanceId")]
        if ids:
            return ", ".join(ids)
    for path in _OBJECT_FIELDS:
        value = _dig(record, *path)
        if isinstance(value, str) and value:
            return value
    return None


def _dig(value: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _geo_fields(geo: Geo | None) -> dict[str, Any]:
    if geo is None:
        return {"country": None, "country_name": None, "city": None, "region": None, "asn": None, "asn_org": None}
    return {
        "country": geo.country,
        "country_name": geo.country_name,
        "city": geo.city,
        "region": geo.region,
        "asn": geo.asn,
        "asn_org": geo.asn_org,
    }


def _common(row: dict[str, Any], geo: GeoIP) -> dict[str, Any]:
    src = row.get("source_ip")
    address = classify_source(src)[1]
    located = geo.lookup(address) if address else None
    return {
        "event_id": row["event_id"],
        "event_time": row["event_time"],
        "delivered_at": row["delivered_at"],
        "event_name": row.get("event_name"),
        "aws_region": row.get("aws_region"),
        "recipient_account_id": row.get("recipient_account_id"),
        "user": user_of(row),
        "user_arn": row.get("user_arn"),
        "src": src,
        **_geo_fields(located),
        "user_agent": row.get("user_agent"),
        "command": row.get("event_name"),
    }


CROSS_ACCOUNT_COLUMNS = [
    *BASE_COLUMNS,
    "shared_event_id",
    "request_role_arn",
    "role_session_name",
    "assumed_role_arn",
    "resources",
]


def cross_account_rows(events: Iterable[dict[str, Any]], geo: GeoIP) -> Derived:
    """One row per cross-account AssumeRole call with two different 12-digit accounts.

    A call recorded in both the caller's and the role owner's account (same sharedEventID)
    is one call; the caller's copy is kept, since only it carries the caller's full identity."""
    out = Derived()
    calls: dict[str, dict[str, Any]] = {}
    for row in events:
        requesting, requested = requesting_account(row), requested_account(row)
        if not (requesting and requested and ACCOUNT_ID.match(requesting) and ACCOUNT_ID.match(requested)):
            out.not_evaluated["no 12-digit account pair"] += 1
            continue
        if requesting == requested:
            out.not_evaluated["same account"] += 1
            continue
        call = row.get("shared_event_id") or row["event_id"]
        caller_side = row.get("recipient_account_id") == requesting
        kept = calls.get(call)
        if kept is not None:
            out.not_evaluated["second copy of one call (sharedEventID)"] += 1
            if not caller_side or kept["_caller_side"]:
                continue
        calls[call] = {
            **_common(row, geo),
            "requesting_account_id": requesting,
            "requested_account_id": requested,
            "role_arn": row.get("request_role_arn") or row.get("assumed_role_arn"),
            "role_session_name": row.get("role_session_name"),
            "object": row.get("request_role_arn"),
            "_caller_side": caller_side,
        }
    for call in calls.values():
        del call["_caller_side"]
        out.rows.append(call)
    return out


PROVISIONING_COLUMNS = BASE_COLUMNS


def provisioning_rows(events: Iterable[dict[str, Any]], geo: GeoIP) -> Derived:
    """One row per provisioning call whose source IP has a GeoIP country. The created object
    comes from the raw record, so only alert rows get it (``provisioning_alert_fields``)."""
    out = Derived()
    for row in events:
        ip_class = source_ip_class(row.get("source_ip"))
        if ip_class not in {PUBLIC_IPV4, PUBLIC_IPV6}:
            out.not_evaluated[f"source is {ip_class.replace('_', ' ')}"] += 1
            continue
        common = _common(row, geo)
        if common["country"] is None:
            out.not_evaluated["source IP not in the GeoIP database"] += 1
            continue
        out.rows.append(
            {
                **common,
                "object": None,
                "requesting_account_id": None,
                "requested_account_id": None,
                "role_arn": None,
                "role_session_name": None,
            }
        )
    return out


def provisioning_alert_fields(row: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    return {"object": created_object(row.get("event_name"), record)}


@dataclass(frozen=True)
class RowBuilder:
    """Candidate rows from a spec's events, the lake columns that takes, and (optionally) the
    fields only an alert shows, from the raw record: baselines never read ``raw``."""

    build: Callable[[Iterable[dict[str, Any]], GeoIP], Derived]
    columns: tuple[str, ...]
    alert_fields: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None


ROW_BUILDERS: dict[str, RowBuilder] = {
    "cross_account": RowBuilder(cross_account_rows, tuple(CROSS_ACCOUNT_COLUMNS)),
    "provisioning": RowBuilder(provisioning_rows, tuple(PROVISIONING_COLUMNS), provisioning_alert_fields),
}
