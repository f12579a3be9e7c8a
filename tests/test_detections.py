"""The two seed detections on constructed CloudTrail, ingested and evaluated for real."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from builders import record, utc, write_log
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
from trailguard.specs import load_specs
from trailguard.store import StateStore

A, B, C, OUTSIDE = "111122223333", "444455556666", "777788889999", "999988887777"
DE, GB, BR, RU = "85.214.132.17", "81.2.69.160", "177.72.10.77", "95.165.20.33"
T = utc(2026, 11, 20, 12)  # the evaluation time of most tests
HISTORY_START = utc(2026, 11, 1, 9)


def iso(t: datetime) -> str:
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
        ("AWS Internal", AWS_INTERNAL),
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
    assert alert["key"] == {"requesting_account_id": A, "requested_account_id": C}
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


def test_both_copies_of_one_call_are_one_call(world: World) -> None:
    at, shared = T - timedelta(hours=2), str(uuid.uuid4())
    caller_copy = assume_role(A, C, at, shared=shared)
    owner_copy = assume_role(
        A, C, at, shared=shared, recorded_in=C, identity={"type": "AWSAccount", "principalId": "AIDA", "accountId": A}
    )
    world.add(owner_copy, account=C)
    world.add(caller_copy)
    [alert] = world.alerts(world.cross)
    assert alert["rows_total"] == 1
    assert alert["rows"][0]["user"] == "alice"  # the caller's copy, with the full identity


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


def test_failed_and_read_only_calls_from_a_new_country_are_quiet(world: World) -> None:
    world.add(
        provision(T - timedelta(hours=2), BR, errorCode="Client.UnauthorizedOperation"),
        record(eventTime=iso(T - timedelta(hours=2)), eventName="DescribeInstances", sourceIPAddress=RU),
    )
    assert world.alerts(world.country) == []


def test_aged_out_country_is_new_again(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.add(provision(utc(2026, 5, 1, 9), BR), provision(utc(2026, 5, 2, 9), DE))
    w.history()  # Nov 1 .. 18 from DE; BR last seen in May: more than 90 days before T
    w.engine.baseline_initial(w.country, utc(2026, 11, 19), days=300)
    w.add(provision(T - timedelta(hours=2), BR))
    assert [a["key"] for a in w.alerts(w.country)] == [{"country": "BR"}]


# -- gates, windows, delivery ------------------------------------------------------------------------
def test_warm_up_gate_holds_alerts_until_the_history_is_long_enough(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.history(days=3)  # history from Nov 1; T on Nov 4 is within the 7-day warm-up
    early = utc(2026, 11, 4, 12)
    w.engine.baseline_initial(w.country, early - timedelta(hours=1))
    w.add(provision(early - timedelta(hours=2), BR))
    report = w.engine.detect(w.country, early)
    assert (report.new_keys, report.warmed_up, report.alerts) == (1, False, [])


def test_window_boundary(world: World) -> None:
    start = T - timedelta(hours=24)
    world.add(provision(start - timedelta(seconds=1), GB), provision(start, BR), provision(T, RU))
    assert [a["key"] for a in world.alerts(world.country)] == [{"country": "BR"}]  # GB before, RU at T: outside


def test_an_event_delivered_late_is_evaluated_once_when_it_arrives(world: World) -> None:
    event_at = T - timedelta(hours=6)
    world.add(provision(event_at, BR), delivered=T + timedelta(minutes=30))
    assert world.alerts(world.country) == []  # as of T it had not arrived
    [alert] = world.alerts(world.country, T + timedelta(hours=1))
    assert alert["first_seen"] == event_at.isoformat()
    assert world.alerts(world.country, T + timedelta(hours=2)) == []


def test_a_late_earlier_occurrence_of_an_alerted_key_does_not_alert_again(world: World) -> None:
    world.add(provision(T - timedelta(hours=2), BR))
    assert len(world.alerts(world.country)) == 1
    world.add(provision(T - timedelta(hours=9), BR), delivered=T + timedelta(minutes=20))  # earlier, arrives late
    assert world.alerts(world.country, T + timedelta(hours=1)) == []


def test_duplicate_delivery_and_reruns_raise_one_alert(world: World) -> None:
    rec = provision(T - timedelta(hours=2), BR)
    world.add(rec)
    world.add(rec, delivered=T - timedelta(minutes=50), account=B)  # a second trail delivers the same event
    first = world.alerts(world.country)
    assert len(first) == 1 and first[0]["rows_total"] == 1
    assert world.alerts(world.country) == []  # the same run again
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
