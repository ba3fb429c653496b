"""One prepared GPU run (``scripts/gpu-run``): CUDA tests, training throughput, a wall-clock-bounded
training of the GPU default, generation timing, scoring; every result under ``--out`` (default ``$OUT``).

    scripts/gpu-run --train-minutes 4            # on one CUDA GPU: the real run, ends within --deadline-minutes
    scripts/gpu-run --smoke --out /tmp/smoke     # the same code on the CPU at tiny sizes (a test runs this)

Stages, in order (``--skip tests,bench,generate`` leaves some out):

(a) tests: ``pytest -m cuda tests/test_cuda.py`` in a subprocess; its summary goes into metrics.json.
(b) bench: training throughput of each GAN preset at batch 64 and 256 (smoke: 8 and 16), compile off
    and on (CUDA only), plus a plain eager fp32 loop of the same model (NCHW, fp32, default Adam,
    CPU-side random draws copied each step: the loop as one would first write it) for the hinge
    presets. Protocol: a warm-up run (compilation, cuDNN plans, allocator), then ``--bench-steps``
    generator steps timed between two ``torch.cuda.synchronize()``; G steps/s and real images/s
    through D (steps x batch x n_dis / s). Configurations are measured in priority order and skipped
    once ``--bench-seconds`` are spent (each skip is recorded). ``torch.backends.cudnn.benchmark`` is
    on for every variant.
(c) train: the ``biggan`` preset at batch 256, bf16, channels_last, compile chosen by (b) (``--compile
    auto``), continuing from the full training state in ``--checkpoint`` (default
    ``recipes/checkpoints/gpu-default``) when it holds one; a missing one starts fresh with a message,
    a corrupt one fails naming the file. Trains for ``--train-minutes`` or less: the whole run ends
    within ``--deadline-minutes`` (the later stages' time is reserved; (a) and (b) only use what the
    training leaves). A compiled training that fails starts again, eager, from the same checkpoint.
(d) generate: 50,000 frogs (``--gen-count``) with the shipped default model on this device: the
    generator's forward alone (batch 500, noise up front, timed between syncs), the product's embedded
    generate job (``python -m scheduler submit generate --label frog --count N --wait --json`` in a
    subprocess with a fresh ``CGAN_DATA_DIR``; launch to exit), and the PNG encoding + upload alone
    (``write_shard`` webdataset shards of 2,500 + ``put_bytes`` into a local-folder store, sequential, the
    images generated beforehand and not timed).
(e) score: the evaluate job's own metric code on this device: label accuracy by the shipped classifier
    and classifier-feature FID against the whole train split, ``--fid-samples`` samples (a class each
    1/10th, seed 0), for the trained generator and the shipped default; the trained generator's samples
    are written as uint8 ``samples-*.npz`` (images, labels, classes) for Inception FID on a CPU later
    (``bench/gpu_goals.py``).
(f) files, under ``--out`` and within the transfer rules (at most 8 files of at most 16 MiB, 64 MiB in
    all): ``summary.md``, ``metrics.json`` (rewritten after every stage), ``samples.png``,
    ``gpu-default.tar`` (exported EMA generator: .safetensors + .json), ``checkpoint-N.tar`` (the full
    training-state folder, split by file), ``samples-N.npz``. ``--unpack DIR`` puts a returned run's
    checkpoint back into ``--checkpoint`` and its generator next to it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from train_default import export, read_checkpoint, write_checkpoint  # recipes/ (this script's folder)

from cganmodel.devices import describe_device

ROOT = Path(__file__).resolve().parent.parent

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEFAULT_CHECKPOINT = ROOT / "recipes" / "checkpoints" / "gpu-default"
GPU_PRESET = "biggan"
MAX_FILES, MAX_FILE, MAX_TOTAL = 8, 16 * 2**20, 64 * 2**20
T0 = time.perf_counter()


def fail(message: str) -> None:
    """Bad input or a missing device: one ``error:`` line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {message}", flush=True)


