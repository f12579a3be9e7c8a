"""Where CloudTrail objects come from: an S3 bucket (any S3-compatible endpoint) or a local folder.

Both are walked the same way, by the layout CloudTrail writes:
``[prefix/]AWSLogs/[o-org/]<account>/CloudTrail/<region>/YYYY/MM/DD/<file>.json.gz``.
For an interval only the day folders that can hold it are listed; the delivery timestamp in
each file name then picks the objects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from trailguard.errors import TrailguardError

LOG_NAME = re.compile(
    r"^(?P<account>[^_/]+)_CloudTrail_(?P<region>[^_/]+)_(?P<ts>\d{8}T\d{4}Z)_[A-Za-z0-9]+\.json\.gz$"
)
DIGEST_FOLDER = "CloudTrail-Digest"
INSIGHT_FOLDER = "CloudTrail-Insight"
LOG_FOLDER = "CloudTrail"
ORG_ID = re.compile(r"^o-[a-z0-9]{10,32}$")
MAX_PREFIX_DEPTH = 4


class SourceError(TrailguardError):
    """The source cannot be used at all (no such bucket, access denied, not a CloudTrail layout)."""


class AccessDenied(SourceError):
    """Listing a prefix was refused (the IAM policy does not cover it)."""


class ObjectVanished(Exception):
    """An object that was listed is gone by the time it is read."""


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectRef:
    """One object found under the source, with what its name says about it."""

    uri: str
    key: str
    size: int
    etag: str
    account_id: str
    region: str
    delivered_at: datetime | None
    skip_reason: str | None = None


@dataclass(frozen=True)
class Listing:
    logs: list[ObjectRef]
    skipped: list[ObjectRef]


class Store(Protocol):
    """The two things a source must do: list one level, and read an object."""

    uri: str

    def children(self, prefix: str) -> tuple[list[str], list[Listed]]: ...

    def walk(self, prefix: str) -> Iterator[Listed]: ...

    def read(self, key: str) -> bytes: ...

    def uri_for(self, key: str) -> str: ...


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise SourceError(f"no such folder: {root}")
        self.uri = str(self.root)

    def children(self, prefix: str) -> tuple[list[str], list[Listed]]:
        dirs, files = [], []
        try:
            entries = list(os.scandir(self.root / prefix))
        except FileNotFoundError:
            return [], []
        for entry in entries:
            if entry.is_dir():
                dirs.append(f"{prefix}{entry.name}/")
            elif entry.is_file():
                files.append(self._listed(f"{prefix}{entry.name}", entry.stat()))
        return sorted(dirs), sorted(files, key=lambda x: x.key)

    def walk(self, prefix: str) -> Iterator[Listed]:
        base = self.root / prefix
        for folder, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = Path(folder).relative_to(self.root).as_posix()
            rel = "" if rel == "." else rel + "/"
            for name in sorted(filenames):
                yield self._listed(rel + name, os.stat(os.path.join(folder, name)))

    def read(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise ObjectVanished(f"{self.uri_for(key)} was listed but is gone") from None

    def uri_for(self, key: str) -> str:
        return str(self.root / key)

    @staticmethod
    def _listed(key: str, st: os.stat_result) -> Listed:
        return Listed(key=key, size=st.st_size, etag=f"{st.st_size}-{st.st_mtime_ns}")


class S3Store:
    """A bucket and prefix reached through a boto3 S3 client (thread-safe, shared by fetch threads)."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket, self.prefix, self.client = bucket, prefix, client
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")

    def children(self, prefix: str) -> tuple[list[str], list[Listed]]:
        dirs: list[str] = []
        files: list[Listed] = []
        for page in self._pages(self.prefix + prefix, delimiter="/"):
            dirs += [p["Prefix"][len(self.prefix) :] for p in page.get("CommonPrefixes", [])]
            files += [self._listed(o) for o in page.get("Contents", [])]
        return dirs, files

    def walk(self, prefix: str) -> Iterator[Listed]:
        for page in self._pages(self.prefix + prefix, delimiter=None):
            yield from (self._listed(o) for o in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise ObjectVanished(f"{self.uri_for(key)} was listed but is gone") from None

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _listed(self, obj: dict[str, Any]) -> Listed:
        return Listed(key=obj["Key"][len(self.prefix) :], size=obj["Size"], etag=obj.get("ETag", "").strip('"'))

    def _pages(self, prefix: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
        from botocore.exceptions import ClientError

        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            yield from self.client.get_paginator("list_objects_v2").paginate(**kwargs)
        except self.client.exceptions.NoSuchBucket:
            raise SourceError(f"no such bucket: {self.bucket}") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"AccessDenied", "403", "AllAccessDisabled"}:
                raise AccessDenied(
                    f"access denied listing s3://{self.bucket}/{prefix} (the role needs s3:ListBucket on it)"
                ) from None
            raise SourceError(f"cannot list s3://{self.bucket}/{prefix}: {code or exc}") from None


def open_store(source: str, s3_client: Any = None) -> Store:
    """``s3://bucket[/prefix]`` or a local folder. ``s3_client`` defaults to a plain boto3 client,
    which honours ``AWS_ENDPOINT_URL_S3`` and the usual AWS credential chain."""
    if source.startswith("s3://"):
        bucket, _, prefix = source[5:].partition("/")
        if not bucket:
            raise SourceError(f"no bucket in {source!r}")
        prefix = prefix.strip("/")
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3")
        return S3Store(bucket, f"{prefix}/" if prefix else "", s3_client)
    return LocalStore(source)


def list_objects(
    store: Store,
    start: datetime | None = None,
    end: datetime | None = None,
    accounts: Iterable[str] = (),
    regions: Iterable[str] = (),
    threads: int = 16,
) -> Listing:
    """Every log object delivered in [start, end) (all of them when no range), plus what was skipped."""
    accounts, regions = set(accounts), set(regions)
    account_prefixes = [p for p in _account_prefixes(store) if not accounts or _last(p) in accounts]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        day_jobs = []
        for region_prefixes in pool.map(lambda p: _service_region_prefixes(store, p), account_prefixes):
            for region_prefix in region_prefixes:
                if regions and _last(region_prefix) not in regions:
                    continue
                day_jobs.append(region_prefix)
        if start is None or end is None:
            listed_groups = pool.map(lambda p: list(store.walk(p)), day_jobs)
        else:
            days = _days(start, end)
            listed_groups = pool.map(lambda p: list(store.walk(p)), [f"{r}{d}" for r in day_jobs for d in days])
        logs, skipped = [], []
        for group in listed_groups:
            for listed in group:
                ref = classify(store, listed)
                if ref.skip_reason:
                    skipped.append(ref)
                elif start is None or end is None or start <= ref.delivered_at < end:
                    logs.append(ref)
    logs.sort(key=lambda r: (r.delivered_at, r.key))
    return Listing(logs=logs, skipped=skipped)


def classify(store: Store, listed: Listed) -> ObjectRef:
    """What an object under the layout is, by its folder and name."""
    parts = listed.key.split("/")
    name = parts[-1]
    service = next((p for p in parts if p in {LOG_FOLDER, DIGEST_FOLDER, INSIGHT_FOLDER}), "")
    match = LOG_NAME.match(name)
    reason = None
    if service == DIGEST_FOLDER or "_CloudTrail-Digest_" in name:
        reason = "digest file (CloudTrail-Digest): integrity proof, not events"
    elif service == INSIGHT_FOLDER or "_CloudTrail-Insight_" in name:
        reason = "Insights event file (CloudTrail-Insight): not management or data events"
    elif listed.size == 0 and name.endswith("/"):
        reason = "folder marker"
    elif not match:
        reason = "not a CloudTrail log file name (<account>_CloudTrail_<region>_<YYYYMMDDTHHMMZ>_<id>.json.gz)"
    delivered = (
        datetime.strptime(match["ts"], "%Y%m%dT%H%MZ").replace(tzinfo=timezone.utc) if match and not reason else None
    )
    return ObjectRef(
        uri=store.uri_for(listed.key),
        key=listed.key,
        size=listed.size,
        etag=listed.etag,
        account_id=match["account"] if match else "",
        region=match["region"] if match else "",
        delivered_at=delivered,
        skip_reason=reason,
    )


def _account_prefixes(store: Store) -> list[str]:
    """``.../AWSLogs/<account>/`` folders, looking through custom trail prefixes and organisation ids."""
    roots = _awslogs_folders(store)
    accounts = []
    for root in roots:
        for child in store.children(root)[0]:
            if ORG_ID.match(_last(child)):
                accounts += store.children(child)[0]
            else:
                accounts.append(child)
    return accounts


def _awslogs_folders(store: Store) -> list[str]:
    """Every ``AWSLogs/`` folder within MAX_PREFIX_DEPTH levels of the source.

    Beside an ``AWSLogs/`` folder nothing else is opened (other logs in the bucket are none of
    trailguard's business, and a least-privilege policy forbids listing them). Elsewhere, a folder
    the policy does not let us list is passed over; it only matters if no trail is found at all.
    """
    roots: list[str] = []
    denied: list[str] = []
    frontier = [""]
    for _ in range(MAX_PREFIX_DEPTH):
        next_frontier = []
        for prefix in frontier:
            try:
                dirs = store.children(prefix)[0]
            except AccessDenied:
                if not prefix:
                    raise
                denied.append(prefix)
                continue
            trails = [d for d in dirs if _last(d) == "AWSLogs"]
            roots += trails
            next_frontier += [] if trails else dirs
        frontier = next_frontier
    if not roots:
        refused = f"; listing was denied for {', '.join(denied)}" if denied else ""
        raise SourceError(
            f"not a CloudTrail layout: no AWSLogs/ folder within {MAX_PREFIX_DEPTH} levels of {store.uri}{refused}"
        )
    return sorted(roots)


def _service_region_prefixes(store: Store, account_prefix: str) -> list[str]:
    """Region folders of the CloudTrail, digest and Insights services of one account."""
    out = []
    for service in store.children(account_prefix)[0]:
        if _last(service) in {LOG_FOLDER, DIGEST_FOLDER, INSIGHT_FOLDER}:
            out += store.children(service)[0]
    return out


def _days(start: datetime, end: datetime) -> list[str]:
    day = start.astimezone(timezone.utc).date()
    last = (end.astimezone(timezone.utc) - timedelta(microseconds=1)).date()
    out = []
    while day <= last:
        out.append(day.strftime("%Y/%m/%d/"))
        day += timedelta(days=1)
    return out


def _last(prefix: str) -> str:
    return prefix.rstrip("/").rsplit("/", 1)[-1]
