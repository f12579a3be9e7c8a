"""One typed settings object, read from the environment.

Inside Airflow, one Airflow Variable ``trailguard_settings`` holding a JSON object of these
names overrides them at run time (``airflow_glue.settings``); what the DAG files read at parse
time (start date, catchup, detections dir) comes from the environment only. Credentials never
live here: they come from Airflow connections or the standard AWS environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _default_geoip_db() -> str:
    try:
        from _maxminddb_geolite2 import geolite2_database
    except ImportError:  # pragma: no cover - the package is a pinned requirement
        return ""
    return str(geolite2_database())


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _datetime(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Settings:
    """Every knob trailguard has. Field metadata ``env`` names the variable; README lists them all."""

    lake: str = field(default="./var/lake", metadata={"env": "TRAILGUARD_LAKE"})
    db: str = field(default="sqlite:///./var/state.db", metadata={"env": "TRAILGUARD_DB"})
    geoip_db: str = field(default_factory=_default_geoip_db, metadata={"env": "TRAILGUARD_GEOIP_DB"})
    geoip_asn_db: str = field(default="", metadata={"env": "TRAILGUARD_GEOIP_ASN_DB"})
    source: str = field(default="", metadata={"env": "TRAILGUARD_SOURCE"})
    accounts: tuple[str, ...] = field(default=(), metadata={"env": "TRAILGUARD_ACCOUNTS"})
    regions: tuple[str, ...] = field(default=(), metadata={"env": "TRAILGUARD_REGIONS"})
    aws_conn_id: str = field(default="aws_default", metadata={"env": "TRAILGUARD_AWS_CONN_ID"})
    workers: int = field(default_factory=lambda: min(os.cpu_count() or 1, 4), metadata={"env": "TRAILGUARD_WORKERS"})
    fetch_threads: int = field(default=16, metadata={"env": "TRAILGUARD_FETCH_THREADS"})
    late_lookback_hours: int = field(default=2, metadata={"env": "TRAILGUARD_LATE_LOOKBACK_HOURS"})
    start_date: datetime = field(
        default=datetime(2014, 1, 1, tzinfo=timezone.utc), metadata={"env": "TRAILGUARD_START_DATE"}
    )
    catchup: bool = field(default=False, metadata={"env": "TRAILGUARD_CATCHUP"})
    detections_dir: str = field(
        default=str(PROJECT_ROOT / "include" / "detections"), metadata={"env": "TRAILGUARD_DETECTIONS_DIR"}
    )
    slack_conn_id: str = field(default="slack_alerts", metadata={"env": "TRAILGUARD_SLACK_CONN_ID"})
    ops_slack_conn_id: str = field(default="slack_alerts", metadata={"env": "TRAILGUARD_OPS_SLACK_CONN_ID"})
    alert_horizon_hours: int = field(default=48, metadata={"env": "TRAILGUARD_ALERT_HORIZON_HOURS"})
    slack_channel: str = field(default="", metadata={"env": "TRAILGUARD_SLACK_CHANNEL"})
    slack_timeout: float = field(default=10.0, metadata={"env": "TRAILGUARD_SLACK_TIMEOUT"})
    health_gap_hours: float = field(default=2.0, metadata={"env": "TRAILGUARD_HEALTH_GAP_HOURS"})
    health_lag_hours: float = field(default=3.0, metadata={"env": "TRAILGUARD_HEALTH_LAG_HOURS"})
    health_quarantine_records: int = field(default=100, metadata={"env": "TRAILGUARD_HEALTH_QUARANTINE_RECORDS"})
    health_baseline_age_hours: float = field(default=36.0, metadata={"env": "TRAILGUARD_HEALTH_BASELINE_AGE_HOURS"})
    health_pending_alert_hours: float = field(default=3.0, metadata={"env": "TRAILGUARD_HEALTH_PENDING_ALERT_HOURS"})

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        """Build from any name->string mapping (``os.environ``, Airflow Variables)."""
        kwargs = {}
        for f in fields(cls):
            raw = values.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            kwargs[f.name] = _convert(f.name, f.type, raw)
        return cls(**kwargs)

    @classmethod
    def from_env(cls) -> Settings:
        return cls.from_mapping(os.environ)

    @classmethod
    def env_names(cls) -> list[str]:
        return [f.metadata["env"] for f in fields(cls)]


_CONVERTERS = {
    "tuple[str, ...]": _csv,
    "int": int,
    "float": float,
    "bool": _bool,
    "datetime": _datetime,
    "str": str,
}


def _convert(name: str, type_name: object, raw: str) -> object:
    converter = _CONVERTERS[str(type_name)]
    try:
        return converter(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name}: {exc}") from None
