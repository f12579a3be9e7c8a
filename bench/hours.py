"""The benchmark's input: busy CloudTrail hours from the project's generator, made once and reused.

Generating 200k events takes several seconds, so each hour is kept under ``bench/out/`` with a
stamp (next to it, not inside: ingest would list it) recording the parameters it was made with.
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from trailguard.generate import benchmark_hour

HOUR = datetime(2026, 11, 20, 13, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Spec:
    events: int
    files: int
    seed: int = 1

    @property
    def name(self) -> str:
        return f"hour-{self.events}ev-{self.files}f-seed{self.seed}"

    def params(self) -> dict:
        return {**asdict(self), "hour": HOUR.isoformat(), "generator": "benchmark_hour"}


@dataclass(frozen=True)
class Dataset:
    path: Path
    files: tuple[Path, ...]
    records: int
    bytes: int  # gzip, on disk
    raw_bytes: int  # JSON before gzip


def prepare(spec: Spec, root: Path) -> Dataset:
    """The hour for ``spec`` under ``root``: reused when its stamp matches, else generated afresh."""
    folder, stamp = root / spec.name, root / f"{spec.name}.json"
    saved = _read_stamp(stamp)
    dataset = _load(folder, saved) if saved and saved.get("params") == spec.params() else None
    if dataset is not None:
        return dataset
    shutil.rmtree(folder, ignore_errors=True)
    stats = benchmark_hour(folder, HOUR, events=spec.events, files=spec.files, seed=spec.seed)
    saved = {
        "params": spec.params(),
        "stats": {"files": stats.files, "records": stats.records, "bytes": stats.bytes, "raw_bytes": stats.raw_bytes},
    }
    stamp.write_text(json.dumps(saved, indent=2) + "\n")
    dataset = _load(folder, saved)
    if dataset is None:
        raise RuntimeError(f"generated {folder} does not hold the {stats.files} files the generator reported")
    return dataset


def one_object(source: Dataset, root: Path) -> Dataset:
    """A source holding one object of ``source``: ingest of it is mostly fixed cost (startup)."""
    first = source.files[0]
    folder = root / "one-object"
    target = folder / first.relative_to(source.path)
    if not target.exists():
        shutil.rmtree(folder, ignore_errors=True)
        target.parent.mkdir(parents=True)
        shutil.copyfile(first, target)
    raw = gzip.decompress(target.read_bytes())
    return Dataset(folder, (target,), len(json.loads(raw)["Records"]), target.stat().st_size, len(raw))


def shared(root: Path) -> Dataset | None:
    """The public CloudTrail beside the project (many small objects, as most real trails have), if present."""
    files = tuple(sorted(root.rglob("*.json.gz")))
    if not files:
        return None
    raw = [gzip.decompress(f.read_bytes()) for f in files]
    records = sum(len(json.loads(r)["Records"]) for r in raw)
    return Dataset(root, files, records, sum(f.stat().st_size for f in files), sum(map(len, raw)))


def _read_stamp(stamp: Path) -> dict | None:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


def _load(folder: Path, saved: dict) -> Dataset | None:
    """The dataset the stamp describes, or None when the folder no longer matches it."""
    stats = saved.get("stats", {})
    files = tuple(sorted(folder.rglob("*.json.gz")))
    if not files or len(files) != stats.get("files"):
        return None
    return Dataset(folder, files, stats["records"], stats["bytes"], stats["raw_bytes"])
