"""The two seed detections on constructed CloudTrail, ingested and evaluated for real."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from builders import record, utc, write_log
from trailguard import store as st
from trailguard.derive import (
    AWS_INTERNAL,
    AWS_SERVICE,
    INVALID,
    PRIVATE,
    PUBLIC_IPV4,
    PUBLIC_IPV6,
    created_object,
    requested_account,
    requesting_account,
    source_ip_class,
    user_of,
)
from trailguard.detect import BaselineMissing, Engine
from trailguard.geoip import GeoIP
from trailguard.ingest import ingest
from trailguard.lake import Lake
from trailguard.replay import replay
from trailguard.settings import Settings
from trailguard.sources import LocalStore
from trailguard.specs import load_spec, load_specs
from trailguard.store import StateStore

A, B, C, OUTSIDE = "111122223333", "444455556666", "777788889999", "999988887777"
DE, GB, BR, RU, US = "85.214.132.17", "81.2.69.160", "177.72.10.77", "95.165.20.33", "8.8.8.8"
PAYLOAD_FIELDS = ["detection", "detection_id", "key", "first_seen", "fired_at", "risk_score", "message", "rows"]
T = utc(2026, 11, 20, 12)  # the evaluation time of most tests
HISTORY_START = utc(2026, 11, 1, 9)


def iso(t: datetime) -> str:
    if t.microsecond:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def assume_role(
    caller: str,
    role_account: str,
    at: datetime,
    *,
    recorded_in: str | None = None,
    shared: str | None = None,
    identity: dict | None = None,
    **fields,
) -> dict:
    """An AssumeRole record as the account ``recorded_in`` (default: the caller's) sees it."""
    role = f"arn:aws:iam::{role_account}:role/audit"
    return record(
        eventTime=iso(at),
        eventSource="sts.amazonaws.com",
        eventName="AssumeRole",
        recipientAccountId=recorded_in or caller,
        userIdentity=identity
        or {
            "type": "IAMUser",
            "arn": f"arn:aws:iam::{caller}:user/alice",
            "accountId": caller,
            "userName": "alice",
        },
        requestParameters={"roleArn": role, "roleSessionName": "alice-session"},
        responseElements={"assumedRoleUser": {"arn": f"arn:aws:sts::{role_account}:assumed-role/audit/alice-session"}},
        resources=[{"ARN": role, "accountId": role_account, "type": "AWS::IAM::Role"}],
        sharedEventID=shared or str(uuid.uuid4()),
        readOnly=True,
        **fields,
    )


def provision(at: datetime, src: str, event_name: str = "RunInstances", **fields) -> dict:
    return record(
        eventTime=iso(at),
        eventName=event_name,
        sourceIPAddress=src,
        readOnly=False,
        responseElements={"instancesSet": {"items": [{"instanceId": "i-0abc"}]}},
        **fields,
    )


class World:
    """A source folder, lake, state store and engine; records are delivered 10 minutes late."""

    def __init__(self, root: Path) -> None:
        self.source = root / "src"
        self.source.mkdir()
        self.lake = Lake(str(root / "lake"))
        self.state = StateStore(f"sqlite:///{root}/state.db")
        self.engine = Engine(self.lake, self.state, GeoIP(Settings().geoip_db))
        self.specs = {s.rows: s for s in load_specs(Settings().detections_dir)}
        self.cross, self.country = self.specs["cross_account"], self.specs["provisioning"]

    def add(self, *records: dict, delivered: datetime | None = None, account: str = A) -> None:
        for rec in records:
            at = delivered or datetime.fromisoformat(rec["eventTime"].replace("Z", "+00:00")) + timedelta(minutes=10)
            write_log(self.source, [rec], at, account=account)
        ingest(LocalStore(self.source), self.lake, self.state)

    def history(self, days: int = 18) -> None:
        """Daily office provisioning from Germany and daily A -> B role use, from Nov 1."""
        recs = []
        for day in range(days):
            at = HISTORY_START + timedelta(days=day)
            recs += [provision(at, DE), assume_role(A, B, at + timedelta(hours=1))]
        self.add(*recs)
        for spec in self.specs.values():
            self.engine.baseline_initial(spec, utc(2026, 11, 19))

    def alerts(self, spec, at: datetime = T) -> list[dict]:
        return [a.as_dict() for a in self.engine.detect(spec, at).alerts]

    def keys(self, spec, at: datetime = T) -> list[dict]:
        return [a["key"] for a in self.alerts(spec, at)]

    def baseline(self, spec) -> dict[str, dict]:
        """baseline key -> its row, as stored."""
        b = st.baselines.c
        with self.state.engine.connect() as conn:
            rows = conn.execute(sa.select(st.baselines).where(b.detection_id == spec.id)).mappings().all()
        return {r["key"]: dict(r) for r in rows}


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.history()
    return w


# -- derived fields -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("8.8.8.8", PUBLIC_IPV4),
        ("2600:1f18::1", PUBLIC_IPV6),
        ("10.0.0.7", PRIVATE),
        ("192.168.10.20", PRIVATE),
        ("100.64.1.1", PRIVATE),
        ("2001:db8::1", PRIVATE),
        ("ec2.amazonaws.com", AWS_SERVICE),
        ("EC2.AmazonAWS.com", AWS_SERVICE),
        ("AWS Internal", AWS_INTERNAL),
        ("::ffff:81.2.69.160", PUBLIC_IPV4),
        ("::ffff:10.0.0.7", PRIVATE),
        ("035.249.253.232", INVALID),
        ("", INVALID),
        (None, INVALID),
    ],
)
def test_source_ip_class(value: str | None, kind: str) -> None:
    assert source_ip_class(value) == kind


