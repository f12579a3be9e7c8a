"""The CloudTrail generator: S3 layout, record shape, determinism, incidents and GeoIP truth."""

from __future__ import annotations

import gzip
import ipaddress
import itertools
import random
import re
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import geoip2.database
import orjson
import pytest
from _maxminddb_geolite2 import geolite2_database
from trailguard import generate as g
from trailguard.cloudtrail import parse_object

END = datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc)
DAYS = 3
LOG_NAME = re.compile(
    r"^(?P<account>[^_/]+)_CloudTrail_(?P<region>[^_/]+)_(?P<ts>\d{8}T\d{4}Z)_[A-Za-z0-9]+\.json\.gz$"
)
REQUIRED = (
    "eventVersion",
    "userIdentity",
    "eventTime",
    "eventSource",
    "eventName",
    "awsRegion",
    "sourceIPAddress",
    "userAgent",
    "requestParameters",
    "responseElements",
    "requestID",
    "eventID",
    "readOnly",
    "eventType",
    "managementEvent",
    "recipientAccountId",
    "eventCategory",
)
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _load(out: Path) -> list[tuple[Path, list[dict]]]:
    return [(p, orjson.loads(gzip.decompress(p.read_bytes()))["Records"]) for p in sorted(out.rglob("*.json.gz"))]


def _time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _country(reader: geoip2.database.Reader, ip: str) -> str | None:
    return reader.city(ip).country.iso_code


@pytest.fixture(scope="module")
def geoip() -> geoip2.database.Reader:
    with geoip2.database.Reader(geolite2_database()) as reader:
        yield reader


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory):
    """Three days of the demo org with the three incidents (they sit in the last two days)."""
    out = tmp_path_factory.mktemp("trail")
    org, incidents = g.month_with_incidents(END, days=DAYS)
    stats = g.generate(out, END - timedelta(days=DAYS), END, org, incidents)
    files = _load(out)
    records = [r for _, recs in files for r in recs]
    return out, org, incidents, stats, files, records


def test_layout_and_file_names(month) -> None:
    out, org, _, stats, files, _ = month
    assert stats.files == len(files) > 500
    for path, _ in files:
        rel = path.relative_to(out).parts
        match = LOG_NAME.match(rel[-1])
        assert match, rel[-1]
        assert rel[:3] == ("AWSLogs", match["account"], "CloudTrail")
        assert rel[3] == match["region"]
        assert "/".join(rel[4:7]) == f"{match['ts'][:4]}/{match['ts'][4:6]}/{match['ts'][6:8]}"
        assert match["account"] in org.account_ids


def test_records_look_like_cloudtrail(month) -> None:
    _, _, _, stats, files, records = month
    assert stats.records == len(records)
    kinds = defaultdict(int)
    for path, recs in files:
        account, region = LOG_NAME.match(path.name).group("account", "region")
        for r in recs:
            assert all(key in r for key in REQUIRED), r
            assert r["eventVersion"] in ("1.08", "1.09")
            assert r["eventType"] == "AwsApiCall" and r["eventCategory"] == "Management"
            assert r["recipientAccountId"] == account and r["awsRegion"] == region
            assert UUID4.match(r["eventID"])
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["eventTime"])
            ui = r["userIdentity"]
            kinds[ui["type"]] += 1
            if ui["type"] in ("IAMUser", "AssumedRole", "Root"):
                assert ui["arn"].startswith(("arn:aws:iam::", "arn:aws:sts::")) and ui["accountId"] in ui["arn"]
                assert ui["principalId"] and ui["accessKeyId"].startswith(("AKIA", "ASIA"))
            if ui["type"] == "AssumedRole":
                issuer = ui["sessionContext"]["sessionIssuer"]
                assert issuer["type"] == "Role" and ui["arn"].split("/")[1] == issuer["userName"]
                assert ui["sessionContext"]["attributes"]["creationDate"] <= r["eventTime"]
            if r["eventName"] == "AssumeRole":
                assert r["resources"][0]["type"] == "AWS::IAM::Role"
                assert r["resources"][0]["ARN"] == r["requestParameters"]["roleArn"]
    assert {"IAMUser", "AssumedRole", "AWSService", "AWSAccount"} <= set(kinds)
    assert len({r["eventID"] for r in records}) == len(records)
    first, last = min(r["eventTime"] for r in records), max(r["eventTime"] for r in records)
    assert (_time(first), _time(last)) == (stats.first_event, stats.last_event)
    assert END - timedelta(days=DAYS) <= stats.first_event and stats.last_event < END


def test_the_project_parser_accepts_every_record(month) -> None:
    _, _, _, _, files, _ = month
    for path, recs in files[::25]:
        account = LOG_NAME.match(path.name)["account"]
        parsed = parse_object(path.read_bytes(), str(path), datetime.now(timezone.utc), account)
        assert parsed.rejected == [] and parsed.records == len(recs)


