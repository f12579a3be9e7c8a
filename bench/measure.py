"""Run one command in a fresh process and measure it: wall time and peak memory.

The command runs under ``spawn.py``, a small wrapper that times it and reads
``getrusage(RUSAGE_CHILDREN)``. Two memory figures: ``ru_maxrss`` is the largest single process
that was waited for, and the tree peak is the summed RSS of all the command's processes, sampled
every 50 ms (an upper bound: shared pages count per process). Ingest parses in threads, so for it
the two agree; the tree figure would show any process it started and did not wait for.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

SAMPLE_SECONDS = 0.05
SPAWN = str(Path(__file__).with_name("spawn.py"))


@dataclass(frozen=True)
class Measurement:
    wall: float  # seconds from fork to exit, timed by the wrapper
    max_rss_kb: int  # ru_maxrss of RUSAGE_CHILDREN in the wrapper (Linux: KiB)
    tree_rss_kb: int  # sampled peak of the summed RSS of the command and its descendants
    stdout: str
    pids: frozenset[tuple[int, float]] = frozenset()  # (pid, create_time) of every process seen in the tree
    cpu_seconds: float = 0.0  # user + system CPU of the tree, as last sampled per process (slightly under)


def trailguard(*args: str) -> list[str]:
    """The ``trailguard`` command of this Python (the venv's script, else ``python -m trailguard``)."""
    script = Path(sys.executable).with_name("trailguard")
    return [*([str(script)] if script.exists() else [sys.executable, "-m", "trailguard"]), *args]


class CommandFailed(RuntimeError):
    """A measured command exited non-zero: its figures would be meaningless."""


class _TreeSampler(threading.Thread):
    """Polls the RSS of everything under the wrapper; rusage cannot see grandchildren nobody reaps."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._root = psutil.Process(pid)  # safe: the wrapper stays a zombie until we wait for it
        self._done = threading.Event()
        self.peak_kb = 0
        self.seen: dict[tuple[int, float], float] = {}  # (pid, create_time) -> CPU seconds last sampled

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_kb = max(self.peak_kb, _tree_rss_kb(self._root, self.seen))
            self._done.wait(SAMPLE_SECONDS)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak_kb


def _tree_rss_kb(root: psutil.Process, seen: dict[tuple[int, float], float]) -> int:
    """Summed RSS of ``root``'s descendants (not ``root``: that is the wrapper); records their CPU in ``seen``."""
    total = 0
    try:
        procs = root.children(recursive=True)
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            times = proc.cpu_times()
            seen[proc.pid, proc.create_time()] = times.user + times.system
        except psutil.Error:  # exited between listing and reading
            continue
    return total // 1024


def run(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> Measurement:
    """Run ``cmd`` to completion; its stdout is returned, its stderr shown only if it fails."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        result, out_path, err_path = (Path(tmp) / name for name in ("result.json", "stdout", "stderr"))
        argv = [sys.executable, "-S", SPAWN, str(result), "--", *cmd]
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(argv, env=dict(env) if env is not None else None, stdout=out, stderr=err)
            sampler = _TreeSampler(proc.pid)
            sampler.start()
            try:
                proc.wait()
            finally:
                tree_kb = sampler.stop()
        if proc.returncode != 0 or not result.exists():
            tail = err_path.read_text(errors="replace")[-3000:]
            raise CommandFailed(f"{' '.join(cmd[:3])} ... exited with {proc.returncode}:\n{tail}")
        figures = json.loads(result.read_text())
        pids, cpu = frozenset(sampler.seen), sum(sampler.seen.values())
        return Measurement(figures["wall"], figures["max_rss_kb"], tree_kb, out_path.read_text(), pids, cpu)
