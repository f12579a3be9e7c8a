"""The wired-up parts (settings, state store, lake, S3 access) that the CLI and the DAGs share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from trailguard.ingest import Progress, Summary, ingest
from trailguard.lake import Lake
from trailguard.settings import Settings
from trailguard.sources import SourceError, open_store
from trailguard.store import StateStore

if TYPE_CHECKING:  # the detection side (Parquet readers, GeoIP, YAML) loads when first used, not for an ingest
    from trailguard.detect import Engine
    from trailguard.specs import Spec


def _boto3_s3() -> Any:
    import boto3

    return boto3.client("s3")


@dataclass
class Runtime:
    settings: Settings
    s3_client: Callable[[], Any] = _boto3_s3
    lake_filesystem: Any = None

    @classmethod
    def local(cls, settings: Settings | None = None) -> Runtime:
        """Plain boto3 and the AWS environment (``AWS_ENDPOINT_URL_S3`` and the credential chain)."""
        return cls(settings or Settings.from_env())

    @cached_property
    def state(self) -> StateStore:
        return StateStore(self.settings.db)

    @cached_property
    def lake(self) -> Lake:
        return Lake(self.settings.lake, self.lake_filesystem)

    @cached_property
    def specs(self) -> list[Spec]:
        from trailguard.specs import load_specs

        return load_specs(self.settings.detections_dir)

    @cached_property
    def engine(self) -> Engine:
        from trailguard.detect import Engine
        from trailguard.geoip import GeoIP

        return Engine(self.lake, self.state, GeoIP(self.settings.geoip_db, self.settings.geoip_asn_db))

    def deliver_alerts(self, now: datetime) -> Any:
        """Send pending alerts to the Slack connection; older than the horizon: one digest."""
        from trailguard import outbox, slack

        send = slack.sender(self.settings, self.settings.slack_conn_id)
        horizon = timedelta(hours=self.settings.alert_horizon_hours)
        return outbox.deliver_pending(self.state, send, now, horizon, self.settings.lake)

    def spec(self, spec_id: str) -> Spec:
        for spec in self.specs:
            if spec_id in {spec.id, spec.slug, spec.name}:
                return spec
        raise KeyError(f"no detection spec {spec_id!r} in {self.settings.detections_dir}")

    def ingest(
        self,
        source: str,
        start: datetime | None = None,
        end: datetime | None = None,
        reprocess: bool = False,
        progress: Progress | None = None,
    ) -> Summary:
        if not source:
            raise SourceError("no source: pass --source or set TRAILGUARD_SOURCE")
        store = open_store(source, self.s3_client() if source.startswith("s3://") else None)
        s = self.settings
        return ingest(
            store,
            self.lake,
            self.state,
            start,
            end,
            accounts=s.accounts,
            regions=s.regions,
            workers=s.workers,
            threads=s.fetch_threads,
            reprocess=reprocess,
            progress=progress,
        )
