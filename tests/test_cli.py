"""The ``trailguard`` command as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from builders import record, utc, write_log
from trailguard.cli import main


def test_ingest_prints_a_summary_and_a_second_run_finds_nothing_new(tmp_path: Path, tg_env, capsys) -> None:
    write_log(tmp_path / "src", [record(), record()], utc(2026, 11, 20, 13, 5))
    assert main(["ingest", "--source", str(tmp_path / "src"), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["objects_listed"], first["records"], first["new_events"]) == (1, 2, 2)
    assert main(["ingest", "--source", str(tmp_path / "src")]) == 0
    text = capsys.readouterr().out
    assert "0 processed, 1 already done" in text
    assert "0 new" in text


def test_interval_needs_both_ends(tmp_path: Path, tg_env, capsys) -> None:
    assert main(["ingest", "--source", str(tmp_path), "--start", "2026-11-20T13:00Z"]) == 2
    assert "--start and --end go together" in capsys.readouterr().err


def test_unusable_sources_exit_non_zero_with_a_clear_message(tmp_path: Path, tg_env) -> None:
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing"): "no such folder",
        str(tmp_path / "empty"): "not a CloudTrail layout",
    }
    for source, message in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "trailguard", "ingest", "--source", source],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "plugins")},
        )
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr
