"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright), against
`cganctl ui` running as a subprocess over a job table filled by real jobs on the embedded default:
a tiny GAN and classifier trained on made-up images, an evaluate job scoring the GAN, a generate job.

Checks what a person sees: the job list with its progress bars, the train job's sample grid loaded
(naturalWidth > 0) and its step slider, the progress bar, the per-class table. Screenshots go to
``$CGAN_UI_SCREENSHOTS`` when set (the README's come from ``CGAN_UI_SCREENSHOTS=docs/screenshots``),
else to the test's temporary folder. Skipped when chromium or playwright is not installed.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from harness.services import ROOT, cganctl

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (Debian package 'chromium')", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("starlette")

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def _tiny_dataset(root: Path, classes=("airplane", "cat", "frog"), per_class=8) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (32, 32), (40 + 80 * c, 200 - 60 * c, (37 * i) % 255)).save(root / name / f"{i}.png")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(env, *args, status: str = "succeeded") -> dict:
    out = cganctl(env, "submit", *args, "--wait", "--json", timeout=600).stdout
    job = json.loads(out[out.index("{"):])
    assert job["status"] == status, job
    return job


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui-browser")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGAN_")}
    env.update(CGAN_DATA_DIR=str(tmp / "data"), OMP_NUM_THREADS="1")
    data = str(_tiny_dataset(tmp / "tiny"))
    small = ["--steps", "4", "--checkpoint-every", "2", "--batch-size", "8"]
    jobs = {
        "classifier": _job(env, "train", "--preset", "classifier", "--dataset", data, *small, "--name", "tiny-classifier"),
        "train": _job(env, "train", "--preset", "mlp", "--dataset", data, *small, "--name", "tiny-gan"),
    }
    jobs["evaluate"] = _job(env, "evaluate", "--model", "tiny-gan:1", "--classifier", "tiny-classifier:1", "--reference", data,
                            "--samples-per-class", "4", "--no-inception")
    broken = _tiny_dataset(tmp / "broken")
    (broken / "cat" / "9.png").write_bytes(b"<b>not</b> an image")
    jobs["failed"] = _job(env, "train", "--preset", "mlp", "--dataset", str(broken), *small, status="failed")
    jobs["generate"] = _job(env, "generate", "--model", "tiny-gan:1", "--label", "cat", "--label", "frog", "--count", "16")
    with tarfile.open(tmp / "tiny.tar.gz", "w:gz") as tar:
        tar.add(data, arcname="train")
    cganctl(env, "datasets", "add", "tiny-set", str(tmp / "tiny.tar.gz"), check=True)
    port = _free_port()
    log = open(tmp / "ui.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "scheduler", "ui", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/", timeout=5).read()
                break
            except (urllib.error.URLError, OSError):
                assert server.poll() is None and time.monotonic() < deadline, (tmp / "ui.log").read_text()
                time.sleep(0.2)
        yield base, jobs
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp / "ui.log").read_text()


@pytest.fixture
def browser_page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        yield page, problems
        context.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("CGAN_UI_SCREENSHOTS") or tmp_path / "screenshots")
    folder = folder if folder.is_absolute() else ROOT / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _shot(page, path: Path, full_page: bool = False) -> None:
    """A screenshot, stored as a 256-colour PNG so the committed ones stay small."""
    page.screenshot(path=str(path), full_page=full_page)
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def _image_loaded(page, selector: str, timeout_s: float = 30.0) -> int:
    """The image's width once it has loaded. Polled from here: wait_for_function's in-page polling evaluates a
    string, which the dashboard's CSP (script-src 'self') blocks whenever the image is not complete at once."""
    deadline = time.monotonic() + timeout_s
    while not page.eval_on_selector(selector, "img => img.complete"):
        assert time.monotonic() < deadline, f"{selector} did not load within {timeout_s} s"
        time.sleep(0.05)
    return page.eval_on_selector(selector, "img => img.naturalWidth")


def test_job_list_and_train_job_in_chromium(dashboard, browser_page, shots):
    base, jobs = dashboard
    page, problems = browser_page

    page.goto(base + "/?refresh=0")
    rows = page.locator("#jobs tbody tr")
    assert rows.count() == 5
    assert page.locator("#jobs .badge.succeeded").count() == 4 and page.locator("#jobs .badge.failed").count() == 1
    widths = page.eval_on_selector_all("#jobs .bar.succeeded > span", "spans => spans.map(s => s.getBoundingClientRect().width / s.parentElement.getBoundingClientRect().width)")
    assert len(widths) == 4 and all(w > 0.99 for w in widths), widths  # four full progress bars, drawn
    assert page.locator("#jobs .bar em").first.inner_text().strip() == "16 / 16 images"
    _shot(page, shots / "jobs.png")

    page.click(f"a[href='/jobs/{jobs['train']['id']}']")
    page.wait_for_load_state("load")
    assert page.url == f"{base}/jobs/{jobs['train']['id']}"
    assert _image_loaded(page, "#grid") > 0
    assert page.get_attribute("#grid", "src").endswith("/checkpoints/step-0000004/samples.png")
    bar = page.locator(".bar.big")
    assert bar.get_attribute("aria-valuenow") == "100" and bar.inner_text().strip() == "4 / 4 steps"
    assert page.locator("#step-slider").is_visible()  # the script ran and showed the slider
    page.fill("#step-slider input", "0")
    page.dispatch_event("#step-slider input", "input")
    assert page.get_attribute("#grid", "src").endswith("/checkpoints/step-0000002/samples.png")
    assert _image_loaded(page, "#grid") > 0 and page.inner_text("#step-label") == "2"
    page.fill("#step-slider input", "1")
    page.dispatch_event("#step-slider input", "input")
    assert _image_loaded(page, "#grid") > 0 and page.inner_text("#step-label") == "4"
    page.eval_on_selector("#step-slider input", "input => input.blur()")

    table = page.locator("#per-class")
    assert table.is_visible()
    assert [c.strip() for c in table.locator("tbody td:first-child").all_inner_texts()] == ["airplane", "cat", "frog"]
    assert "label accuracy" in table.locator("thead").inner_text().lower()
    assert page.locator("#loss polyline").count() >= 1
    assert page.locator("#scores tbody tr, #scores table tr").count() >= 2
    _shot(page, shots / "train-job.png", full_page=True)

    page.goto(f"{base}/jobs/{jobs['generate']['id']}")
    assert _image_loaded(page, "#contact-sheet img") > 0
    _shot(page, shots / "generate-job.png", full_page=True)
    page.goto(f"{base}/models")
    assert page.locator("#models").inner_text().count("tiny-") >= 2
    _shot(page, shots / "models.png")
    page.goto(f"{base}/jobs/{jobs['failed']['id']}")
    assert "'cat/9.png' is not an image that can be read" in page.inner_text("#error")
    page.goto(f"{base}/datasets")
    page.click("#datasets summary")
    assert page.locator("#datasets table.counts").inner_text().split() == ["airplane", "8", "cat", "8", "frog", "8"]
    _shot(page, shots / "datasets.png")
    page.goto(f"{base}/fleet?refresh=0")
    assert page.locator("#services .badge.ok").count() == 3
    _shot(page, shots / "fleet.png")
    assert problems == [], problems  # no script error, no blocked resource
