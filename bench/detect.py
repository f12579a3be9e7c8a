"""`make bench`, detection part: one hourly detection against a 90-day baseline built from
>= 10M synthetic events, and a baseline update over a 1M-event day.

The lake is written directly as Parquet (generating and ingesting 10M JSON records would
measure ingest again, which the ingest benchmark already does). Detection is measured with 30
and with 90 days of history behind it: its cost must not grow with history length. Each
measurement is a fresh `trailguard` process, so its wall time and peak RSS are its own.
Results go to stdout and into docs/benchmarks.md between the ``bench:detect`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from measure import Measurement, run
from measure import trailguard as cli
from report import machine, splice
from trailguard.cloudtrail import SCHEMA
from trailguard.lake import Lake, delivery_tag, partition_of
from trailguard.specs import load_specs
from trailguard.store import DONE, StateStore, lake_partitions, now, objects

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "detect"
START = datetime(2026, 6, 1, tzinfo=timezone.utc)
DAYS = 90
PER_HOUR = 4_700  # x 24 x 90 = 10.15M events
BIG_DAY = 1_000_000
ACCOUNTS = [f"{100000000000 + i * 7919:012d}" for i in range(20)]
READS = ["DescribeInstances", "GetObject", "ListBuckets", "GetCallerIdentity", "DescribeVolumes", "ListRoles"]


def _provisioning_names() -> list[str]:
    specs = {s.rows: s for s in load_specs(ROOT / "include" / "detections")}
    return list(specs["provisioning"].event_names)


def synth_hour(rng: np.random.Generator, hour: datetime, n: int, ips: np.ndarray, provisioning: list[str]) -> pa.Table:
    """One event hour: mostly reads, some AssumeRole (a few cross-account pairs), some provisioning."""
    kind = rng.choice(3, size=n, p=[0.94, 0.03, 0.03])
    names = np.where(
        kind == 0,
        rng.choice(READS, n),
        np.where(kind == 1, "AssumeRole", rng.choice(provisioning, n)),
    )
    recipient = rng.choice(ACCOUNTS, n)
    caller = np.where(rng.random(n) < 0.7, recipient, rng.choice(ACCOUNTS[:4], n))
    role_account = np.where(rng.random(n) < 0.7, recipient, rng.choice(ACCOUNTS[:6], n))
    user_type = rng.choice(["AssumedRole", "IAMUser", "AWSService"], n, p=[0.6, 0.25, 0.15])
    src = np.where(rng.random(n) < 0.75, rng.choice(ips, n), rng.choice(["ec2.amazonaws.com", "10.0.3.7"], n))
    seconds = np.sort(rng.integers(0, 3600, n))
    event_ms = int(hour.timestamp() * 1000) + seconds * 1000
    ids = [f"{a:016x}{b:016x}" for a, b in zip(rng.integers(0, 2**63, n), rng.integers(0, 2**63, n), strict=True)]
    is_role = names == "AssumeRole"
    role_arn = [f"arn:aws:iam::{a}:role/ops" if r else None for a, r in zip(role_account, is_role, strict=True)]
    raw = [_raw(event_id, name, i) for i, (event_id, name) in enumerate(zip(ids, names, strict=True))]
    none = pa.nulls(n, pa.string())
    columns = {
        "event_id": pa.array(ids),
        "event_time": pa.array(event_ms, SCHEMA.field("event_time").type),
        "event_name": pa.array(names),
        "event_source": none,
        "aws_region": pa.array(rng.choice(["us-east-1", "eu-central-1"], n)),
        "recipient_account_id": pa.array(recipient),
        "event_version": none,
        "event_type": none,
        "event_category": none,
        "management_event": pa.nulls(n, pa.bool_()),
        "read_only": pa.nulls(n, pa.bool_()),
        "user_type": pa.array(user_type),
        "user_arn": pa.array([f"arn:aws:iam::{c}:user/u{i % 50}" for i, c in enumerate(caller)]),
        "user_name": pa.array([f"u{i % 50}" for i in range(n)]),
        "user_account_id": pa.array(caller),
        "principal_id": none,
        "access_key_id": none,
        "invoked_by": none,
        "session_issuer_arn": none,
        "session_issuer_user_name": none,
        "source_ip": pa.array(src),
        "user_agent": pa.array(rng.choice(["aws-cli/2.15", "Boto3/1.34", "console.amazonaws.com"], n)),
        "error_code": pa.array(np.where(rng.random(n) < 0.05, "AccessDenied", None)),
        "shared_event_id": none,
        "request_role_arn": pa.array(role_arn, pa.string()),
        "role_session_name": none,
        "assumed_role_arn": none,
        "resources": pa.nulls(n, SCHEMA.field("resources").type),
        "source_key": pa.array([object_uri(hour)] * n),
        "delivered_at": pa.array([int(delivered(hour).timestamp() * 1000)] * n, SCHEMA.field("delivered_at").type),
        "raw": pa.array(raw),
    }
    return pa.table(columns, schema=SCHEMA)


# About the size (1.4 KB) and the make-up of a real record, so reading it costs what it would.
RAW = (
    '{{"eventVersion":"1.09","userIdentity":{{"type":"AssumedRole","principalId":"AROA{i:016X}:s{i}",'
    '"arn":"arn:aws:sts::123456789012:assumed-role/app/s{i}","accountId":"123456789012",'
    '"sessionContext":{{"attributes":{{"creationDate":"2026-06-01T00:00:00Z","mfaAuthenticated":"false"}}}}}},'
    '"eventTime":"2026-06-01T00:00:00Z","eventSource":"ec2.amazonaws.com","eventName":"{name}",'
    '"awsRegion":"us-east-1","sourceIPAddress":"203.0.113.7","userAgent":"aws-cli/2.15.0 Python/3.11.6 '
    'Linux/6.1 exe/x86_64.amzn.2023 prompt/off command/ec2.run-instances",'
    '"requestParameters":{{"instancesSet":{{"items":[{{"imageId":"ami-0{i:016x}","minCount":1,"maxCount":1}}]}},'
    '"instanceType":"m5.large","blockDeviceMapping":{{}},"monitoring":{{"enabled":false}},'
    '"disableApiTermination":false,"clientToken":"{event_id}"}},'
    '"responseElements":{{"requestId":"{event_id}","reservationId":"r-0{i:016x}",'
    '"instancesSet":{{"items":[{{"instanceId":"i-0{i:016x}","imageId":"ami-0{i:016x}",'
    '"instanceState":{{"code":0,"name":"pending"}},"privateDnsName":"ip-10-0-{b}-{c}.ec2.internal",'
    '"amiLaunchIndex":0,"productCodes":{{}},"instanceType":"m5.large","launchTime":1780272000000,'
    '"placement":{{"availabilityZone":"us-east-1a","tenancy":"default"}}}}]}}}},'
    '"requestID":"{event_id}","eventID":"{event_id}","readOnly":false,"eventType":"AwsApiCall",'
    '"managementEvent":true,"recipientAccountId":"123456789012","eventCategory":"Management",'
    '"tlsDetails":{{"tlsVersion":"TLSv1.3","cipherSuite":"TLS_AES_128_GCM_SHA256",'
    '"clientProvidedHostHeader":"ec2.us-east-1.amazonaws.com"}}}}'
)


def _raw(event_id: str, name: str, i: int) -> str:
    return RAW.format(event_id=event_id, name=name, i=i, b=i % 251, c=i % 241)


def object_uri(hour: datetime) -> str:
    """One synthetic delivery object per event hour."""
    return f"s3://bench/AWSLogs/{hour:%Y%m%dT%H}.json.gz"


def delivered(hour: datetime) -> datetime:
    """Delivered five minutes into the next hour, as CloudTrail's last objects for an hour are."""
    return hour + timedelta(hours=1, minutes=5)