class Run:
    """Sizes and places of one run (real or smoke) and the metrics written as it goes."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.smoke = args.smoke
        self.device = "cpu" if self.smoke else "cuda"
        self.out = args.out
        self.work = args.work
        self.deadline = args.deadline_minutes * 60
        self.metrics: dict = {
            "mode": "smoke (CPU, tiny sizes: not a measurement)" if self.smoke else "real",
            "device": "CPU (smoke)" if self.smoke else torch.cuda.get_device_name(0),
            "hardware": describe_device(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        # sizes: the smoke run uses the same code on tiny models and data
        self.bench_batches = (8, 16) if self.smoke else (64, 256)
        self.train_batch = 8 if self.smoke else 256
        self.gan_overrides = {"g_widths": (32, 32, 32, 32), "d_widths": (16, 32, 32, 32)} if self.smoke else {}

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - T0)

    def reserve(self) -> float:
        """Seconds kept for stages (d)-(f) after the training."""
        return 25.0 if self.smoke else self.args.reserve_seconds

    def spare(self) -> float:
        """Seconds (a) and (b) may still use without cutting the training budget."""
        return self.left() - self.args.train_minutes * 60 - self.reserve()

    def save_metrics(self) -> None:
        self.metrics["elapsed_s"] = round(time.perf_counter() - T0, 1)
        tmp = self.out / "metrics.json.tmp"
        tmp.write_text(json.dumps(self.metrics, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(self.out / "metrics.json")

    def gan_config(self, preset: str, classes: list[str]):
        from cganmodel.gan import GANConfig

        overrides = self.gan_overrides if preset in ("biggan", "resnet") else ({"g_widths": (32, 32, 64), "d_widths": (32, 32, 32)} if self.smoke else {})
        return GANConfig(preset=preset, num_classes=len(classes), classes=list(classes), **overrides)


# ------------------------------------------------------------------------------------------- data
def smoke_dataset(work: Path) -> Path:
    """A tiny CIFAR-shaped ImageFolder tarball (train/ and test/, the 10 CIFAR class names)."""
    import numpy as np
    from PIL import Image

    path = work / "smoke-data.tar.gz"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 16), ("test", 2)):
            for c, name in enumerate(CIFAR):
                for i in range(n):
                    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    img[..., c % 3] = 40 + 20 * c
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"smoke/{split}/{name}/{i}.png")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def find_data(args: argparse.Namespace) -> Path:
    if args.data:
        return args.data
    for candidate in (ROOT / "gpu-carry" / "cifar10-jpeg.tar.gz", ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"):
        if candidate.is_file():
            return candidate
    fail("no CIFAR-10 archive: pass --data, or run scripts/gpu-pack (it copies it into gpu-carry/)")


# ------------------------------------------------------------------------------------------- (a) tests
def stage_tests(run: Run) -> None:
    timeout = max(60.0, min(240.0, run.spare() - 30))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    log(f"(a) tests: {' '.join(cmd[2:])} (timeout {timeout:.0f} s)")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, output = "timeout", (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    lines = [line for line in output.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    run.metrics["tests"] = {"command": " ".join(cmd[2:]), "rc": rc, "summary": summary, "seconds": round(time.perf_counter() - start, 1),
                            "tail": "\n".join(lines[-40:])}
    log(f"(a) tests: rc {rc}: {summary}")


# ------------------------------------------------------------------------------------------- (b) bench
def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def measure_trainer(run: Run, data, preset: str, batch: int, variant: str) -> dict:
    """Warm-up, then ``bench_steps`` G steps of the product's Trainer, timed between syncs."""
    import torch

    from cganmodel.train import TrainConfig, Trainer

    warmup, steps = (1, 2) if run.smoke else (3, run.args.bench_steps)
    compiled = variant != "eager"
    torch._dynamo.reset()
    cfg = TrainConfig(preset=preset, steps=warmup, batch_size=batch, checkpoint_every=0, device=run.device,
                      compile=variant == "compile", log_every=max(warmup, 1))
    trainer = Trainer(run.gan_config(preset, data.classes), cfg, data)
    if variant == "cudagraphs":  # compile with CUDA graphs (inductor's "reduce-overhead")
        trainer.G.compile(mode="reduce-overhead")
        trainer.D.compile(mode="reduce-overhead")
    t = time.perf_counter()
    trainer.run()
    sync(run.device)
    warm_s = time.perf_counter() - t
    trainer.train_cfg.steps = warmup + steps
    trainer.train_cfg.log_every = steps
    t = time.perf_counter()
    trainer.run()
    sync(run.device)
    seconds = time.perf_counter() - t
    n_dis = trainer.train_cfg.n_dis or 1
    row = {"preset": preset, "batch": batch, "variant": variant, "compiled": compiled, "n_dis": n_dis, "steps": steps,
           "warmup_s": round(warm_s, 2), "seconds": round(seconds, 3), "g_steps_per_s": round(steps / seconds, 2),
           "real_images_per_s": round(steps * batch * n_dis / seconds, 1), "d_loss": trainer.history[-1][1]}
    del trainer
    return row


