"""What can be checked in deploy/ without a Docker engine or systemd."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SETTINGS_ENV = {f"CGAN_{name.upper()}" for name in Settings.model_fields}
COMPOSE_VARS = {"POSTGRES_PASSWORD": "pw", "CGAN_S3_ACCESS_KEY_ID": "key", "CGAN_S3_SECRET_ACCESS_KEY": "secret"}
# The settings every cganctl container needs to reach the shared services.
REQUIRED_ENV = {
    "CGAN_BROKER_URL", "CGAN_DATABASE_URL", "CGAN_S3_ENDPOINT_URL", "CGAN_S3_BUCKET",
    "CGAN_S3_ACCESS_KEY_ID", "CGAN_S3_SECRET_ACCESS_KEY", "CGAN_S3_REGION", "CGAN_DATA_DIR",
}


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def cganctl_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in doc["services"].items() if svc.get("image", "").startswith("cganctl")}


def test_required_env_are_settings() -> None:
    assert REQUIRED_ENV <= SETTINGS_ENV


def test_compose_services_and_env() -> None:
    doc = compose()
    assert {"redis", "postgres", "seaweedfs", "migrate", "worker-gpu", "worker-cpu"} <= set(doc["services"])
    ours = cganctl_services(doc)
    assert set(ours) == {"migrate", "worker-gpu", "worker-cpu"}
    for name, svc in ours.items():
        env = set(svc["environment"])
        assert env <= SETTINGS_ENV, f"{name}: unknown settings {env - SETTINGS_ENV}"
        assert REQUIRED_ENV <= env, f"{name}: missing {REQUIRED_ENV - env}"
    for name, svc in doc["services"].items():
        stray = {key for key in svc.get("environment", {}) if key.startswith("CGAN_")} - SETTINGS_ENV
        assert not stray, f"{name}: unknown settings {stray}"
    assert ours["migrate"]["command"] == ["db", "upgrade"]
    assert ours["worker-gpu"]["command"] == ["worker", "--queues", "gpu", "--pool", "solo"]
    assert ours["worker-cpu"]["command"] == ["worker", "--queues", "cpu"]
    devices = ours["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert ours["worker-gpu"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    seaweed = " ".join(doc["services"]["seaweedfs"]["command"])
    assert "-s3.config=" in seaweed and "-master.telemetry=false" in seaweed


def test_compose_interpolation_names_are_known() -> None:
    names = set(re.findall(r"\$\{(\w+)", (DEPLOY / "docker-compose.yml").read_text()))
    assert names <= set(COMPOSE_VARS)


def test_docker_compose_config() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client")
    if subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("docker client has no compose plugin")
    env = {**os.environ, **COMPOSE_VARS}
    done = subprocess.run(
        [docker, "compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 0, done.stderr


def test_env_example_names_are_settings() -> None:
    names = {
        line.split("=", 1)[0]
        for line in (DEPLOY / "cganctl.env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert names <= SETTINGS_ENV, names - SETTINGS_ENV
    assert REQUIRED_ENV <= names


def test_dockerfile_paths_exist() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "pip install torch==2.14.1 torchvision==0.29.1" in text
    assert "pip install -e" not in text  # the image runs the built wheel, not the source tree
    assert re.search(r"^RUN pip wheel --no-deps --wheel-dir /dist \.$", text, re.M)
    assert text.index("torch==2.14.1") < text.index('pip install "${wheel}')
    assert re.search(r"^COPY --from=wheel /dist ", text, re.M)
    assert 'ENTRYPOINT ["cganctl"]' in text
    for line in text.splitlines():
        if line.startswith(("COPY", "ADD")) and "--from=" not in line:
            *sources, _dest = line.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    # building the wheel needs what pyproject.toml names
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert (ROOT / project["readme"]).exists(), f"pyproject readme {project['readme']} is missing"
    assert "cganctl" in project["scripts"]


def test_systemd_unit() -> None:
    text = (DEPLOY / "cganctl-worker@.service").read_text()
    service = text.split("[Service]", 1)[1].split("[Install]", 1)[0]
    exec_start = [line for line in service.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_start) == 1
    assert re.search(r"cganctl worker .*--pool solo", exec_start[0])
    assert "--queues gpu" in exec_start[0]
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in service
    assert "EnvironmentFile=" in service
    assert "WantedBy=multi-user.target" in text


METRIC_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def defined_metrics() -> set[str]:
    """Every metric name the worker and the control plane define (literal names in their one module each)."""
    names: set[str] = set()
    for module in ("worker/metrics.py", "scheduler/metrics.py"):
        names |= set(re.findall(r'"(cganctl_[a-z_]+)"', (ROOT / module).read_text()))
    return names


def test_metric_names_follow_prometheus_conventions() -> None:
    names = defined_metrics()
    assert len(names) >= 15
    for name in names:
        assert re.fullmatch(r"cganctl_[a-z][a-z0-9_]*", name) and not name.endswith("_total"), name  # _total is added by the client
        assert not re.search(r"_(ms|milliseconds|minutes|hours|kb|mb|gb|percent)(_|$)", name), f"{name}: use base units"


def test_grafana_dashboard_uses_defined_metrics() -> None:
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "cganctl-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs
    defined = defined_metrics()
    used = {name for expr in exprs for name in re.findall(r"cganctl_[a-z0-9_]+", expr)}
    for name in used:
        base = next((name[: -len(s)] for s in METRIC_SUFFIXES if name.endswith(s) and name[: -len(s)] in defined), name)
        assert base in defined, f"dashboard uses undefined metric {name}"
    assert {"cganctl_queue_length", "cganctl_worker_images_generated", "cganctl_worker_gpu_memory_allocated_bytes"} <= {
        next((n[: -len(s)] for s in METRIC_SUFFIXES if n.endswith(s)), n) for n in used
    }
