"""The one settings object: CGAN_* variables, embedded defaults, routes, secrets never shown."""
from __future__ import annotations

from scheduler.settings import Settings, redact_url
from worker.celery_app import make_app


def test_embedded_default(monkeypatch, tmp_path):
    monkeypatch.setenv("CGAN_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.embedded and settings.s3_bucket is None
    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path / 'cganctl.db'}"
    assert settings.describe()["object store"] == f"local folder {tmp_path / 'objects'}"


def test_environment_and_routes(monkeypatch):
    monkeypatch.setenv("CGAN_BROKER_URL", "redis://:hunter2@10.0.0.1:6379/0")
    monkeypatch.setenv("CGAN_DATABASE_URL", "postgresql+psycopg://u:pw-secret@db/cganctl")
    monkeypatch.setenv("CGAN_S3_BUCKET", "b")
    monkeypatch.setenv("CGAN_S3_SECRET_ACCESS_KEY", "s3-secret")
    monkeypatch.setenv("CGAN_ROUTES", '{"evaluate": "cpu"}')
    monkeypatch.setenv("CGAN_MAX_COUNT", "10")
    settings = Settings()
    assert not settings.embedded and settings.max_count == 10
    assert settings.queue_for("evaluate") == "cpu" and settings.queue_for("generate") == "gpu"
    shown = repr(settings) + str(settings.describe())
    for secret in ("hunter2", "pw-secret", "s3-secret"):
        assert secret not in shown
    conf = make_app(settings).conf
    assert conf.task_routes["cganctl.evaluate"] == {"queue": "cpu"}
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit > conf.task_soft_time_limit


def test_redact_url():
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
