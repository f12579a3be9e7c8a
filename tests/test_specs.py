"""One parametrised test holds every detection spec to the same invariants."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from trailguard.derive import ROW_BUILDERS
from trailguard.detect import read_columns
from trailguard.settings import Settings
from trailguard.specs import (
    ALLOW_FIELDS,
    PLACEHOLDER,
    ROW_FIELDS,
    SpecError,
    load_spec,
    load_specs,
    render_message,
)

SPEC_DIR = Path(Settings().detections_dir)
SPEC_FILES = sorted(SPEC_DIR.glob("*.yml"))


def test_the_seed_detections_are_specs() -> None:
    names = {s.name for s in load_specs(SPEC_DIR)}
    assert names == {
        "AWS Cross Account Activity From Previously Unseen Account",
        "Cloud Provisioning Activity From Previously Unseen Country",
    }


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.stem for p in SPEC_FILES])
def test_spec_invariants(path: Path) -> None:
    spec = load_spec(path)
    assert spec.slug == path.stem
    assert all(a.startswith("T") for a in spec.mitre_attack)
    assert spec.risk_score == spec.impact * spec.confidence // 100
    assert spec.rows in ROW_BUILDERS
    assert set(spec.key) | set(spec.baseline_key) | set(spec.context) <= ROW_FIELDS
    assert spec.window_hours == 24
    assert spec.warmup_days <= spec.lookback_days and spec.forget_days >= spec.warmup_days
    row = dict.fromkeys(ROW_FIELDS, "VALUE")
    rendered = render_message(spec, row)
    assert "$" not in rendered and "VALUE" in rendered
    assert set(PLACEHOLDER.findall(spec.message)) == set(spec.placeholders)
    assert "raw" not in read_columns(spec)  # baselines and windows never read the raw JSON
    assert {rule.field for rule in spec.allow} <= ALLOW_FIELDS
    assert set(spec.baseline_attrs) <= ROW_FIELDS
    assert spec.list_known_as is None or len(spec.key) == 1


def spec_with(tmp_path: Path, **change) -> Path:
    doc = yaml.safe_load(SPEC_FILES[0].read_text())
    doc.update(change)
    path = tmp_path / "changed.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("event", "allowed"),
    [
        ({"source_ip": "203.0.113.9"}, True),
        ({"source_ip": "::ffff:203.0.113.9"}, True),  # IPv4-mapped IPv6 is the IPv4 address
        ({"source_ip": "203.0.114.1"}, False),
        ({"source_ip": "2001:db8:1::5"}, True),
        ({"source_ip": "ec2.amazonaws.com"}, False),
        ({"user_arn": "arn:aws:iam::111122223333:role/terraform-ci"}, True),
        ({"user_arn": "arn:aws:iam::111122223333:role/Terraform-ci"}, False),  # globs are case-sensitive
        ({"user_agent": "Boto3/1.34 terraform"}, True),
        ({"user_agent": None}, False),
    ],
)
def test_allow_list_matches_cidrs_and_globs(tmp_path: Path, event: dict, allowed: bool) -> None:
    allow = {
        "source_ip": ["203.0.113.0/24", "2001:db8:1::/48"],
        "user_arn": ["arn:aws:iam::*:role/terraform-*"],
        "user_agent": ["*terraform*"],
    }
    spec = load_spec(spec_with(tmp_path, allow=allow))
    assert spec.allows(event) is allowed


def test_ids_are_unique() -> None:
    ids = [yaml.safe_load(p.read_text())["id"] for p in SPEC_FILES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mitre_attack": ["T78"]}, "malformed ATT&CK"),
        ({"message": "User $nobody$ did it"}, "placeholders without a field"),
        ({"key": ["no_such_field"]}, "key: unknown"),
        ({"rows": "magic"}, "unknown builder"),
        ({"risk": {"score": 99, "impact": 70, "confidence": 60}}, "risk score"),
        ({"id": "not-a-uuid"}, "badly formed"),
        ({"surprise": 1}, r"unknown \['surprise'\]"),
        ({"allow": ["user_arn"]}, "allow: a mapping"),
        ({"allow": {"raw": ["*"]}}, "allow: unknown field 'raw'"),
        ({"allow": {"user_arn": []}}, "allow.user_arn: a non-empty list"),
        ({"allow": {"source_ip": ["10.0.0.0/33"]}}, "allow.source_ip"),
        ({"allow": {"source_ip": ["ec2.amazonaws.com"]}}, "allow.source_ip"),
        ({"baseline_attrs": ["planet"]}, "baseline_attrs: unknown"),
        ({"list_known_as": "known_pairs"}, "one-field key"),  # this spec's key has two fields
    ],
)
def test_a_broken_spec_is_refused_with_the_reason(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(spec_with(tmp_path, **change))