def measure_isolated(run: Run, preset: str, batch: int, variant: str) -> dict:
    """``measure_trainer`` in a subprocess (``--bench-one``): a failed CUDA-graph capture cannot poison
    this process's CUDA context, which the training still needs."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bench-one", f"{preset},{batch},{variant}", "--data", str(run.metrics["data"]["source"]),
           "--out", str(run.work / "bench-one"), "--bench-steps", str(run.args.bench_steps)] + (["--smoke"] if run.smoke else [])
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(min(120.0, run.spare()), 30.0))
    except subprocess.TimeoutExpired:
        return {"preset": preset, "batch": batch, "variant": variant, "error": "timed out (subprocess)"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {"preset": preset, "batch": batch, "variant": variant, "error": f"rc {proc.returncode}: {(proc.stderr or proc.stdout)[-400:]}"}


def bench_one(args: argparse.Namespace) -> None:
    """``--bench-one PRESET,BATCH,VARIANT``: one ``measure_trainer`` row as JSON on the last stdout line."""
    import torch

    from cganmodel.data import load_image_dataset

    preset, batch, variant = args.bench_one.split(",")
    if not args.smoke:
        torch.backends.cudnn.benchmark = True
    args.work = args.out
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(args)
    data = load_image_dataset(str(args.data), split="train")
    print(json.dumps(measure_trainer(run, data, preset, int(batch), variant)))


def measure_plain(run: Run, data, preset: str, batch: int) -> dict:
    """A plain eager fp32 loop of the same model and losses: NCHW, no autocast, default Adam, no compile,
    CPU-side random draws (indices, noise, labels, DiffAugment) copied to the device each step."""
    import torch
    import torch.nn.functional as F

    from cganmodel.diffaug import diff_augment
    from cganmodel.gan import build_discriminator, build_generator
    from cganmodel.imaging import to_float
    from cganmodel.presets import PRESETS

    d = PRESETS[preset].recipe
    dev = torch.device(run.device)
    cfg = run.gan_config(preset, data.classes)
    torch.manual_seed(0)
    G, D = build_generator(cfg).to(dev), build_discriminator(cfg).to(dev)
    ema = [p.detach().clone() for p in G.parameters()]
    opt_g = torch.optim.Adam(G.parameters(), lr=d["lr_g"], betas=d["betas"])
    opt_d = torch.optim.Adam(D.parameters(), lr=d["lr_d"], betas=d["betas"])
    images, labels = data.images.permute(0, 3, 1, 2).contiguous().to(dev), data.labels.to(dev)
    gen = torch.Generator().manual_seed(0)
    n, policy = len(labels), d["diffaug"]

    def step() -> None:
        for _ in range(d["n_dis"]):
            idx = torch.randint(n, (batch,), generator=gen).to(dev)
            real, y_real = to_float(images[idx]), labels[idx]
            z = torch.randn(batch, cfg.z_dim, generator=gen).to(dev)
            y = torch.randint(cfg.num_classes, (batch,), generator=gen).to(dev)
            with torch.no_grad():
                fake = G(z, y)
            out = D(diff_augment(torch.cat([real, fake]), policy, gen), torch.cat([y_real, y]))
            loss_d = F.relu(1 - out[:batch]).mean() + F.relu(1 + out[batch:]).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        z = torch.randn(batch, cfg.z_dim, generator=gen).to(dev)
        y = torch.randint(cfg.num_classes, (batch,), generator=gen).to(dev)
        loss_g = -D(diff_augment(G(z, y), policy, gen), y).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(G.parameters()), 0.001)

    warmup, steps = (1, 2) if run.smoke else (3, run.args.bench_steps)
    t = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(run.device)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(run.device)
    seconds = time.perf_counter() - t
    return {"preset": preset, "batch": batch, "variant": "plain-fp32", "compiled": False, "n_dis": d["n_dis"], "steps": steps,
            "warmup_s": round(warm_s, 2), "seconds": round(seconds, 3), "g_steps_per_s": round(steps / seconds, 2),
            "real_images_per_s": round(steps * batch * d["n_dis"] / seconds, 1)}


def bench_plan(run: Run) -> list[tuple[str, int, str]]:
    """(preset, batch, variant) in priority order: the GPU preset first, compiled small presets last."""
    big, small = max(run.bench_batches), min(run.bench_batches)
    plan = []
    for batch in (big, small):
        plan += [(GPU_PRESET, batch, "eager"), (GPU_PRESET, batch, "plain-fp32"), (GPU_PRESET, batch, "compile")]
    plan += [(GPU_PRESET, big, "cudagraphs")]
    for preset in ("resnet", "mlp"):
        plan += [(preset, big, "eager"), (preset, small, "eager")]
    plan += [("resnet", big, "plain-fp32")]
    for preset in ("resnet", "mlp"):
        plan += [(preset, big, "compile"), (preset, small, "compile")]
    return plan


def stage_bench(run: Run, data) -> None:
    import torch

    budget = 20.0 if run.smoke else run.args.bench_seconds
    log(f"(b) bench: training throughput, {budget:.0f} s budget")
    rows, start = [], time.perf_counter()
    run.metrics["bench"] = {"protocol": __doc__.split("(b) ")[1].split("(c) ")[0].replace("\n    ", " ").strip(), "rows": rows}
    for preset, batch, variant in bench_plan(run):
        if variant in ("compile", "cudagraphs") and run.device != "cuda":
            rows.append({"preset": preset, "batch": batch, "variant": variant, "skipped": "compile runs on CUDA only (TrainConfig.compile)"})
            continue
        if time.perf_counter() - start > budget or run.spare() < (60 if variant != "eager" else 15):
            rows.append({"preset": preset, "batch": batch, "variant": variant, "skipped": "bench budget spent (or the training's time)"})
            continue
        try:
            if variant == "plain-fp32":
                row = measure_plain(run, data, preset, batch)
            elif variant == "cudagraphs":
                row = measure_isolated(run, preset, batch, variant)
            else:
                row = measure_trainer(run, data, preset, batch, variant)
        except Exception as exc:  # a variant that fails (e.g. CUDA graphs) is a finding, not the end of the run
            row = {"preset": preset, "batch": batch, "variant": variant, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        rows.append(row)
        log(f"(b) {preset:7} batch {batch:4} {variant:11} " + (
            f"{row['g_steps_per_s']:8.2f} G steps/s {row['real_images_per_s']:10.1f} real img/s (warm-up {row['warmup_s']} s)"
            if "g_steps_per_s" in row else row.get("error", "")))
        if run.device == "cuda":
            torch.cuda.empty_cache()
    torch._dynamo.reset()
    by = {(r["preset"], r["batch"], r["variant"]): r for r in rows if "g_steps_per_s" in r}
    speedups = {}
    for batch in run.bench_batches:
        plain = by.get((GPU_PRESET, batch, "plain-fp32"))
        fast = [by[k] for k in by if k[0] == GPU_PRESET and k[1] == batch and k[2] != "plain-fp32"]
        if plain and fast:
            best = max(fast, key=lambda r: r["g_steps_per_s"])
            speedups[str(batch)] = {"best_variant": best["variant"], "speedup_vs_plain_fp32": round(best["g_steps_per_s"] / plain["g_steps_per_s"], 2)}
    run.metrics["bench"]["speedup"] = speedups
    run.metrics["bench"]["seconds"] = round(time.perf_counter() - start, 1)


def choose_compile(run: Run) -> bool:
    """--compile auto: compile if the bench says the compiled step, after its compile time, wins in the budget."""
    if run.args.compile != "auto":
        return run.args.compile == "on" and run.device == "cuda"
    rows = {r["variant"]: r for r in run.metrics.get("bench", {}).get("rows", [])
            if r.get("preset") == GPU_PRESET and r.get("batch") == run.train_batch and "g_steps_per_s" in r}
    if run.device != "cuda" or "eager" not in rows or "compile" not in rows:
        return False
    budget = run.args.train_minutes * 60
    eager_steps = rows["eager"]["g_steps_per_s"] * budget
    compiled_steps = rows["compile"]["g_steps_per_s"] * max(budget - rows["compile"]["warmup_s"], 0)
    return compiled_steps > eager_steps


# ------------------------------------------------------------------------------------------- (c) train
def stage_train(run: Run, data):
    import torch

    from cganmodel.checkpoint import CheckpointError
    from cganmodel.train import TrainConfig, Trainer

    use_compile = choose_compile(run)
    folder = run.args.checkpoint
    files = read_checkpoint(folder) if folder is not None else None

    def make_trainer(compile: bool) -> tuple[Trainer, dict]:
        gan_cfg = run.gan_config(GPU_PRESET, data.classes)
        train_cfg = TrainConfig(preset=GPU_PRESET, steps=10**9, batch_size=run.train_batch, checkpoint_every=0,
                                seed=run.args.seed, device=run.device, compile=compile, log_every=50 if not run.smoke else 2)
        torch._dynamo.reset()
        trainer = Trainer(gan_cfg, train_cfg, data)
        if files is None:
            return trainer, {"wall_s": 0.0, "sessions": []}
        try:
            trainer.load_checkpoint(files)
            return trainer, json.loads(files["run.json"]) if "run.json" in files else {"wall_s": 0.0, "sessions": []}
        except CheckpointError as exc:
            fail(f"checkpoint {folder}: {exc}")
        except ValueError as exc:
            fail(f"checkpoint {folder}: run.json: {exc}")
        raise AssertionError("unreachable")

    trainer, prior = make_trainer(use_compile)
    if folder is None:
        log("(c) train: no --checkpoint given: starting fresh")
    elif files is None:
        log(f"(c) train: no checkpoint in {folder}: starting fresh")
    else:
        log(f"(c) train: resumed from {folder} at step {trainer.step}")
    budget = min(run.args.train_minutes * 60, run.left() - run.reserve())
    if budget < run.args.train_minutes * 60:
        log(f"(c) train: cut to {max(budget, 0):.0f} s to end within --deadline-minutes")
    budget = max(budget, 0.0)
    log(f"(c) train: {GPU_PRESET} batch {run.train_batch} on {run.device}, compile {use_compile}, {budget:.0f} s")
    from_step, start = trainer.step, time.perf_counter()
    last_print = [start]

    def on_progress(info: dict) -> None:
        now = time.perf_counter()
        if now - last_print[0] >= (2 if run.smoke else 30):
            last_print[0] = now
            log(f"(c) step {info['step']} d_loss {info['d_loss']:.3f} g_loss {info['g_loss']:.3f} {info['images_per_s']:.0f} real img/s")

    try:
        trainer.run(on_progress=on_progress, should_stop=lambda: time.perf_counter() - start >= budget)
    except Exception as exc:  # one chance on the GPU: a failed compilation must not cost the training
        if not use_compile:
            raise
        log(f"(c) train: compiled training failed ({type(exc).__name__}: {str(exc)[:300]}); again from the checkpoint, eager")
        run.metrics["train_compile_error"] = f"{type(exc).__name__}: {str(exc)[:1000]}"
        use_compile = False
        trainer, prior = make_trainer(False)
        trainer.run(on_progress=on_progress, should_stop=lambda: time.perf_counter() - start >= budget)
    sync(run.device)
    seconds = time.perf_counter() - start
    steps = trainer.step - from_step
    session = {"started": run.metrics["started_at"], "device": run.metrics["device"], "from_step": from_step, "to_step": trainer.step,
               "wall_s": round(seconds, 1), "compile": use_compile, "batch_size": run.train_batch, "torch": torch.__version__}
    facts = {"recipe": "recipes/gpu_run.py", "preset": GPU_PRESET, "dataset": "CIFAR-10 (JPEG copy)" if not run.smoke else "smoke",
             "steps": trainer.step, "batch_size": run.train_batch, "wall_s": round(prior.get("wall_s", 0.0) + seconds, 1),
             "sessions": prior.get("sessions", []) + [session], "hardware": describe_device(), "torch": torch.__version__}
    trainer._capture_global_rng()
    write_checkpoint(run.work / "checkpoint", trainer.checkpoint_files(), facts)
    export(trainer, run.work / "gpu-default", facts)
    n_dis = trainer.train_cfg.n_dis or 1
    run.metrics["train"] = {
        "preset": GPU_PRESET, "batch_size": run.train_batch, "compile": use_compile, "from_step": from_step, "to_step": trainer.step,
        "steps": steps, "seconds": round(seconds, 1), "g_steps_per_s": round(steps / max(seconds, 1e-9), 2),
        "real_images_per_s": round(steps * run.train_batch * n_dis / max(seconds, 1e-9), 1),
        "total_wall_s_all_sessions": facts["wall_s"], "sessions": len(facts["sessions"]),
        "last_losses": trainer.history[-1] if trainer.history else None,
    }
    log(f"(c) train: {steps} steps in {seconds:.0f} s (now at step {trainer.step}; {facts['wall_s']:.0f} s over {len(facts['sessions'])} sessions)")
    return trainer


# ------------------------------------------------------------------------------------------- (d) generate
def shipped(name: str) -> tuple[Path, dict, str]:
    """The latest shipped version of the registry name ``name`` ("default", "default-classifier"):
    its weights file, its metadata and its reference ("default:2"), as `cganctl` resolves ``name``."""
    from scheduler.model_registry import builtin_model, builtin_weights_path

    record = builtin_model(name)
    weights = builtin_weights_path(record) if record else None
    assert record is not None and weights is not None, f"no shipped model {name!r}"
    return weights, record.meta, record.ref


def stage_generate(run: Run) -> None:
    import torch

    from cganmodel.pretrained import load_generator
    from cganmodel.sampling import generate
    from cganmodel.shards import Sample, shard_name, write_shard
    from scheduler.settings import Settings
    from scheduler.store import open_store

    count = run.args.gen_count
    frog = CIFAR.index("frog")
    log(f"(d) generate: {count} frogs with the shipped default on {run.device}")
    weights, meta, ref = shipped("default")
    G = load_generator(weights, meta).to(run.device)
    out: dict = {"count": count, "model": f"{ref} (shipped)"}
    # forward alone
    z = torch.randn(count, int(G.z_dim), generator=torch.Generator().manual_seed(0)).to(run.device)
    y = torch.full((count,), frog, dtype=torch.int64, device=run.device)
    with torch.inference_mode():
        G(z[:500], y[:500])
        sync(run.device)
        t = time.perf_counter()
        for i in range(0, count, 500):
            G(z[i : i + 500], y[i : i + 500])
        sync(run.device)
        out["forward_alone_s"] = round(time.perf_counter() - t, 3)
    # PNG encoding + upload alone (webdataset shards of 2,500 into a local-folder store)
    images = generate(G, [frog] * count, 0, batch_size=500, device=run.device).images
    with tempfile.TemporaryDirectory(dir=run.work) as tmp:
        store = open_store(Settings(data_dir=Path(tmp)))
        t = time.perf_counter()
        for index, start in enumerate(range(0, count, 2500)):
            buf = io.BytesIO()
            write_shard(buf, (Sample(key=f"{start + i:08d}", image=images[start + i], label=frog, class_name="frog",
                                     meta={"label": "frog", "seed": 0, "shard": index, "model": ref})
                              for i in range(min(2500, count - start))), "webdataset")
            store.put_bytes(f"jobs/bench/shards/{shard_name(index, 'webdataset')}", buf.getvalue(), "application/x-tar")
        out["encode_upload_alone_s"] = round(time.perf_counter() - t, 3)
    del images
    # the product: the embedded generate job through the real CLI
    with tempfile.TemporaryDirectory(dir=run.work) as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CGAN_")}
        env["CGAN_DATA_DIR"] = tmp
        cmd = [sys.executable, "-m", "scheduler", "submit", "generate", "--label", "frog", "--count", str(count), "--wait", "--json"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(run.left() - 60, 30))
        out["product_embedded_s"] = round(time.perf_counter() - t, 3)
        out["product_command"] = " ".join(cmd[2:])
        out["product_rc"] = proc.returncode
        try:
            job = json.loads(proc.stdout)
            out["product_status"] = job.get("status")
        except ValueError:
            out["product_status"] = None
            out["product_error"] = (proc.stderr or proc.stdout)[-1000:]
    for key in ("forward_alone_s", "encode_upload_alone_s", "product_embedded_s"):
        out[key[: -len("_s")] + "_images_per_s"] = round(count / max(out[key], 1e-9), 1)
    out["product_vs_encode_upload"] = round(out["product_embedded_s"] / max(out["encode_upload_alone_s"], 1e-9), 2)
    out["protocol"] = __doc__.split("(d) ")[1].split("(e) ")[0].replace("\n    ", " ").strip()
    run.metrics["generate"] = out
    log(f"(d) generate: forward {out['forward_alone_s']} s, encode+upload {out['encode_upload_alone_s']} s, "
        f"product {out['product_embedded_s']} s ({out['product_status']}): {out['product_vs_encode_upload']}x encode+upload")


# ------------------------------------------------------------------------------------------- (e) score
def stage_score(run: Run, data, trainer) -> bytes:
    import numpy as np

    from cganmodel.classifier import load_classifier
    from cganmodel.evaluation import _generate, evaluate_generator, reference_stats
    from cganmodel.pretrained import load_generator

    per_class = max(run.args.fid_samples // len(data.classes), 2)
    log(f"(e) score: {per_class} samples a class, shipped classifier, reference = {len(data)} train images")
    clf_weights, clf_meta, _ = shipped("default-classifier")
    clf = load_classifier(clf_weights, clf_meta).to(run.device).eval()
    reference = reference_stats(data, classifier=clf, device=run.device)
    results, grid = {}, b""
    candidates = [("trained", trainer.ema)]
    if not run.smoke:
        weights, meta, ref = shipped("default")
        candidates.append(("shipped_default", load_generator(weights, meta).to(run.device)))
        results["shipped_default_model"] = ref
    for name, G in candidates:
        metrics, png = evaluate_generator(G, data.classes, classifier=clf, samples_per_class=per_class, seed=0,
                                          reference=reference, device=run.device)
        results[name] = metrics
        grid = grid or png
        log(f"(e) {name}: label accuracy {metrics['label_accuracy']:.3f}, classifier FID {metrics['classifier_fid']:.2f}")
    results["protocol"] = (f"evaluate job metric code on {run.device}: {per_class} samples a class (seed 0, class-major), "
                           f"default classifier argmax == label; classifier-feature FID vs {len(data)} train images")
    run.metrics["score"] = results
    # the trained generator's samples (the same images the metrics saw) for Inception FID on a CPU later
    images, labels = _generate(trainer.ema, len(data.classes), per_class, seed=0, truncation=None, batch_size=250, device=run.device, on_progress=None)
    parts = -(-images.nbytes // (15 * 2**20))  # raw bytes: each part stays under 16 MiB even uncompressed
    for i, sel in enumerate(np.array_split(np.arange(len(labels)), parts), 1):
        with open(run.out / f"samples-{i}.npz", "wb") as handle:
            np.savez_compressed(handle, images=images[sel], labels=labels[sel], classes=np.array(data.classes))
    run.metrics["samples_npz"] = {"files": [f"samples-{i}.npz" for i in range(1, parts + 1)], "count": int(len(labels)),
                                  "generator": "trained EMA", "seed": 0, "layout": "images uint8 (N,32,32,3), labels int64, classes"}
    return grid


# ------------------------------------------------------------------------------------------- (f) files
def pack_tars(files: list[Path], stem: str, out: Path, limit: int = 15 * 2**20) -> list[str]:
    """Tar ``files`` into ``<stem>-1.tar``, ``<stem>-2.tar``, ... of at most ``limit`` bytes each (by file)."""
    groups: list[list[Path]] = []
    size = limit
    for path in sorted(files, key=lambda p: -p.stat().st_size):
        if size + path.stat().st_size + 1024 > limit:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += path.stat().st_size + 1024
    names = []
    for i, group in enumerate(groups, 1):
        name = f"{stem}-{i}.tar" if len(groups) > 1 or stem == "checkpoint" else f"{stem}.tar"
        with tarfile.open(out / name, "w") as tar:
            for path in sorted(group):
                tar.add(path, arcname=path.name)
        names.append(name)
    return names


def guarded(run: Run, name: str, fn):
    """Run a stage after the training; a failure is recorded in metrics.json and the run goes on to (f)."""
    import traceback

    try:
        return fn()
    except Exception as exc:
        run.metrics[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        log(f"{name}: FAILED: {type(exc).__name__}: {exc}")
        return None
    finally:
        run.save_metrics()


def stage_files(run: Run, grid: bytes) -> None:
    ckpt = run.work / "checkpoint"
    run.metrics["files"] = {
        "checkpoint": pack_tars([p for p in ckpt.iterdir() if p.is_file()], "checkpoint", run.out),
        "generator": pack_tars([run.work / "gpu-default.safetensors", run.work / "gpu-default.json"], "gpu-default", run.out),
    }
    if grid:
        (run.out / "samples.png").write_bytes(grid)
    write_summary(run)
    run.save_metrics()
    files = sorted(p for p in run.out.rglob("*") if p.is_file())
    sizes = {str(p.relative_to(run.out)): p.stat().st_size for p in files}
    problems = []
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files, at most {MAX_FILES} come back")
    problems += [f"{name} is {size / 2**20:.1f} MiB (over 16 MiB)" for name, size in sizes.items() if size > MAX_FILE]
    if sum(sizes.values()) > MAX_TOTAL:
        problems.append(f"{sum(sizes.values()) / 2**20:.1f} MiB in all (over 64 MiB)")
    run.metrics["files"]["sizes"] = sizes
    run.metrics["files"]["problems"] = problems
    write_summary(run)
    run.save_metrics()
    for name, size in sizes.items():
        log(f"(f) {name:28} {size / 2**20:7.2f} MiB")
    if problems:
        log("(f) WARNING: over the transfer rules: " + "; ".join(problems))


def write_summary(run: Run) -> None:
    m = run.metrics
    lines = [f"# GPU run {m['started_at']}: {m['mode']}", "",
             f"device: {m['device']} ({m['hardware']}), torch {m['torch']}, Python {m['python']}", ""]
    if "tests" in m:
        lines += [f"## (a) tests (`{m['tests']['command']}`)", "", f"rc {m['tests']['rc']}: {m['tests']['summary']}", ""]
    if "bench" in m:
        lines += ["## (b) training throughput", "", m["bench"]["protocol"], "",
                  "| preset | batch | variant | G steps/s | real images/s | warm-up s |", "| --- | --- | --- | --- | --- | --- |"]
        for r in m["bench"]["rows"]:
            if "g_steps_per_s" in r:
                lines.append(f"| {r['preset']} | {r['batch']} | {r['variant']} | {r['g_steps_per_s']} | {r['real_images_per_s']} | {r['warmup_s']} |")
            else:
                lines.append(f"| {r['preset']} | {r['batch']} | {r['variant']} | {r.get('skipped') or r.get('error')} | | |")
        lines += ["", f"speed-up of the best variant over the plain eager fp32 loop (goal >= 2x): {json.dumps(m['bench'].get('speedup'))}", ""]
    if "train" in m:
        t = m["train"]
        lines += ["## (c) training", "", f"{t['preset']} batch {t['batch_size']}, compile {t['compile']}: steps {t['from_step']} -> {t['to_step']} "
                  f"in {t['seconds']} s ({t['g_steps_per_s']} G steps/s, {t['real_images_per_s']} real images/s); "
                  f"{t['total_wall_s_all_sessions']} s of training over {t['sessions']} session(s)", ""]
    for name in ("train_compile_error", "generate", "score"):
        if isinstance(m.get(name), str) or (isinstance(m.get(name), dict) and "error" in m[name]):
            title = "compiled training failed: trained eager instead" if name == "train_compile_error" else f"{name}: FAILED"
            lines += [f"## {title}", "", "```", str(m[name] if isinstance(m[name], str) else m[name]["error"])[:2000], "```", ""]
    if "generate" in m and "error" not in m["generate"]:
        g = m["generate"]
        lines += ["## (d) generating", "", g["protocol"], "", f"{g['count']} images: forward alone {g['forward_alone_s']} s, "
                  f"PNG encode + upload alone {g['encode_upload_alone_s']} s, product embedded job {g['product_embedded_s']} s "
                  f"(status {g['product_status']}) = {g['product_vs_encode_upload']}x the encode + upload cost (goal <= 2x)", ""]
    if "score" in m and "error" not in m["score"]:
        s = m["score"]
        lines += ["## (e) scores", "", s["protocol"], "", "| generator | label accuracy | classifier FID |", "| --- | --- | --- |"]
        lines += [f"| {k} | {v['label_accuracy']:.4f} | {v['classifier_fid']:.3f} |" for k, v in s.items() if isinstance(v, dict)]
        lines += ["", "Inception FID: not computed here (the network does not fit the transfer); run "
                  "`bench/gpu_goals.py` on the returned samples-*.npz.", ""]
    if "files" in m:
        lines += ["## (f) files", "", "Restore with `scripts/gpu-run --unpack DIR` (checkpoint -> recipes/checkpoints/gpu-default).", ""]
        lines += [f"- {k}: {v}" for k, v in m["files"].items()]
    (run.out / "summary.md").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------- unpack
def unpack(source: Path, checkpoint: Path, weights_to: Path) -> None:
    """Put a returned run's checkpoint tars back as the folder ``checkpoint``; the generator into ``weights_to``."""
    tars = sorted(source.glob("checkpoint-*.tar"))
    if not tars:
        fail(f"no checkpoint-*.tar in {source}")
    files: dict[str, bytes] = {}
    for path in tars:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.isfile() and "/" not in member.name:
                    files[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if "state.json" not in files or "run.json" not in files:
        fail(f"{source}: the checkpoint tars hold no state.json/run.json")
    facts = json.loads(files.pop("run.json"))
    write_checkpoint(checkpoint, files, facts)
    print(f"restored {len(files) + 1} files into {checkpoint} (step {json.loads(files['state.json'])['step']})")
    generator = source / "gpu-default.tar"
    if generator.exists():
        weights_to.mkdir(parents=True, exist_ok=True)
        with tarfile.open(generator) as tar:
            tar.extractall(weights_to, filter="data")
        print(f"exported generator: {weights_to}/gpu-default.safetensors + .json (ship it as default only if it beats the shipped one)")


# ------------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the same code on the CPU at tiny sizes (a check, not a measurement)")
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None, help="results folder (default $OUT)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (full checkpoint, exports); default: a temporary one")
    p.add_argument("--data", type=Path, default=None, help="CIFAR-10 ImageFolder tarball (default gpu-carry/ or ../shared/data/)")
    p.add_argument("--checkpoint", type=Path, default=None, help=f"training state to continue (default {DEFAULT_CHECKPOINT.relative_to(ROOT)}; smoke: none)")
    p.add_argument("--train-minutes", type=float, default=None, help="training budget (default 4; smoke 0.1)")
    p.add_argument("--deadline-minutes", type=float, default=9.0, help="the whole run ends within this (training is cut to fit)")
    p.add_argument("--reserve-seconds", type=float, default=110.0, help="time kept for stages (d)-(f) after training")
    p.add_argument("--bench-seconds", type=float, default=150.0)
    p.add_argument("--bench-steps", type=int, default=20)
    p.add_argument("--gen-count", type=int, default=None, help="images for (d) (default 50000; smoke 500)")
    p.add_argument("--fid-samples", type=int, default=None, help="samples for (e) (default 10000; smoke 100)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="compile for (c); auto: what (b) measured faster")
    p.add_argument("--skip", default="", help="comma-separated stages to leave out: tests, bench, generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bench-one", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--unpack", type=Path, default=None, metavar="DIR",
        help="restore a returned run's checkpoint into --checkpoint (its generator into --work, default runs/gpu-default/) and stop",
    )
    args = p.parse_args()
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    bad = args.skip - {"tests", "bench", "generate"}
    if bad:
        p.error(f"--skip: unknown stages {sorted(bad)} (tests, bench, generate)")
    if args.checkpoint is None and (not args.smoke or args.unpack):
        args.checkpoint = DEFAULT_CHECKPOINT
    defaults = {"train_minutes": (4.0, 0.1), "gen_count": (50_000, 500), "fid_samples": (10_000, 100)}
    for key, (real, smoke) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else real)
    return args


