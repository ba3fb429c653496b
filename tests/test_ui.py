"""`cganctl ui`: the dashboard's pages against a real job table (SQLite in a temporary data folder) and a
real object store (a local folder), with jobs made through the real Service / JobTable.

Starlette's TestClient drives the application in-process; the `cganctl ui` command itself runs as a
subprocess for the bind rules (loopback, token, taken port); one integration test reads the fleet and a
running job from real Redis, PostgreSQL, SeaweedFS and a Celery worker process. tests/test_ui_browser.py
opens the pages in headless Chromium.
"""
from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("starlette")
pytest.importorskip("jinja2")

from PIL import Image  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from harness.services import ROOT, cganctl  # noqa: E402
from scheduler.model_registry import ModelRegistry, builtin_model  # noqa: E402
from scheduler.runtime import Runtime  # noqa: E402
from scheduler.service import UNIT, Service  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from scheduler.specs import EvaluateSpec, GenerateSpec, TrainSpec  # noqa: E402
from scheduler.submission import GenerateRequest  # noqa: E402
from scheduler.ui.app import create_app  # noqa: E402

XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def _png(width: int, height: int, colour=(200, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def service(tmp_path, monkeypatch) -> Service:
    for name in [k for k in __import__("os").environ if k.startswith("CGAN_")]:
        monkeypatch.delenv(name)
    return Service(Runtime(Settings(data_dir=tmp_path / "data")))


@pytest.fixture
def client(service) -> TestClient:
    return TestClient(create_app(service), raise_server_exceptions=False)


def _create(service: Service, spec, queue: str = "gpu"):
    total = spec.steps if isinstance(spec, TrainSpec) else (spec.total if isinstance(spec, GenerateSpec) else None)
    return service.table.create(
        spec, queue=queue, priority=0, max_attempts=3, progress_total=total, progress_unit=UNIT[spec.kind],
        shard_counts=[spec.total] if isinstance(spec, GenerateSpec) else [],
    )


def _train_job_with_checkpoints(service: Service, steps=(2, 4), finish=True):
    """A train job as a worker leaves it: checkpoints with samples.png, loss.png and state.json, a model."""
    spec = TrainSpec(preset="mlp", dataset="/data/tiny", steps=steps[-1], batch_size=8, checkpoint_every=2, seed=0)
    job = _create(service, spec)
    table, store = service.table, service.runtime.store
    assert table.claim(job.id, "w1@host") == "ok"
    history = []
    for step in steps:
        history.append([step, 1.0 / step, 0.5 + step / 10])
        prefix = f"jobs/{job.id}/checkpoints/step-{step:07d}"
        store.put_bytes(f"{prefix}/samples.png", _png(40 + step, 30, (step * 40, 90, 160)), "image/png")
        store.put_bytes(f"{prefix}/loss.png", _png(64, 32), "image/png")
        store.put_bytes(f"{prefix}/state.json", json.dumps({"loss_history": history}).encode())
        store.put_bytes(f"{prefix}/generator.safetensors", b"not really weights")
        table.progress(job.id, step, total=steps[-1], info={"d_loss": history[-1][1], "g_loss": history[-1][2]})
    if finish:
        store.put_bytes(f"jobs/{job.id}/model/generator.safetensors", b"weights")
        model = ModelRegistry(table.engine).register(name="tiny-gan", kind="generator", job_id=job.id, weights_key=f"jobs/{job.id}/model/generator.safetensors",
                                     meta={"classes": ["airplane", "cat", "frog"], "steps": steps[-1], "config": {"preset": "mlp"}})
        last = f"jobs/{job.id}/checkpoints/step-{steps[-1]:07d}"
        table.succeed(job.id, metrics={"steps": steps[-1], "model": model.ref},
                      artifacts={"model": f"jobs/{job.id}/model/generator.safetensors", "checkpoint": last, "samples": f"{last}/samples.png"})
    return table.get(job.id)


def _evaluate(service: Service, model_ref: str, per_class: dict, label_accuracy=0.5, classifier_fid=12.5):
    job = _create(service, EvaluateSpec(model=model_ref, classifier="default-classifier:1", reference="/data/tiny", samples_per_class=4, inception=False), queue="cpu")
    service.table.claim(job.id, "w2@host")
    service.table.succeed(job.id, metrics={"label_accuracy": label_accuracy, "classifier_fid": classifier_fid, "per_class": per_class,
                                           "protocol": {"samples_per_class": 4}}, artifacts={})
    return service.table.get(job.id)


def _rows(html: str) -> list[str]:
    return re.findall(r'<a href="/jobs/([0-9a-f]{32})">', html)


# --- the job list ----------------------------------------------------------------------------------------
def test_job_list_pages_filters_and_bad_filters(service, client):
    made = []
    for i in range(120):
        spec = TrainSpec(preset="mlp", dataset="/data/tiny", steps=10, batch_size=8, checkpoint_every=5, seed=i)
        made.append(_create(service, spec, queue="gpu" if i % 2 else "cpu"))
    for job in made[:7]:
        service.table.claim(job.id, "w1@host")
        service.table.fail(job.id, "boom")
    service.table.claim(made[7].id, "w9@host")
    service.table.progress(made[7].id, 5, total=10)

    first = client.get("/")
    assert first.status_code == 200
    assert 'http-equiv="refresh"' in first.text
    seen = _rows(first.text)
    assert len(seen) == 50 and seen[0] == made[-1].id  # newest first
    assert ">120<" in first.text.replace(",", "")  # the total on the "all" pill
    cursor = re.search(r'href="\?after=([0-9a-f]+)"', first.text).group(1)
    while cursor:
        page = client.get(f"/?after={cursor}")
        assert page.status_code == 200
        seen += _rows(page.text)
        match = re.search(r'href="\?after=([0-9a-f]+)"', page.text)
        cursor = match.group(1) if match else None
    assert seen == [j.id for j in reversed(made)]  # every job once, in order
    back = client.get(f"/?before={seen[50]}")
    assert _rows(back.text) == seen[:50]

    failed = client.get("/?status=failed")
    assert sorted(_rows(failed.text)) == sorted(j.id for j in made[:7])
    running = client.get("/?status=running&kind=train")
    assert _rows(running.text) == [made[7].id]
    assert 'aria-valuenow="50"' in running.text and "5 / 10 steps" in running.text and "w9@host" in running.text
    assert _rows(client.get("/?kind=generate").text) == []

    for query, message in [
        ("status=bogus", "unknown status &#39;bogus&#39;"),
        ("kind=%3Cscript%3E", "unknown kind &#39;&lt;script&gt;&#39;"),
        ("limit=0", "limit must be a whole number from 1 to 500"),
        ("limit=abc", "limit must be a whole number"),
        ("after=zzz", "after must be a job id"),
        ("after=" + "0" * 32, "no job"),
        ("page=2", "unknown parameter &#39;page&#39;: the list reads status, kind, limit, after, before, refresh, token; the list pages"),
        ("stauts=failed", "unknown parameter &#39;stauts&#39;"),
        ("status=failed&status=running", "parameter &#39;status&#39; given 2 times: give it once"),
    ]:
        bad = client.get(f"/?{query}")
        assert bad.status_code == 400, query
        assert message in bad.text, (query, bad.text)
        assert "<script>" not in bad.text.split("</head>")[1].replace('<script src="/static/ui.js" defer></script>', "")


# --- job pages -------------------------------------------------------------------------------------------
def test_train_job_page_grid_slider_loss_and_scores(service, client):
    job = _train_job_with_checkpoints(service)
    evaluation = _evaluate(service, "tiny-gan:1", {"airplane": {"label_accuracy": 0.25}, "cat": {"label_accuracy": 0.75}, "frog": {"label_accuracy": 1.0}})
    page = client.get(f"/jobs/{job.id}")
    assert page.status_code == 200
    text = page.text
    latest = f"/jobs/{job.id}/files/checkpoints/step-0000004/samples.png"
    assert f'id="grid" class="shot grid" src="{latest}"' in text
    assert 'href="?step=2"' in text and 'href="?step=4"' in text and 'type="range"' in text
    assert 'aria-valuenow="100"' in text and "4 / 4 steps" in text
    assert "<polyline" in text and "d_loss" in text and "g_loss" in text  # the loss curve from state.json
    assert evaluation.id[:12] in text and "50.0%" in text and "12.5" in text  # scores against step
    assert 'id="eval-per-class"' in text and "75.0%" in text
    assert 'http-equiv="refresh"' not in text  # a finished job is not refreshed

    second = client.get(f"/jobs/{job.id}?step=2")
    assert f'src="/jobs/{job.id}/files/checkpoints/step-0000002/samples.png"' in second.text
    assert client.get(f"/jobs/{job.id}?step=3").status_code == 400

    image = client.get(latest)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (44, 30)
    prefix = client.get(f"/jobs/{job.id[:8]}")  # a unique prefix works like the CLI's
    assert prefix.status_code == 200 and job.id in prefix.text


def test_running_train_job_refreshes(service, client):
    job = _train_job_with_checkpoints(service, steps=(2,), finish=False)
    page = client.get(f"/jobs/{job.id}")
    assert 'http-equiv="refresh"' in page.text and "running" in page.text
    assert 'aria-valuenow="100"' in page.text  # 2 of 2 steps so far
    assert 'http-equiv="refresh"' not in client.get(f"/jobs/{job.id}?refresh=0").text


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A real generate job on the embedded default: the shipped model, a confidence filter, 2 classes."""
    import os

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CGAN_")}
    try:
        service = Service(Runtime(Settings(data_dir=tmp_path_factory.mktemp("gen") / "data")))
        spec = service.spec_for(GenerateRequest(labels=("cat", "frog"), count=20, min_confidence=0.3, seed=1, shard_size=10))
        job = service.submit(spec)
        service.finish_local()
        job = service.get(job.id)
        assert job.status == "succeeded", job.error
        yield service, job
    finally:
        os.environ.update(saved)


def test_generate_job_page(generated):
    service, job = generated
    client = TestClient(create_app(service), raise_server_exceptions=False)
    text = client.get(f"/jobs/{job.id}").text
    sheet = f"/jobs/{job.id}/files/contact-sheet.png"
    assert f'src="{sheet}"' in text
    assert client.get(sheet).headers["content-type"] == "image/png"
    classes = text.split('id="classes"')[1].split("</table>")[0]
    assert re.search(r"<td>cat</td><td class=\"num\">10</td><td class=\"num\">10</td>", classes), classes
    assert "%" in classes  # acceptance rates of the confidence filter
    manifest = text.split('id="manifest"')[1].split("</table>")[0]
    assert "webdataset" in manifest and "2 (" in manifest  # two shard files and their size
    model_used = text.split('id="model-used"')[1].split("</table>")[0]
    assert builtin_model("default").ref in model_used and "shipped with cganctl" in model_used and "2 succeeded" in model_used
    for shard in job.artifacts["shards"]:
        name = shard.split(f"jobs/{job.id}/", 1)[1]
        download = client.get(f"/jobs/{job.id}/files/{name}")
        assert download.status_code == 200 and download.headers["content-disposition"].startswith("attachment")
        assert download.headers["content-type"] == "application/octet-stream"
        assert download.content == service.runtime.store.get_bytes(shard)


def test_downloads_stay_inside_the_jobs_prefix(service, client):
    job = _train_job_with_checkpoints(service)
    other = _train_job_with_checkpoints(service)
    service.runtime.store.put_bytes("cache/reference-stats/secret.json", b"{}")
    own = f"/jobs/{job.id}/files/checkpoints/step-0000002/samples.png"
    assert client.get(own).status_code == 200
    for path in [
        f"/jobs/{job.id}/files/..%2F{other.id}%2Fcheckpoints%2Fstep-0000002%2Fsamples.png",
        f"/jobs/{job.id}/files/%2E%2E/%2E%2E/cache/reference-stats/secret.json",
        f"/jobs/{job.id}/files/checkpoints//step-0000002/samples.png",
        f"/jobs/{job.id}/files/nothing-here.png",
        f"/jobs/{job.id}/files/checkpoints",
        f"/jobs/{'f' * 32}/files/model/generator.safetensors",
    ]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("text/html")


def test_every_page_refuses_parameters_it_does_not_read(service, client):
    """A typo in an address (?stpe=2, ?refesh=0) is a 400 that names what the page reads, on every page,
    not the wrong page shown as if it were right; so is a parameter given twice."""
    job = _train_job_with_checkpoints(service)
    grid = f"/jobs/{job.id}/files/checkpoints/step-0000004/samples.png"
    for path, reads in [
        (f"/jobs/{job.id}?stpe=2", "unknown parameter &#39;stpe&#39;: a job&#39;s page reads step, refresh, token"),
        (f"/jobs/{job.id}?step=2&step=4", "parameter &#39;step&#39; given 2 times: give it once"),
        (f"{grid}?download=1", "unknown parameter &#39;download&#39;: a file reads refresh, token"),
        ("/models?sort=fid", "unknown parameter &#39;sort&#39;: the models page reads refresh, token"),
        ("/datasets?name=x", "unknown parameter &#39;name&#39;: the datasets page reads refresh, token"),
        ("/fleet?refesh=0", "unknown parameter &#39;refesh&#39;: the fleet page reads refresh, token"),
        ("/fleet?refresh=0&refresh=1", "parameter &#39;refresh&#39; given 2 times"),
    ]:
        bad = client.get(path)
        assert bad.status_code == 400, path
        assert reads in bad.text, (path, bad.text)
    for path in [f"/jobs/{job.id}?step=2", f"/jobs/{job.id}?refresh=0", grid, "/models", "/datasets?refresh=0", "/fleet?refresh=0"]:
        assert client.get(path).status_code == 200, path


def test_unknown_job_is_a_404_page(service, client):
    for path in ["/jobs/" + "0" * 32, "/jobs/abc", "/jobs/not-an-id", "/jobs/%3Cscript%3E", "/nowhere"]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert "Not found" in response.text and "Traceback" not in response.text and "<script>" not in response.text.replace(
            '<script src="/static/ui.js" defer></script>', "")


def test_job_error_and_class_names_are_escaped(service, client):
    spec = TrainSpec(preset="mlp", dataset=XSS, steps=4, batch_size=8, checkpoint_every=2, seed=0)
    failed = _create(service, spec, queue="cpu")
    service.table.claim(failed.id, "w1@host")
    service.table.fail(failed.id, f"RuntimeError: bad class {XSS} & <img src=x onerror=alert(2)>")
    generate = _create(service, GenerateSpec(model="default:1", counts={XSS: 3, "<b>cat</b>": 2}))
    evaluation = _evaluate(service, "default:1", {XSS: {"label_accuracy": 0.5}, '"><img src=x onerror=alert(3)>': {"label_accuracy": 1.0}})

    for job in (failed, generate, evaluation):
        page = client.get(f"/jobs/{job.id}")
        assert page.status_code == 200
        body = page.text.split("<body>", 1)[1].replace('<script src="/static/ui.js" defer></script>', "")
        assert "<script" not in body and "<img src=x" not in body and "<b>cat</b>" not in body
        assert "onerror=alert" not in body or "&lt;img src=x onerror=alert" in body or "&#34;&gt;&lt;img" in body
    assert XSS_ESCAPED in client.get(f"/jobs/{failed.id}").text  # the error and the dataset
    assert "&amp; &lt;img src=x onerror=alert(2)&gt;" in client.get(f"/jobs/{failed.id}").text
    assert XSS_ESCAPED in client.get(f"/jobs/{generate.id}").text and "&lt;b&gt;cat&lt;/b&gt;" in client.get(f"/jobs/{generate.id}").text
    per_class = client.get(f"/jobs/{evaluation.id}").text.split('id="per-class"')[1].split("</table>")[0]
    assert f"<td>{XSS_ESCAPED}</td>" in per_class and "&#34;&gt;&lt;img src=x onerror=alert(3)&gt;" in per_class
    listing = client.get("/?status=failed").text
    assert failed.id[:12] in listing
    csp = client.get(f"/jobs/{failed.id}").headers["content-security-policy"]
    assert "script-src 'self'" in csp  # an injected inline script would not run even unescaped


def test_read_only_and_no_traceback(service):
    app = create_app(service)

    def explode(request):
        raise RuntimeError("secret detail /home/someone/.aws/credentials")

    app.router.routes.append(Route("/explode", explode))
    client = TestClient(app, raise_server_exceptions=False)
    job = _train_job_with_checkpoints(service)
    for method in ("post", "put", "delete", "patch"):
        response = getattr(client, method)(f"/jobs/{job.id}")
        assert response.status_code == 405 and "read-only" in response.text
    boom = client.get("/explode")
    assert boom.status_code == 500
    assert "secret detail" not in boom.text and "Traceback" not in boom.text and "RuntimeError" not in boom.text
    assert "Something went wrong" in boom.text
    assert service.table.get(job.id).status == "succeeded"  # nothing changed


def test_token_gate(service):
    assert "tok-123" not in repr(Settings(ui_token="tok-123")) and Settings(ui_token="").ui_token is None
    client = TestClient(create_app(service, token="tok-123"), raise_server_exceptions=False)
    job = _train_job_with_checkpoints(service)
    denied = client.get("/")
    assert denied.status_code == 401 and "CGAN_UI_TOKEN" in denied.text and "tok-123" not in denied.text
    assert client.get(f"/jobs/{job.id}/files/checkpoints/step-0000002/samples.png").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer tok-123"}).status_code == 200

    login = client.get(f"/jobs/{job.id}?token=tok-123&step=2", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == f"/jobs/{job.id}?step=2"
    assert "httponly" in login.headers["set-cookie"].lower() and "samesite=strict" in login.headers["set-cookie"].lower()
    after = client.get(f"/jobs/{job.id}?step=2")  # the cookie from the login
    assert after.status_code == 200 and "step-0000002" in after.text
    bookmarked = client.get("/?token=tok-123&status=succeeded", follow_redirects=False)  # signed in, token left in the link
    assert bookmarked.status_code == 200 and job.id in bookmarked.text


def test_models_and_fleet_pages(service, client):
    job = _train_job_with_checkpoints(service)
    _evaluate(service, "tiny-gan:1", {"cat": {"label_accuracy": 0.75}}, label_accuracy=0.625, classifier_fid=3.5)
    queued = _create(service, TrainSpec(preset="mlp", dataset="/d", steps=5, batch_size=8, checkpoint_every=5, seed=0), queue="gpu")
    running = _create(service, TrainSpec(preset="mlp", dataset="/d", steps=5, batch_size=8, checkpoint_every=5, seed=1), queue="cpu")
    service.table.claim(running.id, "inline@box:42")

    models = client.get("/models").text
    row = models.split("<b>tiny-gan:1</b>")[1].split("</tr>")[0]
    assert job.id[:12] in row and "62.5%" in row and "3.5" in row and "mlp" in row
    assert "<b>default:1</b>" in models and "<b>default-classifier:1</b>" in models and "shipped" in models
    assert "<b>default-classifier:1</b></td>" in models and "84.1% test" in models.split("<b>default-classifier:1</b>")[1].split("</tr>")[0]
    from scheduler.model_registry import BUILTIN_FILES

    newest = models.split(f"<b>default:{len(BUILTIN_FILES['default'])}</b>")[1].split("</tr>")[0]
    assert newest.startswith(' <span class="muted">= default</span>'), newest  # what --model default gets
    shipped = models.split("<b>default:1</b>")[1].split("</tr>")[0]
    assert "not evaluated here" in shipped and "cganctl submit evaluate --model default:1" in shipped

    fleet = client.get("/fleet")
    assert fleet.status_code == 200
    services = fleet.text.split('id="services"')[1].split("</table>")[0]
    assert services.count(">ok<") == 3  # broker (in-process), database, object store
    queues = fleet.text.split('id="queues"')[1].split("</table>")[0]
    assert re.search(r"<td>gpu</td><td class=\"num\">1</td><td class=\"num\">0</td>", queues), queues
    assert re.search(r"<td>cpu</td><td class=\"num\">0</td><td class=\"num\">1</td>", queues), queues
    workers = fleet.text.split('id="workers"')[1].split("</table>")[0]
    assert "inline@box:42" in workers and running.id[:12] in workers
    assert queued.id[:12] not in workers


def test_datasets_page(service, client, tmp_path):
    from harness.datasets import tiny_image_folder
    from scheduler import datasets

    empty = client.get("/datasets")
    assert empty.status_code == 200 and "No datasets registered" in empty.text and "cganctl datasets add NAME" in empty.text
    tree = tmp_path / "tree"
    tiny_image_folder(tree / "train", per_class=4)
    tiny_image_folder(tree / "test", per_class=2)
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=".")
    entry = datasets.add(service.runtime.store, service.runtime.settings, "tiny", archive)
    page = client.get("/datasets").text
    row = page.split("<b>tiny</b>")[1].split("</tbody>")[0]
    cells = re.findall(r'<td class="num">(\d+)</td>', row)
    assert cells[:2] == ["12", "6"], row  # train and test images
    assert re.findall(r'<td>(\w+)</td><td class="num" title="train">4</td><td class="num" title="test">2</td>', row) == ["airplane", "cat", "frog"]
    assert "tiny.tar.gz" in row and entry.key[:40] in row and 'class="on">Datasets' in page


def test_database_down_is_a_503_page_and_the_fleet_page_says_so(tmp_path, monkeypatch):
    for name in [k for k in __import__("os").environ if k.startswith("CGAN_")]:
        monkeypatch.delenv(name)
    down = Settings(data_dir=tmp_path / "data", database_url="postgresql+psycopg://postgres@127.0.0.1:9/cganctl")  # nothing listens on 9
    client = TestClient(create_app(settings=down), raise_server_exceptions=False)
    for path in ("/", "/models", "/jobs/0123456789abcdef"):
        page = client.get(path)
        assert page.status_code == 503 and "A service is unavailable" in page.text, (path, page.status_code)
        assert "127.0.0.1" in page.text and "Traceback" not in page.text
    fleet = client.get("/fleet?refresh=0")
    assert fleet.status_code == 200 and "Unknown: the database did not answer." in fleet.text
    services = fleet.text.split('id="services"')[1].split("</table>")[0]
    assert services.count(">ok<") == 2 and "is unreachable" in services  # broker (in-process) and store ok; database down


# --- the command -----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_does_not_import_the_web_stack():
    code = (
        "import sys\nfrom scheduler.cli import app\n"
        "try:\n    app(['ui', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', [m for m in ('starlette', 'jinja2', 'uvicorn', 'torch', 'sqlalchemy') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "--port" in out and "CGAN_UI_TOKEN" in out


def test_missing_extra_is_one_error_line(embedded_env):
    code = "import sys\nsys.modules['starlette'] = None\nsys.argv = ['cganctl', 'ui']\nfrom scheduler.cli import main\nmain()\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=embedded_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: the dashboard needs the 'ui' extra (starlette is missing): pip install 'cganctl[ui]'"]


def test_non_loopback_needs_a_token(embedded_env):
    result = cganctl(embedded_env, "ui", "--host", "0.0.0.0", "--port", str(_free_port()), timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: binding to 0.0.0.0 (not loopback) needs a token: set CGAN_UI_TOKEN"), result.stderr
    for weak, said in [("a", "CGAN_UI_TOKEN has 1 characters; use at least 16"), (" " * 20, "has 20 characters with spaces at an end"),
                       ("CHANGE-ME", "(the placeholder of deploy/k8s/secret.yaml)")]:
        result = cganctl(dict(embedded_env, CGAN_UI_TOKEN=weak), "ui", "--host", "0.0.0.0", "--port", str(_free_port()), timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "needs a token that is hard to guess" in lines[0] and said in lines[0], result.stderr


def test_taken_port_is_exit_3(embedded_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = cganctl(embedded_env, "ui", "--port", str(port), timeout=60)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [f"error: port {port} on 127.0.0.1 is already in use; pick another with --port"]
    bad = cganctl(embedded_env, "ui", "--port", "70000", timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == ["error: --port must be from 1 to 65535, not 70000"]


def test_served_with_a_token_on_all_interfaces(embedded_env, tmp_path):
    port = _free_port()
    env = dict(embedded_env, CGAN_UI_TOKEN="t0ken-value-0123456789")
    log = open(tmp_path / "ui.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "scheduler", "ui", "--host", "0.0.0.0", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "ui.log").read_text()
                time.sleep(0.2)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Authorization": "Bearer t0ken-value-0123456789"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200 and "Jobs" in response.read().decode()
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    output = (tmp_path / "ui.log").read_text()
    assert f"on http://0.0.0.0:{port}/" in output and "needs the CGAN_UI_TOKEN token" in output
    assert "t0ken-value-0123456789" not in output and "Traceback" not in output


# --- the fleet: real Redis, PostgreSQL, SeaweedFS and a Celery worker process --------------------------
@pytest.mark.integration
def test_fleet_and_job_pages_on_real_services(fleet_env, start_worker, tmp_path):
    from harness.services import settings_from_env
    from scheduler import db

    settings = settings_from_env(fleet_env)
    db.upgrade(settings)
    service = Service(Runtime(settings))
    data = tmp_path / "data" / "datasets" / "tiny"  # under the fleet's dataset root
    for c, name in enumerate(("airplane", "cat", "frog")):
        (data / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (32, 32), (40 + 80 * c, 200 - 60 * c, (37 * i) % 255)).save(data / name / f"{i}.png")
    worker = start_worker("uiw1", queues="uitest,cpu")  # a queue of its own: other tests share this job table
    client = TestClient(create_app(service), raise_server_exceptions=False)
    idle = client.get("/fleet").text
    assert idle.split('id="services"')[1].split("</table>")[0].count(">ok<") == 3
    row = idle.split('id="workers"')[1].split("</table>")[0]
    assert re.search(r"uiw1@\S*</td>\s*<td>cpu, uitest</td>\s*<td class=\"num\">0</td>", row), row  # answered: queues, no task
    running = service.submit(TrainSpec(preset="mlp", dataset=str(data), steps=1_000_000, batch_size=8, checkpoint_every=20), queue="uitest")
    waiting = service.submit(TrainSpec(preset="mlp", dataset=str(data), steps=10, batch_size=8, checkpoint_every=5), queue="nobody")
    behind = service.submit(TrainSpec(preset="mlp", dataset=str(data), steps=10, batch_size=8, checkpoint_every=5), queue="uitest")
    store = service.runtime.store
    try:
        deadline = time.monotonic() + 120
        while not store.exists(f"jobs/{running.id}/checkpoints/latest.json"):
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)
        fleet = client.get("/fleet")
        assert fleet.status_code == 200
        workers = fleet.text.split('id="workers"')[1].split("</table>")[0]
        assert "uiw1@" in workers and running.id[:12] in workers, workers  # what it runs, from the job table
        assert "busy: a --pool solo worker answers between tasks" in workers  # it cannot answer inspect mid-task
        queues = fleet.text.split('id="queues"')[1].split("</table>")[0]
        # 'nobody' is marked: no worker answered for it and none runs a job from it (hedged: the busy solo worker did not
        # answer, so its queues are unknown); 'uitest' runs one, so it is served
        assert re.search(r"<td>nobody <span class=\"badge no\" title=\"[^\"]*did not answer consumes it: uiw1@[^\"]*\">no answering worker</span></td>"
                         r"<td class=\"num\">1</td><td class=\"num\">0</td>", queues), queues
        assert re.search(r"<td>uitest</td><td class=\"num\">1</td><td class=\"num\">1</td>", queues), queues
        from scheduler.health import check_all

        report = check_all(settings)
        assert report["unserved"].get("nobody") == 1 and "uitest" not in report["unserved"], report
        assert [n for n in report["silent"] if n.startswith("uiw1@")], report  # busy: did not answer
        assert service.queue_served("nobody")  # unsure while a worker is silent: a --wait does not warn

        page = client.get(f"/jobs/{running.id}")  # checkpoints listed and served from S3
        assert page.status_code == 200 and 'http-equiv="refresh"' in page.text
        grid = re.search(r'id="grid" class="shot grid" src="([^"]+)"', page.text).group(1)
        image = client.get(grid)
        assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get(f"/jobs/{running.id}/files/..%2F{waiting.id}%2Fspec.json").status_code == 404
    finally:
        service.cancel(running.id)
        service.cancel(waiting.id)
        service.cancel(behind.id)
    deadline = time.monotonic() + 60
    while service.get(running.id).status != "cancelled":
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.5)


def test_fleet_page_and_status_name_work_whose_lease_ran_out(fleet_env, tmp_path):
    """A worker that died mid-job with no other worker left to reconcile: the job stays 'running' in the
    table; the fleet page and `cganctl status` name it, its worker and how long it has been silent."""
    from datetime import timedelta

    from sqlalchemy import update

    from harness.services import cganctl, settings_from_env
    from scheduler import db
    from scheduler.health import check_all

    settings = settings_from_env(fleet_env)
    db.upgrade(settings)
    service = Service(Runtime(settings))
    job = _create(service, TrainSpec(preset="mlp", dataset="/d", steps=5, batch_size=8, checkpoint_every=5, seed=3), queue="ghostq")
    assert service.table.claim(job.id, "ghost@box", "ghost-task:0") == "ok"
    past = db.utcnow() - timedelta(seconds=90)
    with service.table.engine.begin() as c:  # what a SIGKILLed worker leaves: its last renewal 90 s ago
        c.execute(update(db.Job).where(db.Job.id == job.id).values(lease_expires_at=past, heartbeat_at=past - timedelta(seconds=45)))
    try:
        rows = [r for r in check_all(settings)["expired"] if r["job"] == job.id]
        assert rows and rows[0]["worker"] == "ghost@box" and rows[0]["shard"] is None and rows[0]["silent_s"] >= 135, rows
        assert service.table.expired_leases(job_id=job.id) == rows and service.table.expired_leases(job_id="0" * 32) == []
        page = TestClient(create_app(service), raise_server_exceptions=False).get("/fleet").text
        expired = page.split('id="expired"')[1].split("</p>")[0]
        assert f'href="/jobs/{job.id}">{job.id[:12]}</a> on ghost@box (no heartbeat for' in expired, expired
        ghost = page.split('id="workers"')[1].split("</table>")[0].split("ghost@box")[1].split("</td>")[0]
        assert "(no heartbeat: its lease ran out, gone or hung)" in ghost and "busy" not in ghost, ghost  # as `status` says: not busy
        status = cganctl(fleet_env, "status", timeout=120)
        line = next(line for line in status.stdout.splitlines() if job.id[:12] in line)
        assert line.startswith(f"warning: job {job.id[:12]} running on ghost@box: no heartbeat for") and "its lease ran out" in line, line
        assert "ghost@box" not in status.stdout.split("warning:")[0]  # not listed as a busy worker: it is gone
        shown = " ".join(cganctl(fleet_env, "jobs", "show", job.id, timeout=120).stdout.split())  # the grid wraps
        assert "lease job" in shown and "running on ghost@box: no heartbeat for" in shown and "start one (cganctl worker)" in shown, shown
    finally:
        service.table.fail(job.id, "test over")


def test_embedded_a_job_whose_process_died_is_failed_by_the_pages_and_status(service, client):
    """The dashboard and `cganctl status` look for it as the jobs commands do; it read 'running' until one ran."""
    import socket
    import subprocess
    import sys

    from scheduler.health import check_all

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid of this host that no longer runs
    job = _create(service, TrainSpec(preset="mlp", dataset="/d", steps=5, batch_size=8, checkpoint_every=5, seed=0))
    assert service.table.claim(job.id, f"inline@{socket.gethostname()}:{gone.pid}", "t:0") == "ok"
    assert service.table.live_leases(job.id)  # its lease (45 s) has not run out
    from datetime import timedelta

    from sqlalchemy import update

    from scheduler import db

    beat = db.utcnow() - timedelta(minutes=10)
    with service.table.engine.begin() as c:  # its last sign of life, 10 minutes before anyone looked
        c.execute(update(db.Job).where(db.Job.id == job.id).values(heartbeat_at=beat, started_at=beat - timedelta(seconds=7)))
    page = client.get(f"/jobs/{job.id}")
    failed = service.table.get(job.id)
    assert page.status_code == 200 and failed.status == "failed"
    assert "the process running it stopped" in page.text
    assert abs((failed.finished_at - beat).total_seconds()) < 1  # it ran 7 s, not the 10 minutes until noticed

    other = _create(service, TrainSpec(preset="mlp", dataset="/d", steps=5, batch_size=8, checkpoint_every=5, seed=1))
    assert service.table.claim(other.id, f"inline@{socket.gethostname()}:{gone.pid}", "t:1") == "ok"
    report = check_all(service.runtime.settings)
    assert [line.split(":")[0] for line in report["abandoned"]] == [f"job {other.id}"] and service.table.get(other.id).status == "failed"


def test_a_job_page_says_what_the_cli_says(service, client):
    """Units as the CLI gives them, the protocol beside the scores, the retry of a failed job, no file promised
    by a job that ended without it, a classifier's own next step, names as written."""
    evaluation = _create(service, EvaluateSpec(model="default:1", classifier="default-classifier:1", reference="/data/tiny", samples_per_class=4,
                                               inception=False, downstream=True), queue="cpu")
    service.table.claim(evaluation.id, "w2@host")
    protocol = {"num_samples": 40, "samples_per_class": 4, "reference_images": 100, "seed": 0,
                "feature_extractors": {"classifier": {"description": "penultimate features (128-d)"}}}
    service.table.succeed(evaluation.id, artifacts={}, metrics={
        "label_accuracy": 0.75, "cas_accuracy": 0.105, "augmentation_gain": 0.035, "classifier_fid": 11.26, "protocol": protocol,
        "per_class": {"na\u00efve": {"label_accuracy": 0.8, "augmentation_baseline": 0.45, "augmentation_augmented": 0.4, "augmentation_gain": -0.05}}})
    page = client.get(f"/jobs/{evaluation.id}").text
    metrics = page.split('id="metrics"')[1]
    assert "75.0%" in metrics and "10.5%" in metrics and "+3.5 points" in metrics and "11.26" in metrics
    assert "45.0%" in metrics and "40.0%" in metrics and "-5.0 points" in metrics  # per class: no bare fractions
    assert "Scored on 40 generated samples (4 a class, seed 0) against 100 reference images" in metrics

    failed = _create(service, GenerateSpec(model="default:1", counts={"cat": 20}, shard_size=10))
    service.table.request_cancel(failed.id)
    retry = service.retry(failed.id)
    from scheduler.errors import InvalidInput

    with pytest.raises(InvalidInput, match=f"job {failed.id} was already retried as {retry.id} \\(.+\\): watch that one"):
        service.retry(failed.id)  # a second retry would run the same work twice
    page = client.get(f"/jobs/{failed.id}").text
    assert f'href="/jobs/{retry.id}">{retry.id[:12]}</a>' in page.split('id="retries"')[1]
    assert "Written when the last shard is in" not in page and "Not written: the job ended cancelled" in page

    classifier = _create(service, TrainSpec(preset="classifier", dataset="/data/tiny", steps=2, batch_size=8, checkpoint_every=1, seed=0))
    service.table.claim(classifier.id, "w1@host")
    service.table.succeed(classifier.id, artifacts={}, metrics={"model": "clf:1", "accuracy": 0.49,
                                                                "test": {"accuracy": 1.0, "count": 30, "per_class": {"na\u00efve": 1.0}}})
    page = client.get(f"/jobs/{classifier.id}").text
    assert "cganctl submit evaluate --model GENERATOR --classifier clf:1" in page and "cganctl submit evaluate --model clf:1" not in page
    assert "test accuracy 100.0%" in page and "Label accuracy against step" not in page
    assert "na\u00efve" in page and "\\u00ef" not in page


def test_charts_label_fractions_as_percent_and_steps_as_whole_numbers():
    from scheduler.ui.charts import line_chart

    chart = line_chart({"label accuracy": [(40, 1 / 3)]}, percent=True)
    assert chart["lines"][0]["last"] == "33.3%" and all(t["label"].endswith("%") for t in chart["y_ticks"])
    assert [t["label"] for t in chart["x_ticks"]] == ["39", "40", "41"]  # one point: no tick at step 39.5
    assert line_chart({"loss": [(0.5, 2.0), (1.5, 1.0)]})["x_ticks"][0]["label"] == "0.5"  # fractional x keeps its ticks