def test_delivery_time_follows_the_events(month) -> None:
    _, _, _, _, files, _ = month
    for path, recs in files:
        delivered = datetime.strptime(LOG_NAME.match(path.name)["ts"], "%Y%m%dT%H%MZ").replace(tzinfo=timezone.utc)
        times = [_time(r["eventTime"]) for r in recs]
        assert times == sorted(times)
        assert delivered >= max(times)
        assert delivered - min(times) <= timedelta(minutes=20)
        assert delivered - max(times) >= timedelta(minutes=5)
    late = [
        p
        for p, recs in files
        if LOG_NAME.match(p.name)["ts"][9:11] != recs[0]["eventTime"][11:13]  # delivered in the next hour
    ]
    assert late


def test_activity_follows_office_hours(month) -> None:
    _, org, _, _, _, records = month
    people = {u.name for u in org.users}
    by_hour = defaultdict(int)
    for r in records:
        ui = r["userIdentity"]
        name = ui.get("userName") or ui.get("arn", "").rsplit("/", 1)[-1]
        if name in people:
            by_hour[int(r["eventTime"][11:13])] += 1
    assert by_hour[13] > 5 * max(by_hour[2], 1)


def test_cross_account_assume_role_is_in_both_trails(month) -> None:
    _, org, _, _, _, records = month
    shared = defaultdict(list)
    for r in records:
        if r["eventName"] == "AssumeRole" and "sharedEventID" in r:
            shared[r["sharedEventID"]].append(r)
    pairs = [rs for rs in shared.values() if len(rs) == 2]
    assert len(pairs) >= DAYS * 4 * 3  # the scanner's four daily runs into three accounts
    for caller, owner in pairs:
        if caller["userIdentity"]["type"] == "AWSAccount":
            caller, owner = owner, caller
        role_account = caller["requestParameters"]["roleArn"].split(":")[4]
        assert caller["recipientAccountId"] == caller["userIdentity"]["accountId"] != role_account
        assert owner["recipientAccountId"] == role_account
        assert owner["userIdentity"] == {
            "type": "AWSAccount",
            "principalId": caller["userIdentity"]["principalId"],
            "accountId": caller["recipientAccountId"],
        }
        assert caller["eventID"] != owner["eventID"] and caller["requestID"] == owner["requestID"]
        assert caller["responseElements"] == owner["responseElements"]
    security = org.security_account
    scanner_targets = {
        p[0]["requestParameters"]["roleArn"].split(":")[4]
        for p in pairs
        if any(r["recipientAccountId"] == security for r in p)
    }
    assert scanner_targets == set(org.account_ids) - {security}
    services = [r for r in records if r["eventName"] == "AssumeRole" and r["userIdentity"]["type"] == "AWSService"]
    assert services and all(r["sourceIPAddress"].endswith(".amazonaws.com") for r in services)
    assert any(r["sourceIPAddress"] == "AWS Internal" for r in records)
    assert any(r.get("errorCode") == "AccessDenied" for r in records)


def _before(records: list[dict], at: datetime) -> list[dict]:
    return [r for r in records if _time(r["eventTime"]) < at]


def test_incident_new_country_provisioning(month, geoip) -> None:
    _, org, incidents, _, _, records = month
    inc = next(i for i in incidents if i.kind == "new_country_provisioning")
    assert END - timedelta(days=2) <= inc.at < END
    mine = [r for r in records if r["sourceIPAddress"] == inc.source_ip]
    runs = [r for r in mine if r["eventName"] == "RunInstances"]
    assert runs and all(r["userIdentity"].get("userName") == inc.actor and "errorCode" not in r for r in runs)
    instance_ids = [i["instanceId"] for i in runs[0]["responseElements"]["instancesSet"]["items"]]
    assert instance_ids and all(re.fullmatch(r"i-[0-9a-f]{17}", i) for i in instance_ids)
    assert any(r["eventName"] == "CreateBucket" for r in mine)
    assert any(r["readOnly"] for r in mine)
    assert _country(geoip, inc.source_ip) == inc.country
    seen = {
        _country(geoip, r["sourceIPAddress"])
        for r in _before(records, inc.at)
        if r["eventName"] in ("RunInstances", "CreateBucket") and r["sourceIPAddress"][0].isdigit()
    }
    assert seen and inc.country not in seen
    assert seen <= {o.country for o in org.offices}


