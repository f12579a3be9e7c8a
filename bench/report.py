"""Turn measurements into a markdown block and splice it into docs/benchmarks.md between markers.

Only our own block is replaced, so sections other benchmarks keep in the same file survive.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from measure import Measurement

SKELETON = """# Benchmarks

`make bench` runs them; each section below is rewritten by its benchmark.

## Ingest

<!-- bench:ingest:start -->
not measured yet
<!-- bench:ingest:end -->

## Detection

<!-- bench:detect:start -->
not measured yet
<!-- bench:detect:end -->
"""


@dataclass(frozen=True)
class Row:
    """The runs of one measurement, summarised by medians (robust to one disturbed run)."""

    label: str
    events: int
    raw_bytes: int
    runs: Sequence[Measurement]
    others: Sequence[float] = ()  # share of the machine's CPU other processes used, per run

    @property
    def others_share(self) -> float:
        return statistics.median(self.others) if self.others else 0.0

    @property
    def wall(self) -> float:
        return statistics.median(m.wall for m in self.runs)

    @property
    def max_rss_mb(self) -> float:
        return statistics.median(m.max_rss_kb for m in self.runs) / 1024

    @property
    def tree_rss_mb(self) -> float:
        return statistics.median(m.tree_rss_kb for m in self.runs) / 1024

    def cells(self) -> list[str]:
        walls = [m.wall for m in self.runs]
        return [
            self.label,
            f"{self.events:,}",
            f"{self.wall:.2f}",
            f"{min(walls):.2f} to {max(walls):.2f}",
            f"{self.events / self.wall:,.0f}",
            f"{self.raw_bytes / 1e6 / self.wall:,.0f}",
            f"{self.max_rss_mb:,.0f}",
            f"{self.tree_rss_mb:,.0f}",
            f"{self.others_share:.0%}",
        ]


HEADER = [
    "measurement",
    "events",
    "wall s (median)",
    "wall range s",
    "events/s",
    "JSON MB/s",
    "peak RSS MB, largest process",
    "peak RSS MB, process tree",
    "CPU used by other processes",
]


def table(rows: Sequence[Row]) -> str:
    lines = [_line(HEADER), _line(["---", *["---:"] * (len(HEADER) - 1)])]
    lines += [_line(row.cells()) for row in rows]
    return "\n".join(lines)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def verdict(ok: bool) -> str:
    return "meets the target" if ok else "**misses the target**"


def machine() -> list[str]:
    """What the figures depend on, so a reader can tell whether two runs are comparable."""
    libs = ", ".join(f"{name} {version(name)}" for name in ("pyarrow", "pandas", "orjson"))
    return [
        f"- CPUs: {os.cpu_count()} (nproc {len(os.sched_getaffinity(0))}), {_cpu_model()}",
        f"- memory: {_mem_total_gb():.0f} GB; Linux {platform.release()}",
        f"- Python {platform.python_version()}; {libs}; {_first_line(['gzip', '--version'])}",
        f"- code: commit {_first_line(['git', 'rev-parse', '--short', 'HEAD'])} (plus any uncommitted changes)",
    ]


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _mem_total_gb() -> float:
    found = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    return int(found.group(1)) / 1024**2 if found else 0.0


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def splice(doc: Path, name: str, body: str) -> None:
    """Replace the text between ``<!-- bench:NAME:start -->`` and ``end``; create file or block if absent."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = doc.read_text() if doc.exists() else SKELETON
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)
