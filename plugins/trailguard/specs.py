"""Detection specs: one YAML file per detection in ``include/detections``, validated on load."""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from trailguard.derive import ROW_BUILDERS, source_address

# Fields every candidate row has (derive.py builds them); keys, context and placeholders name them.
ROW_FIELDS = frozenset(
    {
        "event_id", "event_time", "event_name", "aws_region", "recipient_account_id", "user", "user_arn",
        "src", "country", "country_name", "city", "region", "asn", "asn_org", "object", "command",
        "requesting_account_id", "requested_account_id", "role_arn", "role_session_name", "user_agent",
        "delivered_at",
    }
)  # fmt: skip
# Lake columns an allow-list may match: source_ip against CIDRs, the others against globs.
ALLOW_FIELDS = frozenset(
    {
        "source_ip", "user_arn", "user_name", "user_account_id", "user_type", "principal_id", "access_key_id",
        "invoked_by", "session_issuer_arn", "session_issuer_user_name", "recipient_account_id", "aws_region",
        "user_agent", "request_role_arn", "assumed_role_arn", "role_session_name", "event_source", "event_name",
    }
)  # fmt: skip
ATTACK_ID = re.compile(r"^T\d{4}(\.\d{3})?$")
PLACEHOLDER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_.]*)\$")
REQUIRED = {
    "id", "name", "description", "mitre_attack", "risk", "message", "placeholders", "events", "rows",
    "key", "baseline_key", "context", "window_hours", "baseline",
}  # fmt: skip
KNOWN_PREFIX = "known_"  # list_known_as names an alert field "known_<things>"; Slack shows "<Things> seen before"
OPTIONAL = {"escu_baselines", "references", "allow", "baseline_attrs", "list_known_as"}


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class AllowRule:
    """One ``allow:`` entry: events whose ``field`` matches any pattern are skipped before keying."""

    field: str
    patterns: tuple[str, ...]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def matches(self, event: dict[str, Any]) -> bool:
        value = event.get(self.field)
        if not value:
            return False
        if self.networks:
            address = source_address(value)
            return address is not None and any(address in n for n in self.networks)
        return any(fnmatchcase(value, p) for p in self.patterns)


@dataclass(frozen=True)
class Spec:
    id: str
    name: str
    description: str
    mitre_attack: tuple[str, ...]
    risk_score: int
    impact: int
    confidence: int
    message: str
    placeholders: dict[str, str]
    event_names: tuple[str, ...]
    success_only: bool
    exclude_user_types: tuple[str, ...]
    rows: str
    key: tuple[str, ...]
    baseline_key: tuple[str, ...]
    context: tuple[str, ...]
    window_hours: int
    lookback_days: int
    warmup_days: int
    forget_days: int
    max_age_hours: int
    path: str
    allow: tuple[AllowRule, ...] = ()
    baseline_attrs: tuple[str, ...] = ()  # row fields a baseline row keeps from its first sight
    list_known_as: str | None = None  # alert field listing the key values known before the window

    @property
    def slug(self) -> str:
        return Path(self.path).stem

    def allows(self, event: dict[str, Any]) -> bool:
        """True when the allow-list says to skip this event."""
        return any(rule.matches(event) for rule in self.allow)


def load_specs(folder: str | Path) -> list[Spec]:
    paths = sorted(Path(folder).glob("*.yml"))
    if not paths:
        raise SpecError(f"no detection specs (*.yml) in {folder}")
    specs = [load_spec(p) for p in paths]
    ids = [s.id for s in specs]
    if len(set(ids)) != len(ids):
        raise SpecError(f"duplicate detection ids in {folder}")
    return specs


def load_spec(path: str | Path) -> Spec:
    doc = yaml.safe_load(Path(path).read_text())
    try:
        return _spec(doc, str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"{path}: {exc}") from None


