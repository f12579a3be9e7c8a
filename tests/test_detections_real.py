"""The seed detections over the public CloudTrail records in ../shared (real, messy, no attacks)."""

from __future__ import annotations

import gzip
import ipaddress
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from builders import utc
from trailguard.detect import Engine
from trailguard.geoip import GeoIP
from trailguard.ingest import ingest
from trailguard.lake import Lake
from trailguard.replay import replay
from trailguard.settings import Settings
from trailguard.sources import LocalStore
from trailguard.specs import load_specs
from trailguard.store import StateStore


@pytest.fixture(scope="module")
def real(shared_cloudtrail: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("real")
    lake, state = Lake(str(root / "lake")), StateStore(f"sqlite:///{root}/state.db")
    ingest(LocalStore(shared_cloudtrail), lake, state, workers=2)
    specs = {s.rows: s for s in load_specs(Settings().detections_dir)}
    return Engine(lake, state, GeoIP(Settings().geoip_db)), specs


def _records(folder: Path):
    for path in sorted(folder.rglob("*.json.gz")):
        yield from json.loads(gzip.decompress(path.read_bytes()))["Records"]


def test_no_real_assume_role_is_cross_account(real, shared_cloudtrail: Path) -> None:
    engine, specs = real
    report = engine.baseline_initial(specs["cross_account"], utc(2025, 12, 1), days=4_500)
    successful = {
        r["eventID"]
        for r in _records(shared_cloudtrail)
        if r.get("eventName") == "AssumeRole"
        and not r.get("errorCode")
        and (r.get("userIdentity") or {}).get("type") != "AWSService"
    }
    assert report.rows == 0
    assert report.events == len(successful)
    assert sum(report.not_evaluated.values()) == len(successful)


def test_grycap_provisioning_from_new_countries(real, shared_cloudtrail: Path) -> None:
    """Replay June 2017 and compare with a brute-force reading of the raw files."""
    engine, specs = real
    spec = specs["provisioning"]
    start, end = utc(2017, 5, 25), utc(2017, 6, 10)
    engine.baseline_initial(spec, start)
    got = {a.key["country"]: a.first_seen for a in replay(engine, [spec], start, end)}

    geo = GeoIP(Settings().geoip_db)
    first: dict[str, datetime] = {}
    before: set[str] = set()
    for r in _records(shared_cloudtrail / "grycap_cloudtrail-tracker"):
        if r.get("eventName") not in spec.event_names or r.get("errorCode"):
            continue
        try:
            located = geo.lookup(r["sourceIPAddress"]) if ipaddress.ip_address(r["sourceIPAddress"]).is_global else None
        except ValueError:
            located = None
        if located is None:
            continue
        at = datetime.fromisoformat(r["eventTime"].replace("Z", "+00:00"))
        if start - timedelta(days=90) <= at < start - timedelta(hours=24):
            before.add(located.country)
        elif start - timedelta(hours=24) <= at < end:
            first[located.country] = min(at, first.get(located.country, at))
    expected = {c: t for c, t in first.items() if c not in before}
    assert expected, "the reference reading found no new country: the test would prove nothing"
    assert got == expected
