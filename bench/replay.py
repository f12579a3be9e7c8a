"""`make bench`, replay part: `trailguard replay` over 70 days of hourly runs for a small organisation.

Replay is how a user forecasts alert volume before going live, so it has to be quick: the issue
asks for well under a minute. The input is the generator's organisation (the demo's, with its
three incidents) over 84 days at the generator's default 120 background events an hour, written
as CloudTrail delivers it and ingested first (the ingest is measured too: it is the small-object
shape of a real trail). Replay then rebuilds 14-day baselines at the start and runs the DAGs'
schedule over the last 70 days: a baseline update at every midnight, both detections every hour.
Results go to stdout and into docs/benchmarks.md between the ``bench:replay`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from measure import Measurement, run
from measure import trailguard as cli
from report import machine, splice

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "replay"
END = datetime(2026, 11, 20, tzinfo=timezone.utc)
DAYS, REPLAY_DAYS, BASELINE_DAYS = 84, 70, 14


def env(state: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("TRAILGUARD_") or k == "TRAILGUARD_WORKERS"}
    return {**keep, "TRAILGUARD_LAKE": str(OUT / "lake"), "TRAILGUARD_DB": f"sqlite:///{state}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="replays measured (median reported)")
    args = parser.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    trail, ingested = OUT / "trail", OUT / "ingested.db"
    generated = run(cli("generate", "--out", str(trail), "--days", str(DAYS), "--end", END.isoformat()), env(ingested))
    ingest = run(cli("ingest", "--source", str(trail), "--json"), env(ingested))
    summary = json.loads(ingest.stdout.strip().splitlines()[-1])
    start = END - timedelta(days=REPLAY_DAYS)
    replays: list[Measurement] = []
    for round_ in range(args.rounds):
        state = OUT / f"replay-{round_}.db"
        shutil.copyfile(ingested, state)  # each replay starts from the state ingest left
        replays.append(
            run(
                cli(
                    "replay",
                    *("--start", start.isoformat(), "--end", END.isoformat()),
                    *("--baseline-days", str(BASELINE_DAYS)),
                ),
                env(state),
            )
        )
    alerts = [[json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")] for r in replays]
    if any(found != alerts[0] for found in alerts[1:]):
        raise SystemExit("replays of the same state gave different alerts")
    body = render(generated, ingest, summary, replays, alerts[0], start)
    print(body)
    splice(ROOT / "docs" / "benchmarks.md", "replay", body)
    return 0


def render(
    generated: Measurement,
    ingest: Measurement,
    summary: dict,
    replays: list[Measurement],
    alerts: list[dict],
    start: datetime,
) -> str:
    walls = sorted(m.wall for m in replays)
    median = walls[len(walls) // 2]
    hours = REPLAY_DAYS * 24
    return "\n".join(
        [
            f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench` (`bench/replay.py`).",
            "",
            *machine(),
            "",
            f"- input: `trailguard generate --days {DAYS} --end {END:%Y-%m-%dT%H:%MZ}` (the demo organisation, "
            f"default density), {generated.wall:.1f} s; ingested by `trailguard ingest`: "
            f"{summary['objects_processed']:,} objects, {summary['new_events']:,} events in {ingest.wall:.1f} s "
            f"({summary['objects_processed'] / ingest.wall:,.0f} objects/s), "
            f"peak RSS {ingest.max_rss_kb / 1024:.0f} MB",
            f"- `trailguard replay --start {start:%Y-%m-%dT%H:%MZ} --end {END:%Y-%m-%dT%H:%MZ} --baseline-days "
            f"{BASELINE_DAYS}`: {hours:,} hourly runs of both detections and {REPLAY_DAYS} baseline updates, each "
            f"replay on a fresh copy of the ingested state",
            "",
            "| measurement | wall s (median) | wall range s | peak RSS MB |",
            "| --- | ---: | --- | ---: |",
            f"| replay, {REPLAY_DAYS} days | {median:.2f} | {walls[0]:.2f} to {walls[-1]:.2f} | "
            f"{sorted(m.max_rss_kb for m in replays)[len(replays) // 2] / 1024:.0f} |",
            "",
            f"- **{median:.1f} s for {REPLAY_DAYS} days** ({median / hours * 1000:.1f} ms per hourly run); "
            f"{len(alerts)} alerts: " + ", ".join(json.dumps(a["key"]) for a in alerts) + ".",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