def write_hours(lake: Lake, dbs: list[Path], start: datetime, hours: int, per_hour: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    ips = np.array([f"{rng.integers(1, 223)}.{rng.integers(0, 255)}.{rng.integers(0, 255)}.{rng.integers(1, 254)}"
                    for _ in range(3000)])  # fmt: skip
    provisioning = _provisioning_names()
    rows = []
    for h in range(hours):
        hour = start + timedelta(hours=h)
        table = synth_hour(rng, hour, per_hour, ips, provisioning)
        path = Path(lake.file_path(partition_of(hour), delivery_tag(delivered(hour))))
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd")
        rows.append((hour, per_hour))
    for db in dbs:
        _register(db, rows)
    return hours * per_hour


def _register(db: Path, hours: list[tuple[datetime, int]]) -> None:
    """What ingest would have recorded: the partitions, and each delivery object in the ledger
    (baseline-update merges by the ledger)."""
    state = StateStore(f"sqlite:///{db}")
    stamp = now()
    with state.begin() as conn:
        conn.execute(
            lake_partitions.insert(),
            [
                {"partition": partition_of(h), "rows": n, "max_delivered_at": delivered(h), "updated_at": stamp}
                for h, n in hours
            ],
        )
        conn.execute(
            objects.insert(),
            [
                {
                    "uri": object_uri(h),
                    "etag": "bench",
                    "size": 0,
                    "account_id": ACCOUNTS[0],
                    "region": "us-east-1",
                    "delivered_at": delivered(h),
                    "records": n,
                    "events": n,
                    "status": DONE,
                    "processed_at": stamp,
                }
                for h, n in hours
            ],
        )
    state.close()


def env(lake: Path, db: Path) -> dict[str, str]:
    return {**os.environ, "TRAILGUARD_LAKE": str(lake), "TRAILGUARD_DB": f"sqlite:///{db}"}


def measure(label: str, cmd: list[str], environ: dict[str, str], rounds: int) -> tuple[str, list[Measurement]]:
    runs = [run(cmd, environ) for _ in range(rounds)]
    return label, runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="regenerate the synthetic lake")
    args = parser.parse_args()
    lake_dir, db30, db90 = OUT / "lake", OUT / "state30.db", OUT / "state90.db"
    stamp = OUT / "built"
    if args.fresh or not stamp.exists():
        shutil.rmtree(OUT, ignore_errors=True)
        OUT.mkdir(parents=True)
        began = time.monotonic()
        events = write_hours(Lake(str(lake_dir)), [db30, db90], START, DAYS * 24, PER_HOUR, seed=1)
        stamp.write_text(str(events))
        print(f"synthetic lake: {events:,} events in {time.monotonic() - began:.0f} s", file=sys.stderr)
    events = int(stamp.read_text())
    t30, t90 = START + timedelta(days=30), START + timedelta(days=DAYS)
    results: list[tuple[str, list[Measurement]]] = []
    for db, at, days in ((db30, t30, 30), (db90, t90, DAYS)):
        for table in ("baselines", "watermarks", "alerts"):
            with sqlite3.connect(db) as conn:
                conn.execute(f"DELETE FROM {table}")
        results.append(
            measure(
                f"baseline-initial, {days} days ({days * 24 * PER_HOUR:,} events)",
                cli("baseline-initial", "--at", at.isoformat(), "--days", str(days)),
                env(lake_dir, db),
                1,
            )
        )
        results.append(
            measure(
                f"detect (both detections, 24 h window) with {days} days of history",
                cli("detect", "--at", (at + timedelta(hours=1)).isoformat()),
                env(lake_dir, db),
                args.rounds,
            )
        )
    day_start = t90 + timedelta(hours=1)
    if not (OUT / "big-day").exists():
        write_hours(Lake(str(lake_dir)), [db90], day_start, 24, BIG_DAY // 24, seed=2)
        (OUT / "big-day").write_text("1")
    results.append(
        measure(
            f"baseline-update over one day of {BIG_DAY:,} events",
            cli("baseline-update", "--at", (day_start + timedelta(hours=24)).isoformat()),
            env(lake_dir, db90),
            1,
        )
    )
    merged = [json.loads(line) for line in results[-1][1][0].stdout.splitlines() if line.startswith("{")]
    if sum(r["objects"] for r in merged) != 24 * len(merged) or not all(r["events"] for r in merged):
        raise SystemExit(f"the baseline update did not merge the day's 24 objects: {merged}")
    body = render(results, events, args.rounds)
    print(body)
    splice(ROOT / "docs" / "benchmarks.md", "detect", body)
    return 0


def render(results: list[tuple[str, list[Measurement]]], events: int, rounds: int) -> str:
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench` (`bench/detect.py`); "
        f"detect: median of {rounds} runs, each a fresh `trailguard` process (imports included).",
        "",
        *machine(),
        f"- synthetic lake: {events:,} events over {DAYS} days ({PER_HOUR:,} per hour, 2,160 Parquet files), "
        "3% AssumeRole (some cross-account), 3% provisioning calls from 3,000 random public IPs, "
        f"`raw` {len(_raw('0' * 32, 'RunInstances', 0)):,} bytes a record like a real RunInstances",
        "",
        "| measurement | wall s (median) | wall range s | peak RSS MB |",
        "| --- | ---: | --- | ---: |",
    ]
    for label, runs in results:
        walls = sorted(m.wall for m in runs)
        rss = sorted(m.max_rss_kb for m in runs)[len(runs) // 2] / 1024
        lines.append(f"| {label} | {walls[len(walls) // 2]:.2f} | {walls[0]:.2f} to {walls[-1]:.2f} | {rss:.0f} |")
    d30 = sorted(m.wall for m in results[1][1])[len(results[1][1]) // 2]
    d90 = sorted(m.wall for m in results[3][1])[len(results[3][1]) // 2]
    lines += [
        "",
        f"- detection with 90 days of history / with 30 days: **{d90 / d30:.2f}** (a detection reads the 24 "
        "window partitions and looks up only the keys it finds, so history length does not enter its cost)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
