"""The ``trailguard`` command: the same operations the DAGs run, for a terminal."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from trailguard.errors import TrailguardError
from trailguard.settings import Settings, _datetime

log = logging.getLogger("trailguard")


def _iso(value: str) -> datetime:
    try:
        return _datetime(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None


def _progress(done: int, total: int) -> None:
    sys.stderr.write(f"\r{done}/{total} objects")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from trailguard.runtime import Runtime

    if (args.start is None) != (args.end is None):
        raise UsageError("--start and --end go together")
    runtime = Runtime.local(settings)
    summary = runtime.ingest(
        args.source or settings.source,
        args.start,
        args.end,
        reprocess=args.reprocess,
        progress=_progress if sys.stderr.isatty() else None,
    )
    print(json.dumps(summary.as_dict()) if args.json else summary.text())
    return 0


def _specs(runtime, chosen: str | None) -> list:
    return [runtime.spec(chosen)] if chosen else runtime.specs


def cmd_baseline_initial(args: argparse.Namespace, settings: Settings) -> int:
    from trailguard.runtime import Runtime

    runtime = Runtime.local(settings)
    for spec in _specs(runtime, args.detection):
        report = runtime.engine.baseline_initial(spec, args.at, args.days)
        print(json.dumps(report.as_dict()))
    return 0


def cmd_baseline_update(args: argparse.Namespace, settings: Settings) -> int:
    from trailguard.runtime import Runtime

    runtime = Runtime.local(settings)
    for spec in _specs(runtime, args.detection):
        print(json.dumps(runtime.engine.baseline_update(spec, args.at).as_dict()))
    return 0


def cmd_detect(args: argparse.Namespace, settings: Settings) -> int:
    from trailguard.runtime import Runtime

    runtime = Runtime.local(settings)
    for spec in _specs(runtime, args.detection):
        report = runtime.engine.detect(spec, args.at)
        log.info("%s", json.dumps(report.as_dict()))
        for alert in report.alerts:
            print(json.dumps(alert.as_dict()), flush=True)
    return _notify(runtime) if args.notify else 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from trailguard.replay import replay
    from trailguard.runtime import Runtime

    runtime = Runtime.local(settings)
    specs = _specs(runtime, args.detection)
    if args.baseline_days:
        for spec in specs:
            runtime.engine.baseline_initial(spec, args.start, args.baseline_days)
    count = 0
    for alert in replay(runtime.engine, specs, args.start, args.end):
        print(json.dumps(alert.as_dict()), flush=True)
        count += 1
    log.info("replay %s .. %s: %d alerts", args.start.isoformat(), args.end.isoformat(), count)
    return _notify(runtime) if args.notify else 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from trailguard.demo import run

    return run(args.dir, args.days)


def _notify(runtime) -> int:
    report = runtime.deliver_alerts(utcnow())
    log.info("slack: %s", report)
    return 0


class UsageError(TrailguardError):
    """The command line does not make sense."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trailguard", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="ingest CloudTrail objects into the events lake")
    p.add_argument("--source", help="s3://bucket[/prefix] or a local folder (default: TRAILGUARD_SOURCE)")
    p.add_argument("--start", type=_iso, help="delivered at or after (ISO 8601, UTC if no zone)")
    p.add_argument("--end", type=_iso, help="delivered before (ISO 8601)")
    p.add_argument("--reprocess", action="store_true", help="process objects again even if the ledger has them")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_ingest)

    def detection_command(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--detection", help="one spec (id, file stem or name); default all")
        p.set_defaults(func=func)
        return p

    p = detection_command("baseline-initial", cmd_baseline_initial, "build baselines from the lake's history")
    p.add_argument("--at", type=_iso, required=True, help="evaluation time T (history before T)")
    p.add_argument("--days", type=int, help="lookback in days (default: the spec's, 90)")
    p = detection_command("baseline-update", cmd_baseline_update, "merge what was delivered since the last update")
    p.add_argument("--at", type=_iso, required=True)
    p = detection_command("detect", cmd_detect, "evaluate the 24-hour window ending at T; alerts as JSON lines")
    p.add_argument("--at", type=_iso, required=True)
    p.add_argument("--notify", action="store_true", help="also deliver pending alerts to Slack")
    p = detection_command("replay", cmd_replay, "run the DAGs' schedule over (start, end]; alerts as JSON lines")
    p.add_argument("--start", type=_iso, required=True)
    p.add_argument("--end", type=_iso, required=True)
    p.add_argument("--baseline-days", type=int, help="first build baselines at --start over this many days")
    p.add_argument("--notify", action="store_true", help="deliver the alerts to Slack (default: print only)")

    p = sub.add_parser("demo", help="the whole pipeline on generated CloudTrail, locally (no cloud account)")
    p.add_argument("--days", type=int, default=14, help="days of CloudTrail to generate (default 14, minimum 9)")
    p.add_argument("--dir", default="var/demo", help="where the trail, lake, state and logs go (default var/demo)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines say nothing an operator needs
    try:
        settings = Settings.from_env()
        return args.func(args, settings)
    except (TrailguardError, ValueError, KeyError) as exc:
        print(f"trailguard: error: {exc}", file=sys.stderr)
        return 2


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
