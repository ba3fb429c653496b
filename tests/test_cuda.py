"""The CUDA path: bf16 + channels_last training (eager and compiled), resume, sampling and jobs on CUDA.

Marked ``cuda`` and skipped without a CUDA device (the CPU suite runs none of them);
``scripts/gpu-run`` runs them with ``pytest -m cuda`` on the GPU machine.

Resume on CUDA: the random streams (the device generator of the per-step draws and the global CUDA
RNG) continue *bit-identically*; weights and losses continue *within tolerance* (cuDNN and the
atomic adds in the backward of DiffAugment's indexing are not bit-reproducible on a GPU).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cganmodel.data import ImageData
from cganmodel.gan import GANConfig
from cganmodel.pretrained import load_generator
from cganmodel.sampling import generate
from cganmodel.train import TrainConfig, Trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def random_data(n: int = 1024) -> ImageData:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
    images[labels == 0, :, :, 0] = 255
    return ImageData(images, labels, CIFAR)


def trainer(steps: int, *, compile: bool = False, batch_size: int = 64, **kw) -> Trainer:
    gan = GANConfig(preset="biggan", num_classes=10, classes=CIFAR)
    cfg = TrainConfig(preset="biggan", steps=steps, batch_size=batch_size, device="cuda", compile=compile, log_every=1,
                      samples_per_class=2, **kw)
    return Trainer(gan, cfg, random_data())


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_train_step_bf16_channels_last_no_host_sync(compile: bool) -> None:
    t = trainer(4, compile=compile)
    assert t.opt_g.defaults["fused"] and t.opt_d.defaults["fused"]
    convs = [m for m in t.G.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    dtypes: list[torch.dtype] = []
    if not compile:  # (a hook inside a compiled module is traced, not run)
        hook = convs[0].register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    t.run()  # warm-up: compilation, allocator, cuDNN plans
    if not compile:
        hook.remove()
        assert dtypes and set(dtypes) == {torch.bfloat16}  # autocast: the convolutions run in bf16
    else:
        assert t.G._compiled_call_impl is not None and t.D._compiled_call_impl is not None
    assert t.step == 4 and all(np.isfinite(h[1]) and np.isfinite(h[2]) for h in t.history)
    t._next_real()  # the epoch's permutation exists: the steps below stay within the epoch
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call in the step raises
    try:
        for _ in range(2):
            d_loss, g_loss = t._train_step()
            t.step += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(d_loss) and torch.isfinite(g_loss)
    assert d_loss.device.type == "cuda"


def test_resume_on_cuda_continues_the_run() -> None:
    saved: dict[int, dict[str, bytes]] = {}
    straight = trainer(6, checkpoint_every=3)
    straight.run(on_checkpoint=lambda step, files: saved.__setitem__(step, files))
    assert sorted(saved) == [3, 6]
    state3 = json.loads(saved[3]["state.json"])
    assert state3["rng"]["trainer_cuda"] and state3["rng"]["torch_cuda"]  # CUDA RNG states are captured

    resumed = trainer(6, checkpoint_every=3)
    resumed.load_checkpoint(saved[3])
    assert resumed.step == 3
    final: dict[int, dict[str, bytes]] = {}
    resumed.run(on_checkpoint=lambda step, files: final.__setitem__(step, files))
    a, b = json.loads(saved[6]["state.json"]), json.loads(final[6]["state.json"])
    assert a["rng"] == b["rng"]  # the random streams continued bit-identically
    assert a["epoch"] == b["epoch"] and a["pos"] == b["pos"]
    assert [h[0] for h in straight.history] == [h[0] for h in resumed.history]
    np.testing.assert_allclose(np.array(resumed.history)[:, 1:], np.array(straight.history)[:, 1:], rtol=0.05, atol=0.05)
    for name in ("G", "D", "ema"):
        sa, sb = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for k in sa:
            if sa[k].is_floating_point():
                torch.testing.assert_close(sb[k], sa[k], rtol=2e-2, atol=2e-3, msg=f"{name}.{k}")


def test_same_seed_same_images_on_cuda() -> None:
    from scheduler.model_registry import builtin_model, builtin_weights_path

    record = builtin_model("default")  # the latest shipped version: the only one scripts/gpu-pack sends along
    assert record is not None
    G = load_generator(builtin_weights_path(record), record.meta).cuda()
    labels = [i % 10 for i in range(300)]
    a = generate(G, labels, 3, device="cuda", batch_size=128).images
    b = generate(G, labels, 3, device="cuda", batch_size=128).images
    assert np.array_equal(a, b)
    cpu = generate(G.cpu(), labels[:40], 3, device="cpu").images
    diff = np.abs(cpu.astype(int) - a[:40].astype(int))
    assert diff.mean() < 1.0  # same noise (drawn on the CPU) -> the same images up to float rounding
    t = trainer(1)
    t.run()
    x = generate(t.ema, labels, 5, device="cuda").images
    assert np.array_equal(x, generate(t.ema, labels, 5, device="cuda").images)


def _reference(root) -> str:
    for c, name in enumerate(CIFAR):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (25 * c, 200 - 15 * c, (37 * i) % 255)).save(root / name / f"{i}.png")
    return str(root)


def test_generate_and_evaluate_jobs_run_on_cuda(tmp_path) -> None:
    from scheduler.runtime import Runtime
    from scheduler.service import Service
    from scheduler.settings import Settings
    from worker import models

    service = Service(Runtime(Settings(data_dir=tmp_path / "data")))
    job = service.submit(service.generate_spec(labels=["frog", "cat"], count=600, shard_size=250, seed=4))
    service.finish_local()
    done = service.get(job.id)
    assert done.status == "succeeded", done.error
    assert done.metrics["count_per_class"] == {"cat": 300, "frog": 300}
    loaded = [m for key, m in models._cache.items() if key[0] == "generator"]
    assert loaded and all(m.device == "cuda" for m in loaded)
    assert next(loaded[0].module.parameters()).is_cuda

    spec = service.evaluate_spec(model="default", classifier=None, reference=_reference(tmp_path / "ref"),
                                 samples_per_class=20, inception=False)
    job = service.submit(spec)
    service.finish_local()
    done = service.get(job.id)
    assert done.status == "succeeded", done.error
    assert 0 <= done.metrics["label_accuracy"] <= 1 and done.metrics["classifier_fid"] >= 0
    assert all(m.device == "cuda" for key, m in models._cache.items() if key[0] == "classifier")
