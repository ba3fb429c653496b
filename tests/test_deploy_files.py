"""What can be checked in deploy/ without a Docker engine or systemd."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SETTINGS_ENV = {f"CGAN_{name.upper()}" for name in Settings.model_fields}
COMPOSE_VARS = {"POSTGRES_PASSWORD": "pw", "CGAN_S3_ACCESS_KEY_ID": "key", "CGAN_S3_SECRET_ACCESS_KEY": "secret", "CGAN_UI_TOKEN": "token"}
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
    assert set(ours) == {"migrate", "worker-gpu", "worker-cpu", "metrics", "ui"}
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
    for name in ("worker-gpu", "worker-cpu", "metrics"):
        probe = " ".join(ours[name]["healthcheck"]["test"])
        port = "9809" if name == "metrics" else ours[name]["environment"]["CGAN_METRICS_PORT"]
        assert f"http://127.0.0.1:{port}/metrics" in probe, name
    assert ours["metrics"]["command"] == ["metrics", "--port", "9809"]
    # the dashboard: opt-in, bound beyond loopback inside its container, so with the token; published on loopback
    assert ours["ui"]["profiles"] == ["ui"] and ours["ui"]["command"] == ["ui", "--host", "0.0.0.0", "--port", "8780"]
    assert "CGAN_UI_TOKEN" in ours["ui"]["environment"] and ours["ui"]["ports"] == ["127.0.0.1:8780:8780"]
    assert "Bearer" in " ".join(ours["ui"]["healthcheck"]["test"])
    assert "ui" in re.search(r"^ARG EXTRAS=(.*)$", (DEPLOY / "Dockerfile").read_text(), re.M).group(1).split(",")
    for name in ("worker-gpu", "worker-cpu"):  # warm shutdown has time to finish the longest task
        assert _seconds(ours[name]["stop_grace_period"]) > Settings().task_time_limit
    redis = doc["services"]["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"]) and "/data" in redis["command"]
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
    assert exec_start[0].endswith(" -n gpu%i@%H")  # one worker name per instance (systemd's %H: the host name)
    assert "EnvironmentFile=-/etc/cganctl/worker-%i.env" in service and "RestartPreventExitStatus=2" in service
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in service
    assert "EnvironmentFile=" in service
    assert "WantedBy=multi-user.target" in text
    # a stop waits out the longest task, like compose's stop_grace_period (a restart never cuts a task)
    grace = {svc.get("stop_grace_period") for svc in cganctl_services(compose()).values() if "worker" in str(svc.get("command", ""))}
    assert re.search(r"^TimeoutStopSec=(\d+)$", service, re.M).group(1) + "s" in grace, grace
    assert int(re.search(r"^TimeoutStopSec=(\d+)$", service, re.M).group(1)) > Settings().task_time_limit
    if shutil.which("systemd-analyze"):  # the unit parses (with a command that exists here)
        unit = Path(tempfile.mkdtemp()) / "cganctl-worker@.service"
        unit.write_text(text.replace("/opt/cganctl/venv/bin/cganctl", "/bin/true"))
        verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert verified.returncode == 0 and verified.stderr == "", verified.stderr


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


def used_metrics(exprs: list[str], where: str) -> set[str]:
    """The metrics (base names, as defined) that PromQL ``exprs`` read; each must be defined."""
    defined = defined_metrics()
    used = set()
    for name in {name for expr in exprs for name in re.findall(r"cganctl_[a-z0-9_]+", expr)}:
        base = next((name[: -len(s)] for s in METRIC_SUFFIXES if name.endswith(s) and name[: -len(s)] in defined), name)
        assert base in defined, f"{where} uses undefined metric {name}"
        used.add(base)
    return used


def test_grafana_dashboard_uses_defined_metrics() -> None:
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "cganctl-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs
    used = used_metrics(exprs, "dashboard")
    assert {"cganctl_queue_length", "cganctl_worker_images_generated", "cganctl_worker_gpu_memory_allocated_bytes"} <= used


ALERTS = DEPLOY / "prometheus" / "cganctl-alerts.yml"


def test_alert_rules_use_defined_metrics_and_the_settings_defaults() -> None:
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    used = used_metrics([rule["expr"] for rule in rules], ALERTS.name)
    assert {"cganctl_service_up", "cganctl_oldest_queued_job_age_seconds", "cganctl_worker_tasks_failed"} <= used
    for rule in rules:
        assert rule["alert"].startswith("Cganctl") and rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    expr = {rule["alert"]: rule["expr"] for rule in rules}
    defaults = Settings.model_fields
    assert f"> {defaults['task_time_limit'].default}" in expr["CganctlTaskRunningLong"]
    tested = set(re.findall(r"alertname: (\w+)", (ALERTS.parent / "cganctl-alerts.test.yml").read_text()))
    assert tested == set(expr), f"alerts without a promtool test case: {set(expr) - tested}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    for args in (["check", "rules", ALERTS.name], ["test", "rules", "cganctl-alerts.test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=ALERTS.parent, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def _seconds(duration: str) -> int:
    assert duration.endswith("s"), duration
    return int(duration[:-1])


K8S = DEPLOY / "k8s"
K8S_VERSION = "1.33"


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} twice"
            assert "namespace" not in doc["metadata"], f"{path.name}: manifests stay namespace-agnostic"
            objects[key] = doc
    return objects


def test_k8s_core_kinds_validate_against_the_api_schema() -> None:
    import kubernetes_validate

    objects = k8s_objects()
    core = {key: doc for key, doc in objects.items() if not doc["apiVersion"].startswith("keda.sh/")}
    assert {kind for kind, _ in core} == {"ConfigMap", "Secret", "Service", "StatefulSet", "Job", "Deployment"}
    for _key, doc in core.items():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any unknown or mistyped field
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    # every manifest but the Secret: applied once on its own, a re-apply of the kustomization never resets it
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", "secret.yaml"))


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


def test_k8s_settings_split_between_configmap_and_secret(monkeypatch) -> None:
    objects = k8s_objects()
    config = objects[("ConfigMap", "cganctl-config")]["data"]
    secret = objects[("Secret", "cganctl-secrets")]["stringData"]
    assert set(config) <= SETTINGS_ENV and set(secret) <= SETTINGS_ENV
    assert REQUIRED_ENV <= set(config) | set(secret)
    secret_names = {"CGAN_DATABASE_URL", "CGAN_BROKER_URL", "CGAN_S3_ACCESS_KEY_ID", "CGAN_S3_SECRET_ACCESS_KEY", "CGAN_UI_TOKEN"}
    assert set(secret) == secret_names and not secret_names & set(config)
    for name, value in {**config, **secret}.items():  # the values parse as the containers will read them
        monkeypatch.setenv(name, value)
    parsed = Settings()
    assert parsed.metrics_port == 9808 and parsed.routes == {}
    for (kind, name), doc in objects.items():
        if kind in ("Deployment", "Job"):
            container = _container(doc)
            refs = [next(iter(ref.values()))["name"] for ref in container["envFrom"]]
            assert refs == ["cganctl-config", "cganctl-secrets"], name
            assert not any(e["name"].startswith("CGAN_") for e in container.get("env", [])), f"{name}: settings come from the ConfigMap/Secret"
            assert container["image"] == "cganctl"


def test_k8s_workers_migration_and_metrics() -> None:
    objects = k8s_objects()
    config = objects[("ConfigMap", "cganctl-config")]["data"]
    assert _container(objects[("Job", "cganctl-migrate")])["args"] == ["db", "upgrade"]

    gpu = objects[("Deployment", "cganctl-worker-gpu")]
    args = _container(gpu)["args"]
    assert args[:5] == ["worker", "--queues", "gpu", "--pool", "solo"]
    assert _container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "replicas" not in gpu["spec"]  # KEDA owns it
    cpu = objects[("Deployment", "cganctl-worker-cpu")]
    assert _container(cpu)["args"][:5] == ["worker", "--queues", "cpu", "--pool", "solo"]
    assert "nvidia.com/gpu" not in _container(cpu)["resources"].get("limits", {})
    for worker in (gpu, cpu):
        pod = worker["spec"]["template"]["spec"]
        container = _container(worker)
        # SIGTERM is Celery's warm shutdown; the grace period lets the longest task finish
        assert pod["terminationGracePeriodSeconds"] > int(config["CGAN_TASK_TIME_LIMIT"])
        port = int(container["args"][container["args"].index("--metrics-port") + 1])
        assert port == int(config["CGAN_METRICS_PORT"]) == container["ports"][0]["containerPort"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
        assert "$(POD_NAME)" in " ".join(container["args"]) and container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    user = re.search(r"^USER (\d+):(\d+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    for (kind, name), doc in objects.items():  # runAsNonRoot needs the image's numeric user
        if kind in ("Deployment", "Job"):
            context = doc["spec"]["template"]["spec"]["securityContext"]
            assert context["runAsNonRoot"] and (str(context["runAsUser"]), str(context["runAsGroup"])) == user.groups(), name

    metrics = objects[("Deployment", "cganctl-metrics")]
    assert _container(metrics)["args"] == ["metrics", "--port", "9809"]
    service = objects[("Service", "cganctl-metrics")]
    assert service["spec"]["selector"] == metrics["spec"]["selector"]["matchLabels"] and service["spec"]["ports"][0]["port"] == 9809
    ui = objects[("Deployment", "cganctl-ui")]
    assert _container(ui)["args"] == ["ui", "--host", "0.0.0.0", "--port", "8780"]  # beyond loopback: the Secret's CGAN_UI_TOKEN
    assert objects[("Service", "cganctl-ui")]["spec"]["selector"] == ui["spec"]["selector"]["matchLabels"]


def test_k8s_redis_persists_append_only() -> None:
    objects = k8s_objects()
    redis = objects[("StatefulSet", "redis")]
    container = _container(redis)
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == data_dir
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == mount["name"]
    assert objects[("Service", "redis")]["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    broker = objects[("Secret", "cganctl-secrets")]["stringData"]["CGAN_BROKER_URL"]
    assert broker.startswith("redis://redis:6379/")


def test_keda_scaled_object_fields() -> None:
    """Checked against KEDA's documented ScaledObject and redis-scaler fields (keda.sh/v1alpha1)."""
    from scheduler.taskmessages import priority_lists

    objects = k8s_objects()
    (scaled,) = [doc for doc in objects.values() if doc["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    allowed = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
               "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
    assert set(spec) <= allowed, set(spec) - allowed
    target = spec["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cganctl-worker-gpu"}
    assert ("Deployment", target["name"]) in objects
    assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
    assert all(isinstance(spec[k], int) for k in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"))
    redis_fields = {"address", "addressFromEnv", "host", "port", "hostFromEnv", "portFromEnv", "listName", "listLength",
                    "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl", "usernameFromEnv", "passwordFromEnv"}
    lists = []
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis" and set(trigger) <= {"type", "metadata", "name", "authenticationRef", "metricType", "useCachedMetrics"}
        meta = trigger["metadata"]
        assert set(meta) <= redis_fields, set(meta) - redis_fields
        assert all(isinstance(value, str) for value in meta.values())  # KEDA metadata values are strings
        assert re.fullmatch(r"redis(\.[a-z0-9-]+)+:6379", meta["address"]), "FQDN: KEDA resolves it from its own namespace"
        assert int(meta["listLength"]) > 0 and meta["databaseIndex"] == "0"
        lists.append(meta["listName"])
    # every priority list kombu keeps for the gpu queue (scheduler.metrics.priority_lists is the one place)
    assert lists == priority_lists("gpu")


def test_readme_explains_every_metric() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in defined_metrics() if f"`{name}" not in readme)
    assert not missing, f"README's metric table lacks {missing}"
