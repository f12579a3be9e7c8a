"""The path a data scientist would write first: gunzip, json.loads, pandas.json_normalize, to_parquet.

Usage: ``python bench/naive.py SOURCE_DIR OUT_DIR``; prints ``{"records": n}``. One Parquet file
per input object. The only addition to the textbook version is the fix pyarrow forces on it:
columns holding lists or dicts (``resources``, empty ``{}`` structs) are written as JSON text,
since Parquet cannot store a struct with no fields.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pandas as pd


def _is_nested(value: object) -> bool:
    return isinstance(value, list | dict)


def _as_json(value: object) -> object:
    return json.dumps(value) if _is_nested(value) else value


def to_frame(path: Path) -> pd.DataFrame:
    """One CloudTrail object as a flat frame: nested keys become dotted columns."""
    with gzip.open(path, "rb") as fh:
        records = json.load(fh)["Records"]
    frame = pd.json_normalize(records)
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].map(_is_nested).any():
            frame[column] = frame[column].map(_as_json)
    return frame


def main(source: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    records = 0
    for index, path in enumerate(sorted(source.rglob("*.json.gz"))):
        frame = to_frame(path)
        frame.to_parquet(out / f"part-{index:05d}.parquet")
        records += len(frame)
    print(json.dumps({"records": records}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
