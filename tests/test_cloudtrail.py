"""Parsing one delivery object: every kind of bad input gets a specific reason, nothing vanishes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from builders import gz, record, utc
from trailguard import cloudtrail
from trailguard.cloudtrail import COLUMNS, BadObject, parse_object

DELIVERED = utc(2026, 11, 20, 13, 10)


def parse(data: bytes):
    return parse_object(data, "s3://b/k.json.gz", DELIVERED, "111122223333")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty object"),
        (b"{not gzip at all", "not gzip data"),
        (gzip.compress(b'{"Records": []}' * 50)[:40], "truncated gzip"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 40, "corrupt gzip"),
        (gzip.compress(b'{"Records": [{"eventID": '), "invalid JSON"),
        (gzip.compress(b'{"logFiles": []}'), "JSON without a Records array"),
        (gzip.compress(b'[{"eventID": "x"}]'), "JSON without a Records array"),
    ],
)
def test_unusable_objects_raise_a_specific_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadObject, match=reason):
        parse(data)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"eventID": None}, "missing eventID"),
        ({"eventID": ""}, "missing eventID"),
        ({"eventID": 42}, "missing eventID"),
        ({"eventTime": None}, "missing eventTime"),
        ({"eventTime": "yesterday at noon"}, "malformed eventTime"),
        ({"eventTime": 1732100000}, "malformed eventTime"),
        ({"eventCategory": "Insight"}, "Insights event"),
    ],
)
def test_unusable_records_are_quarantined_and_the_rest_kept(bad: dict, reason: str) -> None:
    good = record()
    broken = record(**bad)
    if bad.get("eventTime", "") is None:
        del broken["eventTime"]
    parsed = parse(gz([good, broken, "not an object"]))
    assert parsed.records == 3
    assert parsed.rows.column("event_id").to_pylist() == [good["eventID"]]
    assert [r.record_index for r in parsed.rejected] == [1, 2]
    assert reason in parsed.rejected[0].reason
    assert parsed.rejected[1].reason == "record is not a JSON object"
    assert parsed.rejected[0].excerpt.startswith("{")


def test_columns_are_typed_and_the_original_record_kept_whole() -> None:
    rec = record(
        eventName="AssumeRole",
        eventTime="2026-11-20T13:05:07.123Z",
        userIdentity={
            "type": "AssumedRole",
            "arn": "arn:aws:sts::111122223333:assumed-role/ops/alice",
            "accountId": "111122223333",
            "sessionContext": {
                "sessionIssuer": {"arn": "arn:aws:iam::111122223333:role/ops", "userName": "ops"},
            },
        },
        requestParameters={"roleArn": "arn:aws:iam::444455556666:role/audit", "roleSessionName": "s1"},
        responseElements={"assumedRoleUser": {"arn": "arn:aws:sts::444455556666:assumed-role/audit/s1"}},
        resources=[
            {"ARN": "arn:aws:iam::444455556666:role/audit", "accountId": "444455556666", "type": "AWS::IAM::Role"}
        ],
        sharedEventID="shared-1",
        readOnly="false",
        errorCode="AccessDenied",
    )
    row = parse(gz([rec])).rows.to_pylist()[0]
    assert set(row) == set(COLUMNS)
    assert row["event_time"] == utc(2026, 11, 20, 13, 5, 7, 123000)
    assert row["delivered_at"] == DELIVERED
    assert row["user_type"] == "AssumedRole"
    assert row["session_issuer_arn"] == "arn:aws:iam::111122223333:role/ops"
    assert row["session_issuer_user_name"] == "ops"
    assert row["request_role_arn"] == "arn:aws:iam::444455556666:role/audit"
    assert row["role_session_name"] == "s1"
    assert row["assumed_role_arn"] == "arn:aws:sts::444455556666:assumed-role/audit/s1"
    assert row["resources"] == [
        {"arn": "arn:aws:iam::444455556666:role/audit", "account_id": "444455556666", "type": "AWS::IAM::Role"}
    ]
    assert row["shared_event_id"] == "shared-1"
    assert row["read_only"] is False
    assert row["error_code"] == "AccessDenied"
    assert row["source_key"] == "s3://b/k.json.gz"
    assert json.loads(row["raw"]) == rec


@pytest.mark.parametrize("src", ["ec2.amazonaws.com", "AWS Internal", "2001:db8::1", "035.249.253.232", "10.0.0.7"])
def test_source_ip_is_kept_as_given(src: str) -> None:
    row = parse(gz([record(sourceIPAddress=src)])).rows.to_pylist()[0]
    assert row["source_ip"] == src


def test_old_records_without_recipient_account_take_the_delivering_account() -> None:
    rec = record(eventVersion="1.02")
    del rec["recipientAccountId"]
    row = parse(gz([rec])).rows.to_pylist()[0]
    assert row["recipient_account_id"] == "111122223333"
    assert "recipientAccountId" not in json.loads(row["raw"])


def test_attacker_shaped_values_are_kept_as_text() -> None:
    rec = record(userAgent={"nested": ["<!channel>"]}, userIdentity="not-an-object", requestParameters=[1, 2])
    row = parse(gz([rec])).rows.to_pylist()[0]
    assert row["user_agent"] == '{"nested":["<!channel>"]}'
    assert row["user_type"] is None


def test_a_one_megabyte_record_is_ingested_whole() -> None:
    big = record(requestParameters={"policyDocument": "x" * 1_048_576})
    row = parse(gz([big])).rows.to_pylist()[0]
    assert len(row["raw"]) > 1_048_576
    assert json.loads(row["raw"])["requestParameters"]["policyDocument"] == "x" * 1_048_576


# -- the fast path and the careful path agree ---------------------------------------------------
def _both_paths(data: bytes):
    text = cloudtrail.decompress(data)
    raws = cloudtrail.split_records(text)
    opened = cloudtrail._Opened(cloudtrail.LogObject(data, "k", DELIVERED, "111122223333"), text, raws)
    fast = cloudtrail._fast_columns([opened], [len(raws)])
    return fast, cloudtrail._careful_columns(raws, "111122223333")


def test_real_cloudtrail_takes_the_fast_path_and_reads_as_the_careful_path_does(shared_cloudtrail: Path) -> None:
    files = sorted(shared_cloudtrail.rglob("*.json.gz"))
    assert len(files) > 5_000
    for path in files:
        fast, (careful, rejected) = _both_paths(path.read_bytes())
        assert fast is not None, f"{path} left the fast path"
        assert not rejected
        for name, column in careful.items():
            assert fast[name].equals(column), f"{path}: column {name} differs"


@pytest.mark.parametrize(
    ("odd", "fast"),
    [
        ({"readOnly": "false"}, False),
        ({"eventVersion": 1.08}, False),
        ({"userAgent": {"nested": ["<!channel>"]}}, False),
        ({"userIdentity": "not-an-object"}, False),
        ({"requestParameters": [1, 2]}, False),
        ({"resources": [{"ARN": 5}, "x"]}, False),
        ({"eventTime": "2026-11-20T13:05:00"}, False),  # no zone: the careful path reads it as UTC
        ({"eventTime": "2026-11-20"}, False),
        ({"eventTime": "2026-11-20T13:05:07.123456Z"}, False),
        ({"eventTime": "2026-11-20T13:05:00+01:00"}, True),
        ({"recipientAccountId": ""}, True),
        ({"sourceIPAddress": "caf\u00e9 \u0000 \u202e"}, True),
        ({"resources": [{"ARN": "arn:aws:s3:::b", "type": "AWS::S3::Bucket"}]}, True),
    ],
)
def test_a_record_the_fast_path_declines_or_reads_the_same(odd: dict, fast: bool) -> None:
    """Whatever shape a record has, the fast path either steps aside or gives the careful result."""
    columns, (careful, rejected) = _both_paths(gz([record(), record(**odd)]))
    assert not rejected
    assert len(careful["event_id"]) == 2
    assert (columns is not None) is fast
    for name, column in (columns or {}).items():
        assert column.equals(careful[name]), name


def test_invalid_utf8_is_replaced_not_lost() -> None:
    good = json.dumps({"Records": [record(eventID="a")]}).encode()
    bad = good.replace(b'"userAgent": "aws-cli/2.15.0"', b'"userAgent": "aws-cli/\xff"')
    row = parse(gzip.compress(bad)).rows.to_pylist()[0]
    assert row["event_id"] == "a"
    assert "\ufffd" in row["raw"]


def test_objects_parsed_together_read_as_each_alone(shared_cloudtrail: Path) -> None:
    files = sorted((shared_cloudtrail / "grycap_cloudtrail-tracker").rglob("*.json.gz"))[:300]
    objects = [cloudtrail.LogObject(p.read_bytes(), str(p), DELIVERED, "974349055189") for p in files]
    together = cloudtrail.parse_objects(objects)
    for obj, parsed in zip(objects, together, strict=True):
        alone = parse_object(obj.data, obj.source_key, obj.delivered_at, obj.account)
        assert parsed.records == alone.records
        assert parsed.rows.equals(alone.rows), obj.source_key


def test_one_odd_object_does_not_change_how_its_neighbours_are_read() -> None:
    good, odd = [record(), record()], [record(), record(readOnly="yes"), "not an object"]
    data = [gz(good), gz(odd), b"\x1f\x8bnot really", gz(good)]
    objects = [cloudtrail.LogObject(d, f"k{i}", DELIVERED, "111122223333") for i, d in enumerate(data)]
    results = cloudtrail.parse_objects(objects)
    assert isinstance(results[2], BadObject)
    for i in (0, 1, 3):
        alone = parse(data[i])
        assert results[i].rows.drop_columns(["source_key"]).equals(alone.rows.drop_columns(["source_key"]))
        assert results[i].rows.column("source_key").to_pylist() == [f"k{i}"] * alone.rows.num_rows
    assert [r.reason for r in results[1].rejected] == ["record is not a JSON object"]
    assert results[1].rows.column("read_only").to_pylist() == [True, None]
