"""One parametrised test holds every detection spec to the same invariants."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from trailguard.derive import ROW_BUILDERS
from trailguard.settings import Settings
from trailguard.specs import PLACEHOLDER, ROW_FIELDS, SpecError, load_spec, load_specs, render_message

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
    ],
)
def test_a_broken_spec_is_refused_with_the_reason(tmp_path: Path, change: dict, message: str) -> None:
    doc = yaml.safe_load(SPEC_FILES[0].read_text())
    doc.update(change)
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SpecError, match=message):
        load_spec(path)
