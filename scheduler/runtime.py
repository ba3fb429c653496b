"""What a command or a worker needs at run time: settings, the job table, the model registry and the object store."""
from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import TYPE_CHECKING

from .settings import Settings, get_settings

if TYPE_CHECKING:  # imported where used: a submit on the lean path never loads SQLAlchemy (scheduler.lean)
    from .jobs import JobTable
    from .model_registry import ModelRegistry
    from .store import ObjectStore


@dataclasses.dataclass
class Runtime:
    settings: Settings
    patient: bool = False  # a worker's: its S3 calls wait out an outage (store.S3_PATIENCE); a command's answer soon

    @classmethod
    def create(cls, settings: Settings | None = None, patient: bool = False) -> "Runtime":
        return cls(settings or get_settings(), patient)

    @cached_property
    def table(self) -> JobTable:
        from .db import get_engine, require_schema
        from .jobs import JobTable

        require_schema(self.settings)
        return JobTable(get_engine(self.settings), lease_timeout=self.settings.lease_timeout)

    @cached_property
    def models(self) -> ModelRegistry:
        from .db import get_engine, require_schema
        from .model_registry import ModelRegistry

        require_schema(self.settings)
        return ModelRegistry(get_engine(self.settings))

    @cached_property
    def store(self) -> ObjectStore:
        from .store import open_store

        return open_store(self.settings, self.patient)

    def job_key(self, job_id: str, name: str) -> str:
        return f"jobs/{job_id}/{name}"
