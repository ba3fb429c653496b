"""The job table's schema (SQLAlchemy) and the engine. The schema itself comes only from Alembic.

``scheduler/migrations/versions`` (shipped in the wheel) creates these tables; :func:`upgrade` runs
Alembic to head and :func:`require_schema` refuses to work on a database that is not at head (on the
embedded SQLite default it upgrades by itself, so a new user's first command just works). The check
compares ``alembic_version`` with the head revision read from the version files: Alembic itself is
imported only when a migration runs.
"""
from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .errors import InvalidInput, ServiceRefused, ServiceUnavailable
from .records import aware_utc, utcnow  # noqa: F401  (re-exported: the ORM modules use them)
from .redact import reason
from .settings import Settings, redact_url

JsonType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    queue: Mapped[str] = mapped_column(String(64))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(255))
    progress_done: Mapped[int] = mapped_column(BigInteger, default=0)
    progress_total: Mapped[int | None] = mapped_column(BigInteger)
    progress_unit: Mapped[str | None] = mapped_column(String(16))
    progress_info: Mapped[dict | None] = mapped_column(JsonType)
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict | None] = mapped_column(JsonType)
    artifacts: Mapped[dict | None] = mapped_column(JsonType)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    retry_of: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    # leases (0002): the delivery running the job renews lease_expires_at every heartbeat
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Shard(Base):
    """One independently executed slice of a generate job."""

    __tablename__ = "job_shards"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    count: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    key: Mapped[str | None] = mapped_column(String(512))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)
    stats: Mapped[dict | None] = mapped_column(JsonType)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ServiceLease(Base):
    """A duty only one process performs at a time (the reconciler): held while ``expires_at`` is ahead."""

    __tablename__ = "service_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Model(Base):
    """A registered model version: a train job's exported weights in the object store."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    weights_key: Mapped[str] = mapped_column(String(512))
    meta: Mapped[dict] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


_fresh_connections = False


def prefer_fresh_connections() -> None:
    """For a long-lived reader (``cganctl metrics``, ``cganctl ui``): a new connection for each use, not a
    pooled one. A server that stops answering (frozen, or its host gone) holds a query on a pooled socket
    forever, where a new connection fails within ``connect_timeout``; a few milliseconds a use."""
    global _fresh_connections
    _fresh_connections = True


@lru_cache(maxsize=8)
def _engine_for(url: str, fresh: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if fresh:
        from sqlalchemy.pool import NullPool

        return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})


def get_engine(settings: Settings) -> Engine:
    """The engine of the job table; a data folder that cannot be made or a URL that does not parse is bad input."""
    if settings.sqlalchemy_url.startswith("sqlite"):
        settings.make_folder(settings.data_dir)
    try:
        return _engine_for(settings.sqlalchemy_url, _fresh_connections)
    except ArgumentError as exc:  # no URL, or no such dialect/driver: nothing to connect to
        raise InvalidInput(f"invalid setting CGAN_DATABASE_URL {redact_url(settings.sqlalchemy_url)}: {reason(exc)}") from None
    except ImportError as exc:  # a dialect whose driver is not installed (mysql://, postgresql:// via psycopg2)
        raise InvalidInput(
            f"invalid setting CGAN_DATABASE_URL {redact_url(settings.sqlalchemy_url)}: its driver is not installed ({exc}); "
            "use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"
        ) from None


def alembic_config(settings: Settings):
    """Alembic's config for the packaged migrations (found next to this module, never via the cwd)."""
    from alembic.config import Config

    from . import migrations

    config = Config(str(migrations.INI_FILE))
    config.set_main_option("script_location", str(migrations.DIRECTORY))
    config.attributes["sqlalchemy_url"] = settings.sqlalchemy_url
    return config


def upgrade(settings: Settings) -> str:
    """Run Alembic to head; returns the head revision."""
    from alembic import command

    config = alembic_config(settings)
    try:
        with get_engine(settings).begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise ServiceUnavailable(f"database {redact_url(settings.sqlalchemy_url)} failed: {reason(exc)}") from exc
    return head_revision(settings)


def head_revision(settings: Settings | None = None) -> str:
    """The newest migration's revision id (read from the packaged version files, no Alembic import)."""
    from .migrations import head_revision as packaged_head

    return packaged_head()


def current_revision(settings: Settings) -> str | None:
    """The database's Alembic revision, None on an empty database. One query on the hot path; the
    schema is inspected only when that query fails (no table yet, or the database is unreachable)."""
    from sqlalchemy.exc import DBAPIError

    try:
        with get_engine(settings).connect() as connection:
            try:
                return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except DBAPIError:
                connection.rollback()
                if connection.dialect.has_table(connection, "alembic_version"):
                    raise
                return None
    except SQLAlchemyError as exc:
        if _REFUSAL.search(str(getattr(exc, "orig", None) or exc)):  # the server answered: these settings will never do
            raise ServiceRefused(
                f"database {redact_url(settings.sqlalchemy_url)} refused the connection: {reason(exc)} (fix CGAN_DATABASE_URL)"
            ) from exc
        raise ServiceUnavailable(f"database {redact_url(settings.sqlalchemy_url)} is unreachable: {reason(exc)}") from exc


# What PostgreSQL says when it answers and refuses (a wrong user, password or database name): not an outage.
_REFUSAL = re.compile(
    r"password authentication failed|role \"[^\"]*\" does not exist|database \"[^\"]*\" does not exist|no pg_hba\.conf entry|"
    r"permission denied for database"
)


def require_schema(settings: Settings) -> None:
    """Make sure the schema is at head; SQLite (the embedded default) is upgraded in place."""
    if current_revision(settings) == head_revision(settings):
        return
    if settings.sqlalchemy_url.startswith("sqlite"):
        _upgrade_sqlite_once(settings)
        return
    raise ServiceUnavailable(
        f"the job table at {redact_url(settings.sqlalchemy_url)} is not at the current schema; run `cganctl db upgrade`"
    )


def _upgrade_sqlite_once(settings: Settings) -> None:
    """First use of a fresh data folder: several commands may start at once. One of them upgrades under
    an exclusive file lock; the others wait for it and then find the schema at head (issue 8)."""
    import fcntl

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / ".schema.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if current_revision(settings) != head_revision(settings):
                upgrade(settings)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

