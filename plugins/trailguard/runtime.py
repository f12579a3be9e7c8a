"""The wired-up parts (settings, state store, lake, S3 access) that the CLI and the DAGs share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from trailguard.ingest import Progress, Summary, ingest
from trailguard.lake import Lake
from trailguard.settings import Settings
from trailguard.sources import SourceError, open_store
from trailguard.store import StateStore


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
