"""Finding objects: layouts, interval selection by delivery time, filters, skipped kinds, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import gz, log_key, record, utc, write_log
from trailguard.sources import (
    AccessDenied,
    Listed,
    LocalStore,
    ObjectVanished,
    SourceError,
    classify,
    list_objects,
    open_store,
)


def _touch(root: Path, key: str, data: bytes = b"x") -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (
            "AWSLogs/111122223333/CloudTrail/us-east-1/2026/11/20/111122223333_CloudTrail_us-east-1_20261120T1305Z_abcdEFGH12345678.json.gz",
            None,
        ),
        (
            "AWSLogs/111122223333/CloudTrail-Digest/us-east-1/2026/11/20/111122223333_CloudTrail-Digest_us-east-1_t_us-east-1_20261120T130500Z.json.gz",
            "digest file",
        ),
        (
            "AWSLogs/111122223333/CloudTrail-Insight/us-east-1/2026/11/20/111122223333_CloudTrail-Insight_us-east-1_20261120T1305Z_abcdEFGH12345678.json.gz",
            "Insights event file",
        ),
        ("AWSLogs/111122223333/CloudTrail/us-east-1/2026/11/20/notes.txt", "not a CloudTrail log file name"),
    ],
)
def test_classify_by_folder_and_name(key: str, reason: str | None) -> None:
    ref = classify(LocalStore("."), Listed(key=key, size=10, etag="e"))
    if reason is None:
        assert ref.skip_reason is None
        assert ref.delivered_at == utc(2026, 11, 20, 13, 5)
        assert (ref.account_id, ref.region) == ("111122223333", "us-east-1")
    else:
        assert reason in ref.skip_reason


def test_interval_selects_by_delivery_time_in_the_name(tmp_path: Path) -> None:
    inside = write_log(tmp_path, [record()], utc(2026, 11, 20, 13, 0))
    write_log(tmp_path, [record()], utc(2026, 11, 20, 14, 0))  # end is exclusive
    write_log(tmp_path, [record()], utc(2026, 11, 20, 12, 55))
    listing = list_objects(LocalStore(tmp_path), utc(2026, 11, 20, 13), utc(2026, 11, 20, 14))
    assert [r.uri for r in listing.logs] == [str(inside)]


def test_layouts_prefixes_organisations_and_filters(tmp_path: Path) -> None:
    at = utc(2026, 11, 20, 13, 5)
    _touch(tmp_path, "trail-prefix/" + log_key("111122223333", "us-east-1", at))
    org_key = "trail-prefix/" + log_key("o-abcdefghij/444455556666", "eu-west-1", at).replace(
        "o-abcdefghij/444455556666_", "444455556666_"
    )
    _touch(tmp_path, org_key)
    _touch(
        tmp_path,
        "trail-prefix/AWSLogs/111122223333/CloudTrail-Digest/us-east-1/2026/11/20/111122223333_CloudTrail-Digest_us-east-1_t_us-east-1_20261120T130500Z.json.gz",
    )
    store = LocalStore(tmp_path)
    everything = list_objects(store)
    assert {r.account_id for r in everything.logs} == {"111122223333", "444455556666"}
    assert [r.skip_reason.split(" ")[0] for r in everything.skipped] == ["digest"]
    only_eu = list_objects(store, regions=("eu-west-1",))
    assert [r.key for r in only_eu.logs] == [org_key]
    only_acct = list_objects(store, accounts=("111122223333",))
    assert {r.account_id for r in only_acct.logs} == {"111122223333"}


class PolicyStore(LocalStore):
    """A folder that answers like a bucket under the least-privilege policy: only the root and the
    prefixes in ``allowed`` (and beneath them) may be listed."""

    def __init__(self, root: Path, allowed: tuple[str, ...]) -> None:
        super().__init__(root)
        self.allowed = allowed
        self.listed: list[str] = []

    def children(self, prefix: str):
        if prefix and not prefix.startswith(self.allowed):
            raise AccessDenied(f"access denied listing {prefix}")
        self.listed.append(prefix)
        return super().children(prefix)


def test_discovery_lists_only_what_a_least_privilege_policy_allows(tmp_path: Path) -> None:
    at = utc(2026, 11, 20, 13, 5)
    _touch(tmp_path, log_key("111122223333", "us-east-1", at))
    _touch(tmp_path, "elb-logs/AWSLogs/111122223333/elasticloadbalancing/x.log.gz")  # not CloudTrail's
    store = PolicyStore(tmp_path, ("AWSLogs/",))
    assert [r.account_id for r in list_objects(store).logs] == ["111122223333"]
    assert not any(p.startswith("elb-logs") for p in store.listed)


def test_discovery_passes_over_folders_it_may_not_list(tmp_path: Path) -> None:
    at = utc(2026, 11, 20, 13, 5)
    _touch(tmp_path, "trails/" + log_key("111122223333", "us-east-1", at))
    _touch(tmp_path, "private/secret.txt")
    store = PolicyStore(tmp_path, ("trails/",))
    assert [r.account_id for r in list_objects(store).logs] == ["111122223333"]
    with pytest.raises(SourceError, match=r"not a CloudTrail layout.*listing was denied for private/"):
        list_objects(PolicyStore(tmp_path, ("nothing/",)))


def test_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such folder"):
        open_store(str(tmp_path / "missing"))
    (tmp_path / "logs").mkdir()
    with pytest.raises(SourceError, match="not a CloudTrail layout"):
        list_objects(LocalStore(tmp_path))


def test_vanished_object(tmp_path: Path) -> None:
    path = write_log(tmp_path, [record()], utc(2026, 11, 20, 13, 5))
    store = LocalStore(tmp_path)
    ref = list_objects(store).logs[0]
    path.unlink()
    with pytest.raises(ObjectVanished, match="listed but is gone"):
        store.read(ref.key)


@pytest.mark.e2e
def test_s3_source_over_http(s3, moto_endpoint: str) -> None:
    s3.create_bucket(Bucket="trail-bucket")
    at = utc(2026, 11, 20, 13, 5)
    key = "org-trail/" + log_key("111122223333", "us-east-1", at)
    s3.put_object(Bucket="trail-bucket", Key=key, Body=gz([record()]))
    store = open_store("s3://trail-bucket/org-trail", s3)
    listing = list_objects(store, utc(2026, 11, 20, 13), utc(2026, 11, 20, 14))
    assert [r.uri for r in listing.logs] == [f"s3://trail-bucket/{key}"]
    assert store.read(listing.logs[0].key) == s3.get_object(Bucket="trail-bucket", Key=key)["Body"].read()
    s3.delete_object(Bucket="trail-bucket", Key=key)
    with pytest.raises(ObjectVanished):
        store.read(listing.logs[0].key)
    with pytest.raises(SourceError, match="no such bucket: nope-bucket"):
        list_objects(open_store("s3://nope-bucket", s3))
    with pytest.raises(SourceError, match="not a CloudTrail layout"):
        list_objects(open_store("s3://trail-bucket/elsewhere", s3))