def test_accounts_of_a_call() -> None:
    row = {"user_account_id": A, "recipient_account_id": B, "request_role_arn": f"arn:aws:iam::{C}:role/x"}
    assert (requesting_account(row), requested_account(row)) == (A, C)
    no_request = {"recipient_account_id": B, "resources": [{"type": "AWS::IAM::Role", "account_id": C, "arn": None}]}
    assert (requesting_account(no_request), requested_account(no_request)) == (B, C)
    only_response = {"assumed_role_arn": f"arn:aws:sts::{C}:assumed-role/r/s"}
    assert requested_account(only_response) == C


def test_user_and_object() -> None:
    assert user_of({"user_name": "alice", "session_issuer_user_name": "ops"}) == "alice"
    assert user_of({"session_issuer_user_name": "ops", "user_arn": "arn"}) == "ops"
    assert user_of({"user_arn": "arn:aws:sts::1:assumed-role/r/s"}) == "arn:aws:sts::1:assumed-role/r/s"
    run = {"responseElements": {"instancesSet": {"items": [{"instanceId": "i-1"}, {"instanceId": "i-2"}]}}}
    assert created_object("RunInstances", run) == "i-1, i-2"
    assert (
        created_object("StartInstances", {"requestParameters": {"instancesSet": {"items": [{"instanceId": "i-9"}]}}})
        == "i-9"
    )
    assert created_object("CreateBucket", {"requestParameters": {"bucketName": "loot"}}) == "loot"
    assert created_object("CreateSecurityGroup", {"responseElements": {"groupId": "sg-1"}}) == "sg-1"


# -- cross-account ----------------------------------------------------------------------------------
def test_new_pair_alerts_once_with_escu_fields(world: World) -> None:
    world.add(assume_role(A, C, T - timedelta(hours=3)))
    [alert] = world.alerts(world.cross)
    # The line format: its fields in its order, the key in the spec's order, extras after rows.
    assert list(alert) == [*PAYLOAD_FIELDS, "impact", "confidence", "mitre_attack", "rows_total"]
    assert json.dumps(alert["key"]) == json.dumps({"requesting_account_id": A, "requested_account_id": C})
    assert alert["message"] == (
        f"AWS account {A} is trying to access resource from some other account {C}, for the first time."
    )
    assert (alert["risk_score"], alert["mitre_attack"], alert["rows_total"]) == (15, [], 1)
    assert alert["first_seen"] == (T - timedelta(hours=3)).isoformat()
    row = alert["rows"][0]
    assert (row["role_arn"], row["role_session_name"], row["src"], row["country"]) == (
        f"arn:aws:iam::{C}:role/audit",
        "alice-session",
        "81.2.69.160",
        "GB",
    )
    assert world.alerts(world.cross, T + timedelta(hours=1)) == []  # later runs do not repeat it


def test_known_pair_is_quiet(world: World) -> None:
    world.add(assume_role(A, B, T - timedelta(hours=2)))
    assert world.alerts(world.cross) == []


