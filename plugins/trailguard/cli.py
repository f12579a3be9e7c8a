"""The ``trailguard`` command: the same operations the DAGs run, for a terminal."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

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


class UsageError(Exception):
    pass


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from trailguard.sources import SourceError

    try:
        settings = Settings.from_env()
        return args.func(args, settings)
    except (SourceError, UsageError, ValueError) as exc:
        print(f"trailguard: error: {exc}", file=sys.stderr)
        return 2


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
