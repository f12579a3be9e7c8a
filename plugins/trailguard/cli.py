"""The ``trailguard`` command: the same operations the DAGs run, for a terminal."""

from __future__ import annotations

import argparse
import contextlib
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
    from trailguard.store import PENDING, REPLAYED

    runtime = Runtime.local(settings)
    specs = _specs(runtime, args.detection)
    _refuse_newer_baselines(runtime, specs, args)
    if args.baseline_days:
        for spec in specs:
            runtime.engine.baseline_initial(spec, args.start, args.baseline_days)
    count = 0
    status = PENDING if args.notify else REPLAYED  # 'replayed' alerts are never delivered
    for alert in replay(runtime.engine, specs, args.start, args.end, status):
        print(json.dumps(alert.as_dict()), flush=True)
        count += 1
    log.info("replay %s .. %s: %d alerts", args.start.isoformat(), args.end.isoformat(), count)
    return _notify(runtime) if args.notify else 0


def _refuse_newer_baselines(runtime, specs: list, args: argparse.Namespace) -> None:
    """A baseline newer than --start already holds the replayed range: replaying on it is wrong, and
    --baseline-days would overwrite it (production state, perhaps). Only on explicit request."""
    if args.overwrite_baselines and not args.baseline_days:
        raise UsageError("--overwrite-baselines goes with --baseline-days N: it rebuilds the baselines at --start")
    newer = [s.name for s in specs if (mark := runtime.engine.baseline_watermark(s)) and mark > args.start]
    if newer and not args.overwrite_baselines:
        raise UsageError(
            f"the baselines of {', '.join(newer)} in {runtime.settings.db} are newer than --start "
            f"{args.start.isoformat()}: point TRAILGUARD_DB at a scratch copy of the state store, or pass "
            "--baseline-days N --overwrite-baselines to rebuild them there"
        )


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from trailguard.demo import run

    chosen = {"days": args.days, "events_per_hour": args.events_per_hour, "live_hours": args.live_hours}
    return run(args.dir, **{name: value for name, value in chosen.items() if value is not None})


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from trailguard.generate import describe_trail, generate_trail

    trail = generate_trail(
        args.out, args.days, args.end, args.seed, args.events_per_hour, incidents=not args.no_incidents
    )
    print("\n".join(describe_trail(trail)))
    return 0


def _notify(runtime) -> int:
    with contextlib.redirect_stdout(sys.stderr):  # Airflow's SDK logs to stdout: keep it for alert lines
        report = runtime.deliver_alerts(utcnow())
    log.info("slack: %s", report)
    if report.problem:
        log.error("slack: %s", report.problem)
        return 1
    return 0


def cmd_requeue(args: argparse.Namespace, settings: Settings) -> int:
    from trailguard import outbox
    from trailguard.runtime import Runtime

    count = outbox.requeue_failed(Runtime.local(settings).state, args.id or None)
    print(f"{count} failed alert(s) back to pending: the next delivery run posts them")
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
    p = detection_command("baseline-update", cmd_baseline_update, "merge what was ingested since the last update")
    p.add_argument("--at", type=_iso, required=True)
    p = detection_command("detect", cmd_detect, "evaluate the 24-hour window ending at T; alerts as JSON lines")
    p.add_argument("--at", type=_iso, required=True)
    p.add_argument("--notify", action="store_true", help="also deliver pending alerts to Slack now")
    p = detection_command("replay", cmd_replay, "run the DAGs' schedule over (start, end]; alerts as JSON lines")
    p.add_argument("--start", type=_iso, required=True)
    p.add_argument("--end", type=_iso, required=True)
    p.add_argument("--baseline-days", type=int, help="first build baselines at --start over this many days")
    p.add_argument(
        "--overwrite-baselines",
        action="store_true",
        help="with --baseline-days: rebuild baselines even where the state store's are newer than --start",
    )
    p.add_argument(
        "--notify", action="store_true", help="queue the alerts for Slack and deliver them (default: print only)"
    )

    p = sub.add_parser("requeue-alerts", help="put alerts Slack rejected back in the queue, once the cause is fixed")
    p.add_argument("--id", type=int, action="append", help="only this alert id (repeatable; default: every failed one)")
    p.set_defaults(func=cmd_requeue)

    p = sub.add_parser("demo", help="the whole pipeline on generated CloudTrail, locally (no cloud account)")
    p.add_argument("--days", type=int, help="days of CloudTrail to generate (default 30, minimum 9)")
    p.add_argument("--dir", default="var/demo", help="where the trail, lake, state and logs go (default var/demo)")
    p.add_argument("--events-per-hour", type=int, help="mean background events an hour (default 10: a quiet org)")
    p.add_argument("--live-hours", type=int, help="hours run one by one at the end, incidents in them (default 48)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="write a synthetic organisation's CloudTrail in the S3 layout (test data)")
    p.add_argument("--out", required=True, help="folder to write AWSLogs/... under")
    p.add_argument("--days", type=int, default=30, help="days of CloudTrail before --end (default 30)")
    p.add_argument("--end", type=_iso, help="end of the range (ISO 8601; default: the last full hour)")
    p.add_argument("--seed", type=int, default=7, help="the same seed and arguments give the same records (default 7)")
    p.add_argument("--events-per-hour", type=int, default=120, help="mean background events an hour (default 120)")
    p.add_argument("--no-incidents", action="store_true", help="only normal activity (default: three incidents)")
    p.set_defaults(func=cmd_generate)
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