def both_copies(at: datetime) -> tuple[dict, dict]:
    """One cross-account call as the caller's and as the role owner's trail record it."""
    shared = str(uuid.uuid4())
    owner_identity = {"type": "AWSAccount", "principalId": "AIDA", "accountId": A}
    return assume_role(A, C, at, shared=shared), assume_role(
        A, C, at, shared=shared, recorded_in=C, identity=owner_identity
    )


def test_both_copies_of_one_call_are_one_call(world: World) -> None:
    caller_copy, owner_copy = both_copies(T - timedelta(hours=2))
    world.add(owner_copy, account=C)
    world.add(caller_copy)
    [alert] = world.alerts(world.cross)
    assert alert["rows_total"] == 1
    assert alert["rows"][0]["user"] == "alice"  # the caller's copy, with the full identity


def test_copies_of_one_call_delivered_in_different_hours_alert_once(world: World) -> None:
    at = T - timedelta(minutes=20)
    caller_copy, owner_copy = both_copies(at)
    world.add(owner_copy, account=C, delivered=at + timedelta(minutes=5))  # visible at T
    world.add(caller_copy, delivered=T + timedelta(minutes=40))  # visible from T + 1h, another window
    [alert] = world.alerts(world.cross)
    assert (alert["key"]["requesting_account_id"], alert["rows_total"]) == (A, 1)
    assert world.alerts(world.cross, T + timedelta(hours=1)) == []
    report = world.engine.detect(world.cross, T + timedelta(hours=2))
    assert (report.rows, report.not_evaluated) == (1, {"second copy of one call (sharedEventID)": 1})


def test_role_chaining_into_a_new_account(world: World) -> None:
    session = {
        "type": "AssumedRole",
        "arn": f"arn:aws:sts::{A}:assumed-role/ci-deploy/i-0123",
        "accountId": A,
        "sessionContext": {"sessionIssuer": {"arn": f"arn:aws:iam::{A}:role/ci-deploy", "userName": "ci-deploy"}},
    }
    world.add(assume_role(A, C, T - timedelta(hours=1), identity=session))
    [alert] = world.alerts(world.cross)
    assert alert["key"]["requested_account_id"] == C
    assert alert["rows"][0]["user"] == "ci-deploy"


def test_outside_account_assuming_a_role_in_ours(world: World) -> None:
    identity = {"type": "AWSAccount", "principalId": "AIDAOUTSIDE", "accountId": OUTSIDE}
    world.add(assume_role(OUTSIDE, B, T - timedelta(hours=5), recorded_in=B, identity=identity), account=B)
    [alert] = world.alerts(world.cross)
    assert alert["key"] == {"requesting_account_id": OUTSIDE, "requested_account_id": B}


@pytest.mark.parametrize(
    "rec",
    [
        pytest.param(
            assume_role(
                A, C, T - timedelta(hours=2), identity={"type": "AWSService", "invokedBy": "ec2.amazonaws.com"}
            ),
            id="aws-service-caller",
        ),
        pytest.param(assume_role(A, C, T - timedelta(hours=2), errorCode="AccessDenied"), id="failed-call"),
        pytest.param(assume_role(A, A, T - timedelta(hours=2)), id="same-account"),
    ],
)
def test_calls_that_are_not_cross_account_activity(world: World, rec: dict) -> None:
    world.add(rec)
    assert world.alerts(world.cross) == []


# -- country ----------------------------------------------------------------------------------------
def test_new_country_alerts_once_with_every_row(world: World) -> None:
    world.add(
        provision(T - timedelta(hours=4), BR),
        provision(T - timedelta(hours=3), BR, "CreateBucket", requestParameters={"bucketName": "exfil"}),
        provision(T - timedelta(hours=2), DE),
    )
    [alert] = world.alerts(world.country)
    assert alert["key"] == {"country": "BR"}
    assert alert["message"] == (
        f"User alice is starting or creating an instance i-0abc for the first time in Country BR from IP address {BR}"
    )
    assert (alert["risk_score"], alert["mitre_attack"], alert["rows_total"]) == (42, ["T1078"], 2)
    assert [r["object"] for r in alert["rows"]] == ["i-0abc", "exfil"]
    assert alert["known_countries"] == ["DE"]


def test_known_country_from_another_ip_is_quiet(world: World) -> None:
    world.add(provision(T - timedelta(hours=2), "85.214.132.45"))
    assert world.alerts(world.country) == []


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        ("10.1.2.3", "source is private or reserved"),
        ("ec2.amazonaws.com", "source is aws service"),
        ("AWS Internal", "source is aws internal"),
        ("2001:db8::5", "source is private or reserved"),
    ],
)
def test_sources_without_a_country_are_counted_not_evaluated(world: World, src: str, reason: str) -> None:
    world.add(provision(T - timedelta(hours=2), src))
    report = world.engine.detect(world.country, T)
    assert report.alerts == []
    assert report.not_evaluated == {reason: 1}


