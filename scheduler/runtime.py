"""What a command or a worker needs at run time: settings, the job table, the model registry and the object store."""
from __future__ import annotations

import dataclasses
from functools import cached_property

from .db import get_engine, require_schema
from .jobs import JobTable
from .model_registry import ModelRegistry
from .settings import Settings, get_settings
from .store import ObjectStore, open_store


@dataclasses.dataclass
class Runtime:
    settings: Settings

    @classmethod
    def create(cls, settings: Settings | None = None) -> "Runtime":
        return cls(settings or get_settings())

    @cached_property
    def table(self) -> JobTable:
        require_schema(self.settings)
        return JobTable(get_engine(self.settings), lease_timeout=self.settings.lease_timeout)

    @cached_property
    def models(self) -> ModelRegistry:
        require_schema(self.settings)
        return ModelRegistry(get_engine(self.settings))

    @cached_property
    def store(self) -> ObjectStore:
        return open_store(self.settings)

    def job_key(self, job_id: str, name: str) -> str:
        return f"jobs/{job_id}/{name}"