def main() -> None:
    args = parse_args()
    if args.unpack:
        unpack(args.unpack, args.checkpoint, args.work or ROOT / "runs" / "gpu-default")
        return
    if args.out is None:
        fail("no output folder: pass --out DIR (or set $OUT)")
    if args.bench_one:
        bench_one(args)
        return
    import torch

    if args.smoke:
        if torch.cuda.is_available():
            print("smoke: CUDA is available, but --smoke runs the tiny CPU version on the CPU (drop --smoke for the real GPU run)", flush=True)
        else:
            print("smoke: the tiny CPU version of the GPU run (same code, tiny sizes; its figures are not measurements)", flush=True)
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    elif not torch.cuda.is_available():
        fail("no CUDA device: the real GPU run needs one (scripts/gpu-run --smoke runs the tiny CPU version)")
    else:
        torch.backends.cudnn.benchmark = True
        print(f"real run on {torch.cuda.get_device_name(0)}: ends within {args.deadline_minutes} min", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="gpu-run-"))
    args.work.mkdir(parents=True, exist_ok=True)
    run = Run(args)
    run.save_metrics()

    from cganmodel.data import load_image_dataset

    source = smoke_dataset(args.work) if args.smoke and not args.data else find_data(args)
    t = time.perf_counter()
    data = load_image_dataset(str(source), split="train")
    if list(data.classes) != CIFAR:
        fail(f"{source}: classes {data.classes} are not CIFAR-10's (the shipped classifier scores those)")
    run.metrics["data"] = {"source": str(source), "images": len(data), "load_s": round(time.perf_counter() - t, 1)}
    log(f"data: {len(data)} images from {source} in {run.metrics['data']['load_s']} s")

    if "tests" not in args.skip:
        stage_tests(run)
        run.save_metrics()
    if "bench" not in args.skip:
        stage_bench(run, data)
        run.save_metrics()
    trainer = stage_train(run, data)
    run.save_metrics()
    if "generate" not in args.skip:
        guarded(run, "generate", lambda: stage_generate(run))
    grid = guarded(run, "score", lambda: stage_score(run, data, trainer)) or b""
    stage_files(run, grid)
    log(f"done in {time.perf_counter() - T0:.0f} s: {args.out}/summary.md")
    failed = [name for name in ("generate", "score") if isinstance(run.metrics.get(name), dict) and "error" in run.metrics[name]]
    if failed:  # every file is written first (the device returns them either way); the exit status says it
        log(f"stages that failed: {', '.join(failed)} (errors in metrics.json)")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