def _spec(doc: Any, path: str) -> Spec:
    if not isinstance(doc, dict):
        raise ValueError("a spec is a mapping")
    missing, unknown = REQUIRED - doc.keys(), doc.keys() - REQUIRED - OPTIONAL
    if missing or unknown:
        raise ValueError(f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    uuid.UUID(doc["id"])
    attack = tuple(doc["mitre_attack"])
    bad = [a for a in attack if not ATTACK_ID.match(a)]
    if bad:
        raise ValueError(f"malformed ATT&CK ids {bad}")
    risk = doc["risk"]
    if int(risk["score"]) != int(risk["impact"]) * int(risk["confidence"]) // 100:
        raise ValueError("risk score must be impact x confidence / 100, as ESCU computes it")
    message = " ".join(doc["message"].split())
    placeholders = dict(doc["placeholders"])
    unresolved = set(PLACEHOLDER.findall(message)) - placeholders.keys()
    if unresolved:
        raise ValueError(f"message placeholders without a field: {sorted(unresolved)}")
    if doc["rows"] not in ROW_BUILDERS:
        raise ValueError(f"rows: unknown builder {doc['rows']!r}; known: {sorted(ROW_BUILDERS)}")
    for name in ("key", "baseline_key", "context"):
        unknown_fields = set(doc[name]) - ROW_FIELDS
        if unknown_fields or not doc[name]:
            raise ValueError(f"{name}: unknown or no fields {sorted(unknown_fields)}")
    if set(placeholders.values()) - ROW_FIELDS:
        raise ValueError(f"placeholders map to unknown fields {sorted(set(placeholders.values()) - ROW_FIELDS)}")
    events, baseline = doc["events"], doc["baseline"]
    if not events["event_names"]:
        raise ValueError("events.event_names is empty")
    attrs = tuple(doc.get("baseline_attrs") or ())
    if set(attrs) - ROW_FIELDS:
        raise ValueError(f"baseline_attrs: unknown fields {sorted(set(attrs) - ROW_FIELDS)}")
    list_known_as = doc.get("list_known_as")
    if list_known_as is not None and (
        len(doc["key"]) != 1 or not str(list_known_as).isidentifier() or not str(list_known_as).startswith(KNOWN_PREFIX)
    ):
        raise ValueError(
            f"list_known_as needs a one-field key and an identifier starting {KNOWN_PREFIX!r} (e.g. known_countries)"
        )
    return Spec(
        id=doc["id"],
        name=doc["name"],
        description=" ".join(doc["description"].split()),
        mitre_attack=attack,
        risk_score=int(risk["score"]),
        impact=int(risk["impact"]),
        confidence=int(risk["confidence"]),
        message=message,
        placeholders=placeholders,
        event_names=tuple(events["event_names"]),
        success_only=bool(events["success_only"]),
        exclude_user_types=tuple(events.get("exclude_user_types") or ()),
        rows=doc["rows"],
        key=tuple(doc["key"]),
        baseline_key=tuple(doc["baseline_key"]),
        context=tuple(doc["context"]),
        window_hours=int(doc["window_hours"]),
        lookback_days=int(baseline["lookback_days"]),
        warmup_days=int(baseline["warmup_days"]),
        forget_days=int(baseline["forget_days"]),
        max_age_hours=int(baseline["max_age_hours"]),
        path=path,
        allow=_allow_rules(doc.get("allow")),
        baseline_attrs=attrs,
        list_known_as=list_known_as,
    )


def _allow_rules(block: Any) -> tuple[AllowRule, ...]:
    """``allow: {field: [pattern, ...]}``; source_ip patterns are CIDRs (or single addresses)."""
    if block is None:
        return ()
    if not isinstance(block, dict):
        raise ValueError("allow: a mapping of field -> list of patterns")
    rules = []
    for name, patterns in block.items():
        if name not in ALLOW_FIELDS:
            raise ValueError(f"allow: unknown field {name!r}; allowed: {sorted(ALLOW_FIELDS)}")
        if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"allow.{name}: a non-empty list of strings")
        if name == "source_ip":
            try:
                networks = tuple(ipaddress.ip_network(p, strict=False) for p in patterns)
            except ValueError as exc:
                raise ValueError(f"allow.source_ip: {exc}") from None
            rules.append(AllowRule(name, tuple(patterns), networks))
        else:
            rules.append(AllowRule(name, tuple(patterns)))
    return tuple(rules)


def render_message(spec: Spec, row: dict[str, Any]) -> str:
    """ESCU's ``$field$`` message for one row; a field with no value reads "unknown"."""

    def value(match: re.Match) -> str:
        got = row.get(spec.placeholders[match.group(1)])
        return "unknown" if got in (None, "") else str(got)

    return PLACEHOLDER.sub(value, spec.message)