def test_public_ipv6_is_located(world: World) -> None:
    world.add(
        provision(T - timedelta(hours=3), "2a02:2e0:3fe:1001:302::"),  # Germany: known
        provision(T - timedelta(hours=2), "2804:14c::1"),  # Brazil: new
    )
    report = world.engine.detect(world.country, T)
    assert report.not_evaluated == {}
    assert [(a.key, a.rows[0]["src"]) for a in report.alerts] == [({"country": "BR"}, "2804:14c::1")]


def test_a_failed_call_from_a_new_country_is_quiet(world: World) -> None:
    world.add(provision(T - timedelta(hours=3), BR, errorCode="Client.UnauthorizedOperation"))
    report = world.engine.detect(world.country, T)
    assert (report.events, report.alerts) == (0, [])
    world.add(provision(T - timedelta(hours=2), BR))  # the same call succeeding
    assert world.keys(world.country) == [{"country": "BR"}]


def test_a_read_only_call_from_a_new_country_is_quiet(world: World) -> None:
    world.add(record(eventTime=iso(T - timedelta(hours=3)), eventName="DescribeInstances", sourceIPAddress=RU))
    report = world.engine.detect(world.country, T)
    assert (report.events, report.alerts) == (0, [])
    world.add(provision(T - timedelta(hours=2), RU))  # a provisioning call from there
    assert world.keys(world.country) == [{"country": "RU"}]