def test_incident_outside_account_assume_role(month) -> None:
    _, org, incidents, _, _, records = month
    inc = next(i for i in incidents if i.kind == "outside_account_assume_role")
    assert inc.actor not in org.account_ids
    hits = [
        r
        for r in records
        if r["eventName"] == "AssumeRole" and r["userIdentity"].get("accountId") == inc.actor and "errorCode" not in r
    ]
    assert len(hits) == 1
    (hit,) = hits
    assert hit["recipientAccountId"] == inc.account_id == inc.role_arn.split(":")[4]
    assert hit["requestParameters"]["roleArn"] == inc.role_arn and hit["sharedEventID"]
    callers = {r["userIdentity"].get("accountId") for r in _before(records, inc.at) if r["eventName"] == "AssumeRole"}
    assert inc.actor not in callers
    session = hit["responseElements"]["assumedRoleUser"]["arn"]
    assert any(r["userIdentity"].get("arn") == session for r in records)


def test_incident_role_chaining_into_a_new_account(month) -> None:
    _, org, incidents, _, _, records = month
    inc = next(i for i in incidents if i.kind == "role_chaining_new_account")
    target = inc.role_arn.split(":")[4]

    def chained(r: dict) -> bool:
        ui = r["userIdentity"]
        return r["eventName"] == "AssumeRole" and ui["type"] == "AssumedRole" and ui["arn"] == inc.actor

    hits = [r for r in records if chained(r) and r["requestParameters"]["roleArn"].split(":")[4] == target]
    assert len(hits) == 1 and hits[0]["userIdentity"]["accountId"] != target
    assert inc.actor.startswith("arn:aws:sts::") and ":assumed-role/" in inc.actor
    owner_copy = [r for r in records if r.get("sharedEventID") == hits[0]["sharedEventID"] and r is not hits[0]]
    assert [r["recipientAccountId"] for r in owner_copy] == [target]
    earlier = [
        r
        for r in _before(records, inc.at)
        if r["eventName"] == "AssumeRole" and r["userIdentity"]["type"] == "AssumedRole"
    ]
    assert earlier  # chaining is normal (the scanner) ...
    assert not [r for r in earlier if r["userIdentity"]["arn"] == inc.actor]  # ... but not for this session
    assert target in org.account_ids


def test_office_and_incident_ips_resolve_with_geolite2(month, geoip) -> None:
    _, org, incidents, _, _, records = month
    assert {o.country for o in org.offices} == {"DE", "GB", "IE", "US"}
    for office in org.offices:
        network = ipaddress.ip_network(office.network)
        for ip in office.ips:
            assert ipaddress.ip_address(ip) in network
            assert _country(geoip, ip) == office.country, (office.name, ip)
    for inc in incidents:
        assert _country(geoip, inc.source_ip) == inc.country
    assert {i.country for i in incidents} >= {"BR", "RU"}
    people = {u.name for u in org.users}
    for r in records:
        ui = r["userIdentity"]
        if ui.get("userName") in people and _time(r["eventTime"]) < incidents[0].at:
            assert any(r["sourceIPAddress"] in o.ips for o in org.offices), r


def test_demo_org_shape() -> None:
    org = g.demo_org()
    assert len(org.accounts) == 4 and all(re.fullmatch(r"\d{12}", a.id) for a in org.accounts)
    assert {a.name for a in org.accounts} == {"management", "prod", "staging", "security"}
    assert {u.kind for u in org.users} == {"iam", "sso"}
    assert g.demo_org(7) == g.demo_org(7)


def test_same_seed_same_records(tmp_path: Path) -> None:
    org = g.demo_org()
    start = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
    incident = g.make_incident(org, "new_country_provisioning", start + timedelta(hours=1))

    def run(name: str, seed: int) -> dict[str, bytes]:
        out = tmp_path / name
        g.generate(out, start, start + timedelta(hours=4), org, [incident], seed=seed, events_per_hour=200)
        return {str(p.relative_to(out)): gzip.decompress(p.read_bytes()) for p in out.rglob("*.json.gz")}

    first, again, other = run("a", 3), run("b", 3), run("c", 4)
    assert first == again
    assert first != other


def test_write_records_by_hand(tmp_path: Path) -> None:
    at = datetime(2026, 1, 2, 3, 4, 59, tzinfo=timezone.utc)
    path = g.write_records(tmp_path, "123456789012", "eu-west-1", at, [{"eventID": "x"}], random.Random(1))
    assert path.relative_to(tmp_path).parts[:7] == (
        "AWSLogs",
        "123456789012",
        "CloudTrail",
        "eu-west-1",
        "2026",
        "01",
        "02",
    )
    assert LOG_NAME.match(path.name)["ts"] == "20260102T0304Z"
    assert orjson.loads(gzip.decompress(path.read_bytes())) == {"Records": [{"eventID": "x"}]}


def test_benchmark_hour_counts_and_ratio(tmp_path: Path) -> None:
    hour = datetime(2026, 3, 4, 13, 0, tzinfo=timezone.utc)
    stats = g.benchmark_hour(tmp_path, hour, events=5000, files=10)
    files = _load(tmp_path)
    assert stats.files == len(files) >= 10
    assert stats.records == sum(len(recs) for _, recs in files) >= 5000
    raw = sum(len(gzip.decompress(p.read_bytes())) for p, _ in files)
    packed = sum(p.stat().st_size for p, _ in files)
    assert (raw, packed) == (stats.raw_bytes, stats.bytes)
    assert 6 <= raw / packed <= 11
    streams = {LOG_NAME.match(p.name).group("account", "region") for p, _ in files}
    assert len({a for a, _ in streams}) >= 3 and len({r for _, r in streams}) >= 1
    times = [_time(r["eventTime"]) for _, recs in files for r in recs]
    assert hour <= min(times) and max(times) < hour + timedelta(hours=1)


def test_month_with_incidents_places_them_in_the_last_two_days() -> None:
    org, incidents = g.month_with_incidents(END)
    assert [i.kind for i in incidents] == list(g.INCIDENT_KINDS)
    assert all(END - timedelta(days=2) <= i.at < END for i in incidents)
    assert all(i.account_id in org.account_ids for i in incidents)
    with pytest.raises(ValueError):
        g.make_incident(org, "nope", END)


def test_incidents_keep_their_order_and_spacing_in_a_shorter_window() -> None:
    _, wide = g.month_with_incidents(END)
    _, short = g.month_with_incidents(END, days=1, within_hours=12)
    assert [i.kind for i in short] == [i.kind for i in wide]
    assert all(END - timedelta(hours=12) <= i.at < END for i in short)
    assert short[0].at < short[1].at < short[2].at
    assert min(b.at - a.at for a, b in itertools.pairwise(short)) >= timedelta(hours=2)
    with pytest.raises(ValueError, match="cover the last 48 hours"):
        g.month_with_incidents(END, days=1)


def test_generate_command_writes_a_trail_that_ingest_reads_whole(tmp_path: Path, tg_env, capsys) -> None:
    """`trailguard generate` then `trailguard ingest`: every generated record lands in the lake once."""
    from trailguard.cli import build_parser, main

    out = tmp_path / "trail"
    argv = ["generate", "--out", str(out), "--days", "2", "--end", "2026-11-20T06:00Z", "--events-per-hour", "30"]
    assert main([*argv, "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    manifest = orjson.loads((out / g.MANIFEST).read_bytes())
    assert f"wrote {manifest['objects']:,} CloudTrail objects ({manifest['records']:,} records" in printed
    assert "events 2026-11-18T06:00Z .. 2026-11-20T06:00Z (seed 3, 30 background events an hour" in printed
    assert [i["kind"] for i in manifest["incidents"]] == list(g.INCIDENT_KINDS)
    assert "177.72.10.77 (BR)" in printed and f"trailguard ingest --source {out}" in printed
    files = _load(out)
    assert len(files) == manifest["objects"] and sum(len(r) for _, r in files) == manifest["records"]

    assert main(["ingest", "--source", str(out), "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert (summary["quarantined_records"], summary["quarantined_objects"], summary["skipped"]) == (0, 0, 0)
    assert summary["objects_processed"] == manifest["objects"]  # the manifest beside AWSLogs/ is not listed
    assert summary["new_events"] == summary["records"] == manifest["records"]
    assert build_parser().parse_args(["generate", "--out", "x"]).events_per_hour == g.DEFAULT_EVENTS_PER_HOUR


def test_generate_command_without_incidents_and_its_limits(tmp_path: Path, capsys) -> None:
    from trailguard.cli import main

    out = tmp_path / "quiet"
    assert main(["generate", "--out", str(out), "--days", "1", "--end", "2026-11-20T06:00Z", "--no-incidents"]) == 0
    assert "incidents" not in capsys.readouterr().out
    records = [r for _, recs in _load(out) for r in recs]
    assert records and not any(r["sourceIPAddress"] == "177.72.10.77" for r in records)
    assert orjson.loads((out / g.MANIFEST).read_bytes())["incidents"] == []
    assert main(["generate", "--out", str(out), "--days", "0"]) == 2
    assert "days must be at least 1" in capsys.readouterr().err


def test_same_arguments_same_trail(tmp_path: Path) -> None:
    end = datetime(2026, 3, 5, 0, 0, tzinfo=timezone.utc)
    first = g.generate_trail(tmp_path / "a", days=2, end=end, seed=5, events_per_hour=40)
    again = g.generate_trail(tmp_path / "b", days=2, end=end, seed=5, events_per_hour=40)

    def contents(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): gzip.decompress(p.read_bytes()) for p in out.rglob("*.json.gz")}

    assert contents(first.out) == contents(again.out) and first.incidents == again.incidents
    assert (first.start, first.end) == (end - timedelta(days=2), end)