def test_aged_out_country_is_new_again(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.add(provision(utc(2026, 5, 1, 9), BR), provision(utc(2026, 5, 2, 9), DE))
    w.history()  # Nov 1 .. 18 from DE; BR last seen in May: more than 90 days before T
    w.engine.baseline_initial(w.country, utc(2026, 11, 19), days=300)
    w.add(provision(T - timedelta(hours=2), BR))
    assert [a["key"] for a in w.alerts(w.country)] == [{"country": "BR"}]


def test_baseline_update_ages_out_what_was_last_seen_before_the_forget_window(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.add(provision(utc(2026, 8, 20, 9), BR))  # 90 days before Nov 18: inside the window until then
    w.history()
    w.engine.baseline_initial(w.country, utc(2026, 11, 18), days=100)
    assert f'{{"src":"{BR}"}}' in w.baseline(w.country)
    update = w.engine.baseline_update(w.country, utc(2026, 11, 19))  # forgets before Aug 21
    assert (update.aged_out, update.keys_total) == (1, 1)
    assert list(w.baseline(w.country)) == [f'{{"src":"{DE}"}}']
    w.add(provision(T - timedelta(hours=2), BR))
    assert w.keys(w.country) == [{"country": "BR"}]


# -- gates, windows, delivery ------------------------------------------------------------------------
def test_warm_up_gate_holds_alerts_until_the_history_is_long_enough(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.history(days=3)  # history from Nov 1 09:00: warm from the run at Nov 9 00:00 (7 days after Nov 2)
    early = utc(2026, 11, 4, 12)
    w.engine.baseline_initial(w.country, early - timedelta(hours=1))
    assert w.engine.detect(w.country, early).warmed_up is False  # computed with nothing in the window, too
    w.add(provision(early - timedelta(hours=2), BR), provision(utc(2026, 11, 8, 22, 30), RU))
    report = w.engine.detect(w.country, early)
    assert (report.new_keys, report.warmed_up, report.alerts) == (1, False, [])
    alerts = list(replay(w.engine, [w.country], early, utc(2026, 11, 9, 2)))
    # RU is first visible at 23:00 (not warm yet), still new and in the window at 00:00 (warm): it
    # alerts then. BR, seen during the warm-up, is in the baseline by then.
    assert [(a.key, a.fired_at) for a in alerts] == [({"country": "RU"}, utc(2026, 11, 9))]
    assert w.engine.detect(w.country, utc(2026, 11, 8, 23)).warmed_up is False


def test_window_start_boundary_is_on_delivery(world: World) -> None:
    start = T - timedelta(hours=24)
    world.add(provision(start - timedelta(minutes=2), GB), delivered=start - timedelta(minutes=1))
    world.add(provision(start - timedelta(minutes=2), US), delivered=start)  # late, delivered at the start
    world.add(provision(start, BR))
    assert world.keys(world.country) == [{"country": "BR"}, {"country": "US"}]


def test_window_end_boundary(world: World) -> None:
    """[start, T) as of delivery: visible at T means happened before T and delivered before T."""
    world.add(provision(T - timedelta(milliseconds=1), BR), provision(T, RU), delivered=T - timedelta(minutes=1))
    world.add(provision(T - timedelta(minutes=30), US), delivered=T)  # an object stamped exactly T
    assert world.keys(world.country) == [{"country": "BR"}]
    assert world.keys(world.country, T + timedelta(hours=1)) == [{"country": "RU"}, {"country": "US"}]


def test_an_event_delivered_late_is_evaluated_once_when_it_arrives(world: World) -> None:
    event_at = T - timedelta(hours=6)
    world.add(provision(event_at, BR), delivered=T + timedelta(minutes=30))
    assert world.alerts(world.country) == []  # as of T it had not arrived
    [alert] = world.alerts(world.country, T + timedelta(hours=1))
    assert alert["first_seen"] == event_at.isoformat()
    assert world.alerts(world.country, T + timedelta(hours=2)) == []


def test_an_event_delivered_a_day_late_is_still_evaluated_once(world: World) -> None:
    event_at = T - timedelta(hours=30)  # before the window of every run that can see it
    world.add(provision(event_at, BR), delivered=T - timedelta(minutes=40))
    [alert] = world.alerts(world.country)
    assert (alert["first_seen"], alert["rows"][0]["delivered_at"]) == (
        event_at.isoformat(),
        (T - timedelta(minutes=40)).isoformat(),
    )
    assert world.alerts(world.country, T + timedelta(hours=1)) == []
    world.engine.baseline_update(world.country, utc(2026, 11, 21))  # merged: the alert stays the only one
    assert world.alerts(world.country, utc(2026, 11, 21, 1)) == []


def test_a_late_event_merged_by_the_update_first_still_alerts(world: World) -> None:
    """Replay (and Airflow, sometimes) runs midnight's update before midnight's detection."""
    world.add(provision(utc(2026, 11, 19, 20), BR), delivered=utc(2026, 11, 20, 23, 50))  # 28 hours late
    assert world.engine.baseline_update(world.country, utc(2026, 11, 21)).rows == 1
    assert world.keys(world.country, utc(2026, 11, 21)) == [{"country": "BR"}]


def test_a_late_earlier_occurrence_of_an_alerted_key_does_not_alert_again(world: World) -> None:
    world.add(provision(T - timedelta(hours=2), BR))
    assert len(world.alerts(world.country)) == 1
    world.add(provision(T - timedelta(hours=9), BR), delivered=T + timedelta(minutes=20))  # earlier, arrives late
    assert world.alerts(world.country, T + timedelta(hours=1)) == []


def test_a_duplicate_delivery_is_one_event(world: World) -> None:
    rec = provision(T - timedelta(hours=2), BR)
    world.add(rec)
    world.add(rec, delivered=T - timedelta(minutes=50), account=B)  # a second trail delivers the same event
    report = world.engine.detect(world.country, T)
    [alert] = report.alerts
    assert (report.events, alert.rows_total) == (1, 1)


def test_running_a_detection_again_raises_no_second_alert(world: World) -> None:
    world.add(provision(T - timedelta(hours=2), BR))
    assert world.keys(world.country) == [{"country": "BR"}]
    assert world.alerts(world.country) == []  # the same run again
    assert world.alerts(world.country, T + timedelta(hours=1)) == []  # the next run, same window
    world.engine.baseline_update(world.country, utc(2026, 11, 21))
    assert world.alerts(world.country, utc(2026, 11, 21, 1)) == []


def test_baseline_update_merges_what_arrived_and_is_idempotent(world: World) -> None:
    world.add(provision(T - timedelta(hours=2), BR))
    first = world.engine.baseline_update(world.country, utc(2026, 11, 21))
    again = world.engine.baseline_update(world.country, utc(2026, 11, 21))
    assert (first.rows, again.rows) == (1, 0)
    assert first.keys_total == again.keys_total == 2  # the DE office IP and the BR IP
    world.add(provision(utc(2026, 11, 22, 9), BR))  # a day later: known since the update
    assert world.alerts(world.country, utc(2026, 11, 22, 12)) == []


def test_an_object_stamped_midnight_is_merged_by_the_next_days_update(world: World) -> None:
    world.add(provision(utc(2026, 11, 20, 23, 58), BR), delivered=utc(2026, 11, 21))
    assert world.engine.baseline_update(world.country, utc(2026, 11, 21)).rows == 0  # [Nov 19, Nov 21)
    assert world.engine.baseline_update(world.country, utc(2026, 11, 22)).rows == 1


def test_an_object_ingested_after_the_update_is_merged_by_the_next_one(world: World) -> None:
    """Stamped 23:55 but listed in S3 late: the 01:00 ingest takes it, after the midnight update."""
    assert world.engine.baseline_update(world.country, utc(2026, 11, 21)).rows == 0
    world.add(provision(utc(2026, 11, 20, 23, 50), BR), delivered=utc(2026, 11, 20, 23, 55))
    merged = world.engine.baseline_update(world.country, utc(2026, 11, 22))
    assert (merged.objects, merged.rows) == (1, 1)
    after = world.baseline(world.country)
    row = after[f'{{"src":"{BR}"}}']
    assert (row["first_seen"], row["visible_from"], row["count"]) == (
        utc(2026, 11, 20, 23, 50),
        utc(2026, 11, 20, 23, 55),
        1,
    )
    assert json.loads(row["attrs"])["country"] == "BR"  # the spec's baseline_attrs, from first sight
    again = world.engine.baseline_update(world.country, utc(2026, 11, 22))  # a re-run
    later = world.engine.baseline_update(world.country, utc(2026, 11, 23))  # and the next day's
    assert (again.rows, later.rows, later.objects) == (0, 0, 0)
    assert world.baseline(world.country) == after


def test_a_missed_day_is_merged_by_the_next_update(world: World) -> None:
    world.add(provision(utc(2026, 11, 19, 10), BR), provision(utc(2026, 11, 20, 10), RU))
    # No update at Nov 20 00:00: the one at Nov 21 takes both days.
    caught_up = world.engine.baseline_update(world.country, utc(2026, 11, 21))
    assert (caught_up.objects, caught_up.rows, caught_up.keys_total) == (2, 2, 3)
    world.add(provision(utc(2026, 11, 22, 9), BR), provision(utc(2026, 11, 22, 10), RU))
    assert world.alerts(world.country, utc(2026, 11, 22, 12)) == []


def test_an_allow_listed_source_does_not_alert(world: World, tmp_path: Path) -> None:
    doc = yaml.safe_load(Path(world.country.path).read_text())
    doc["allow"] = {"source_ip": ["177.72.0.0/16"], "user_agent": ["terraform/*"]}
    path = tmp_path / "allowing.yml"
    path.write_text(yaml.safe_dump(doc))
    spec = load_spec(path)
    world.add(
        provision(T - timedelta(hours=3), BR),  # BR, but from the allow-listed network
        provision(T - timedelta(hours=2), RU, userAgent="terraform/1.9.0"),
        provision(T - timedelta(hours=1), US),
    )
    report = world.engine.detect(spec, T)
    assert [a.key for a in report.alerts] == [{"country": "US"}]
    assert report.not_evaluated == {"allow-listed": 2}


def test_a_missing_or_stale_baseline_fails_with_what_to_run(tmp_path: Path) -> None:
    w = World(tmp_path)
    with pytest.raises(BaselineMissing, match="baseline_initial"):
        w.engine.detect(w.country, T)
    w.history()
    with pytest.raises(BaselineMissing, match="baseline_update"):
        w.engine.detect(w.country, utc(2026, 11, 25))


def test_replay_prints_exactly_the_expected_alerts(world: World) -> None:
    world.add(
        provision(utc(2026, 11, 20, 3), BR),
        provision(utc(2026, 11, 21, 15), BR),  # same country a day later: no second alert
        assume_role(A, C, utc(2026, 11, 21, 8)),
        provision(utc(2026, 11, 22, 1), RU),
    )
    alerts = list(replay(world.engine, list(world.specs.values()), utc(2026, 11, 19), utc(2026, 11, 23)))
    got = [(a.spec.rows, a.key, a.fired_at) for a in alerts]
    assert got == [
        ("provisioning", {"country": "BR"}, utc(2026, 11, 20, 4)),
        ("cross_account", {"requesting_account_id": A, "requested_account_id": C}, utc(2026, 11, 21, 9)),
        ("provisioning", {"country": "RU"}, utc(2026, 11, 22, 2)),
    ]
