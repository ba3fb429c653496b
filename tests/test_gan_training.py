"""Training tests: exact resume, stop/cancel, callbacks, checkpoint validation, export/load."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from cganmodel.checkpoint import CheckpointError
from cganmodel.data import ImageData
from cganmodel.gan import GANConfig
from cganmodel.pretrained import default_model_files, load_generator
from cganmodel.train import REQUIRED_FILES, TrainConfig, Trainer

torch.set_num_threads(1)

CLASSES = ["a", "b", "c"]


def tiny_data(n: int = 48) -> ImageData:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
    images[labels == 0, :, :, 0] = 255  # some class signal
    return ImageData(images, labels, CLASSES)


def tiny_gan(preset: str, **kw) -> GANConfig:
    if preset == "resnet":
        kw = {"g_widths": (32, 16, 16, 8), "d_widths": (8, 16, 16, 16), **kw}
    else:
        kw = {"g_widths": (32, 32, 64), "d_widths": (32, 32, 32), **kw}
    return GANConfig(preset=preset, num_classes=3, classes=CLASSES, **kw)


def tiny_train(preset: str, steps: int, **kw) -> TrainConfig:
    kw = {"batch_size": 8, "checkpoint_every": 3, "log_every": 2, "device": "cpu", "samples_per_class": 2, **kw}
    return TrainConfig(preset=preset, steps=steps, **kw)


@pytest.mark.parametrize("preset", ["mlp", "resnet"])
def test_resume_is_exact(preset: str) -> None:
    """Train 7 steps straight vs 3 steps + checkpoint + fresh Trainer + resume to 7: bit-identical.

    Covers dropout (global RNG, mlp), DiffAugment/flip/noise RNG (resnet), optimizer state, EMA,
    the epoch-wise batch order (48 images / batch 8 crosses epochs) and the loss history.
    """
    data = tiny_data()
    saved: dict[int, dict[str, bytes]] = {}
    straight = Trainer(tiny_gan(preset), tiny_train(preset, 7), data)
    straight.run(on_checkpoint=lambda step, files: saved.__setitem__(step, files))
    assert sorted(saved) == [3, 6, 7]

    resumed = Trainer(tiny_gan(preset), tiny_train(preset, 7), data)
    resumed.load_checkpoint(saved[3])
    assert resumed.step == 3
    final: dict[int, dict[str, bytes]] = {}
    result = resumed.run(on_checkpoint=lambda step, files: final.__setitem__(step, files))
    assert result.step == 7 and not result.stopped
    for name in ("G", "D", "ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert resumed.history == straight.history
    # the whole final checkpoint is byte-identical (tensors, optimizer, state.json, PNGs)
    for fname, blob in saved[7].items():
        assert final[7][fname] == blob, fname


def test_linear_lr_decay_schedule_and_resume() -> None:
    """``lr_decay_start`` holds both learning rates, then decays them linearly to 0 at ``steps``; a run
    resumed mid-decay is bit-identical to a straight one; 0 (the default) leaves the optimisers alone."""
    data = tiny_data()
    cfg = tiny_train("resnet", 6, lr_g=4e-4, lr_d=2e-4, lr_decay_start=2)
    assert [cfg.lr_scale(s) for s in range(7)] == [1, 1, 1, 0.75, 0.5, 0.25, 0]
    trainer = Trainer(tiny_gan("resnet"), cfg, data)
    seen: list[tuple[float, float]] = []
    saved: dict[int, dict[str, bytes]] = {}

    def poll() -> bool:  # before each step: the rates the previous step used
        seen.append((trainer.opt_g.param_groups[0]["lr"], trainer.opt_d.param_groups[0]["lr"]))
        return False

    trainer.run(should_stop=poll, on_checkpoint=lambda step, files: saved.__setitem__(step, files))
    used = seen[1:] + [(trainer.opt_g.param_groups[0]["lr"], trainer.opt_d.param_groups[0]["lr"])]
    assert [g for g, _ in used] == pytest.approx([4e-4 * f for f in (1, 1, 1, 0.75, 0.5, 0.25)])
    assert [d for _, d in used] == pytest.approx([2e-4 * f for f in (1, 1, 1, 0.75, 0.5, 0.25)])
    resumed = Trainer(tiny_gan("resnet"), cfg, data)
    resumed.load_checkpoint(saved[3])
    final: dict[int, dict[str, bytes]] = {}
    resumed.run(on_checkpoint=lambda step, files: final.__setitem__(step, files))
    assert final[6] == saved[6]

    constant = Trainer(tiny_gan("resnet"), tiny_train("resnet", 3, lr_g=4e-4), data)
    constant.run()
    assert constant.opt_g.param_groups[0]["lr"] == 4e-4
    with pytest.raises(ValueError, match="lr_decay_start=6"):
        tiny_train("resnet", 6, lr_decay_start=6)


def test_progress_stop_and_files() -> None:
    data = tiny_data()
    progress: list[dict] = []
    checkpoints: list[tuple[int, dict[str, bytes]]] = []
    polls = iter([False, False, False, False, True])
    trainer = Trainer(tiny_gan("resnet"), tiny_train("resnet", 50, checkpoint_every=0), data)
    result = trainer.run(
        on_progress=progress.append,
        on_checkpoint=lambda step, files: checkpoints.append((step, files)),
        should_stop=lambda: next(polls),
    )
    assert result.stopped and result.step == 4
    assert [p["step"] for p in progress] == [2, 4]
    assert set(progress[0]) == {"step", "steps", "d_loss", "g_loss", "images_per_s"}
    assert progress[0]["steps"] == 50 and progress[0]["images_per_s"] > 0
    assert [s for s, _ in checkpoints] == [4]
    files = checkpoints[0][1]
    assert set(REQUIRED_FILES) | {"loss.png", "samples.png"} == set(files)
    state = json.loads(files["state.json"])
    assert state["step"] == 4 and len(state["loss_history"]) == 2
    samples = Image.open(io.BytesIO(files["samples.png"]))
    assert samples.height == 3 * 34 + 2  # one row per class
    assert Image.open(io.BytesIO(files["loss.png"])).format == "PNG"
    assert b"pickle" not in files["optim.safetensors"][:2000]


def test_conditioning_after_tiny_training() -> None:
    """After a few steps the (zero-initialised) class embeddings of the EMA generator matter."""
    trainer = Trainer(tiny_gan("resnet"), tiny_train("resnet", 3, checkpoint_every=0), tiny_data())
    trainer.run()
    z = torch.randn(1, trainer.gan_cfg.z_dim).repeat(3, 1)
    with torch.inference_mode():
        x = trainer.ema(z, torch.arange(3))
    assert (x[1] - x[0]).abs().max() > 1e-4 and (x[2] - x[0]).abs().max() > 1e-4


@pytest.fixture(scope="module")
def checkpoint_files() -> dict[str, bytes]:
    trainer = Trainer(tiny_gan("resnet"), tiny_train("resnet", 2, checkpoint_every=0), tiny_data())
    out: dict[str, bytes] = {}
    trainer.run(on_checkpoint=lambda step, files: out.update(files))
    return out


def fresh(preset: str = "resnet", **gan_kw) -> Trainer:
    return Trainer(tiny_gan(preset, **gan_kw), tiny_train(preset, 4), tiny_data())


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        ("generator.safetensors", lambda b: b[: len(b) // 2], "checkpoint is corrupt: generator.safetensors"),
        ("discriminator.safetensors", lambda b: b"\x00" * 16, "checkpoint is corrupt: discriminator.safetensors"),
        ("optim.safetensors", lambda b: b[:100], "checkpoint is corrupt: optim.safetensors"),
        ("state.json", lambda b: b[:-20], "checkpoint is corrupt: state.json"),
        ("state.json", lambda b: b'{"format": "something else"}', "checkpoint is corrupt: state.json"),
    ],
)
def test_corrupt_checkpoint_refused(checkpoint_files, name, mutate, message) -> None:
    files = dict(checkpoint_files)
    files[name] = mutate(files[name])
    trainer = fresh()
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        trainer.load_checkpoint(files)
    assert trainer.step == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.G.state_dict().items())


def test_missing_file_refused(checkpoint_files) -> None:
    files = {k: v for k, v in checkpoint_files.items() if k != "ema.safetensors"}
    with pytest.raises(CheckpointError, match="missing ema.safetensors"):
        fresh().load_checkpoint(files)


def test_mismatched_checkpoint_refused(checkpoint_files) -> None:
    with pytest.raises(CheckpointError, match=r"does not match.*d_widths"):
        fresh(d_widths=(8, 16, 16, 32)).load_checkpoint(checkpoint_files)
    with pytest.raises(CheckpointError, match=r"does not match.*preset"):
        fresh("mlp").load_checkpoint(checkpoint_files)
    # config claims to match, but the tensors do not: shape check names the file and tensor
    files = dict(checkpoint_files)
    state = json.loads(files["state.json"])
    state["gan_config"]["g_widths"] = [32, 16, 16, 16]
    files["state.json"] = json.dumps(state).encode()
    with pytest.raises(CheckpointError, match=r"does not match the model: generator.safetensors: .*shape"):
        fresh(g_widths=(32, 16, 16, 16)).load_checkpoint(files)


def test_export_and_load_generator(tmp_path) -> None:
    trainer = Trainer(tiny_gan("resnet"), tiny_train("resnet", 2, checkpoint_every=0, standing_stats=0), tiny_data())
    trainer.run()
    weights, meta = trainer.export()
    meta = json.loads(json.dumps(meta))
    assert meta["kind"] == "generator" and meta["classes"] == CLASSES and meta["step"] == 2
    G = load_generator(weights, meta)
    assert not G.training
    path = tmp_path / "g.safetensors"
    path.write_bytes(weights)
    G2 = load_generator(path, meta)
    z, y = torch.randn(3, G.z_dim), torch.arange(3)
    with torch.inference_mode():
        torch.testing.assert_close(G(z, y), trainer.ema(z, y), rtol=0, atol=0)
        torch.testing.assert_close(G2(z, y), G(z, y), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="corrupt: generator.safetensors"):
        load_generator(weights[:-10], meta)
    with pytest.raises(CheckpointError, match="not a 'generator'"):
        load_generator(weights, {**meta, "kind": "classifier"})
    bad = json.loads(json.dumps(meta))
    bad["config"]["g_widths"] = [32, 16, 16, 16]
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_generator(weights, bad)


@pytest.mark.parametrize("preset", ["mlp", "resnet"])
def test_export_recomputes_batchnorm_statistics_with_the_ema_weights(preset: str) -> None:
    """The exported EMA generator's BatchNorm buffers are the average batch statistics of its own
    activations over ``standing_stats`` seeded batches, not the raw G's buffers; the export is reproducible."""
    from cganmodel.sampling import standing_statistics

    trainer = Trainer(tiny_gan(preset), tiny_train(preset, 4, checkpoint_every=0, standing_stats=5), tiny_data())
    trainer.run()
    weights, meta = trainer.export()
    assert trainer.export()[0] == weights  # same step, same seed: same bytes
    exported = load_generator(weights, meta).state_dict()
    ema = trainer.ema.state_dict()
    means = [k for k in exported if k.endswith("running_mean")]
    assert means and all(exported[k].shape == ema[k].shape for k in means)
    assert any(not torch.equal(exported[k], ema[k]) for k in means)  # the raw G's statistics were replaced
    assert all(int(exported[k.replace("running_mean", "num_batches_tracked")]) == 5 for k in means)
    assert all(torch.equal(exported[k], v) for k, v in ema.items() if "running" not in k and "num_batches" not in k)
    # what the first BatchNorm saw, batch by batch, with the EMA's weights: its running mean is their average
    seen = []
    first = next(m for m in trainer.ema.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    hook = first.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().transpose(0, 1).flatten(1).mean(1)))
    again = standing_statistics(trainer.ema, len(CLASSES), batches=5, batch_size=8, seed=123)
    hook.remove()
    first_again = next(m for m in again.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    assert len(seen) == 5 and not again.training and first_again.momentum == first.momentum
    torch.testing.assert_close(first_again.running_mean, torch.stack(seen).mean(0))
    assert trainer.ema.state_dict().keys() == ema.keys() and all(torch.equal(trainer.ema.state_dict()[k], ema[k]) for k in ema)


def test_averaging_snapshots_of_one_run(tmp_path) -> None:
    """``recipes/average_generators.py`` averages exported snapshots' parameters element-wise, recomputes the
    BatchNorm statistics for the averaged weights (not the first snapshot's), records its sources, and refuses
    snapshots of different architectures with one error line."""
    import subprocess
    import sys
    from pathlib import Path

    from cganmodel.sampling import average_parameters

    trainer = Trainer(tiny_gan("resnet"), tiny_train("resnet", 6, checkpoint_every=0, standing_stats=3), tiny_data())
    stems = []
    for stop_at in (2, 4, 6):
        trainer.train_cfg = TrainConfig(**dict(trainer.train_cfg.to_dict(), steps=stop_at))
        trainer.run()
        weights, meta = trainer.export()
        stem = tmp_path / f"ema-{stop_at}"
        stem.with_suffix(".safetensors").write_bytes(weights)
        stem.with_suffix(".json").write_text(json.dumps(meta))
        stems.append(stem)
    snaps = [load_generator(s.with_suffix(".safetensors"), json.loads(s.with_suffix(".json").read_text())) for s in stems]
    assert [json.loads(s.with_suffix(".json").read_text())["step"] for s in stems] == [2, 4, 6]

    alone = average_parameters(snaps[:1])
    assert all(torch.equal(p, q) for p, q in zip(alone.parameters(), snaps[0].parameters()))
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "recipes/average_generators.py"), *(str(s.with_suffix(".json")) for s in reversed(stems)),
                           "--out", str(tmp_path / "avg")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "avg.json").read_text())
    assert [s["step"] for s in meta["averaged_from"]["snapshots"]] == [2, 4, 6] and meta["step"] == 6
    avg = load_generator(tmp_path / "avg.safetensors", meta).state_dict()
    firsts = [sn.state_dict() for sn in snaps]
    params = dict(snaps[0].named_parameters())
    for name in params:
        torch.testing.assert_close(avg[name], torch.stack([f[name] for f in firsts]).mean(0))
    assert any(not torch.equal(params[n], firsts[1][n]) for n in params)  # the snapshots do differ
    means = [k for k in avg if k.endswith("running_mean")]
    assert means and all(not torch.equal(avg[k], f[k]) for k in means for f in firsts)
    assert all(int(avg[k.replace("running_mean", "num_batches_tracked")]) == 3 for k in means)

    other = Trainer(tiny_gan("resnet", g_widths=(16, 16, 16, 8)), tiny_train("resnet", 1, checkpoint_every=0), tiny_data())
    other.run()
    weights, meta = other.export()
    (tmp_path / "other.safetensors").write_bytes(weights)
    (tmp_path / "other.json").write_text(json.dumps(meta))
    bad = subprocess.run([sys.executable, str(root / "recipes/average_generators.py"), str(stems[0].with_suffix(".json")),
                          str(tmp_path / "other.json"), "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.json").exists()


def test_default_model_files() -> None:
    st, js = default_model_files()
    assert st.name == "default-generator.safetensors" and js.name == "default-generator.json"
    assert st.parent.name == "weights" and st.parent.parent.name == "cganmodel"
    with pytest.raises(ValueError):
        default_model_files("../evil")


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="does not match GAN preset"):
        Trainer(tiny_gan("resnet"), tiny_train("mlp", 1), tiny_data())
    with pytest.raises(ValueError, match="invalid training config"):
        TrainConfig(preset="resnet", batch_size=0)
    cfg = TrainConfig(preset="resnet")
    assert cfg.betas == (0.0, 0.999) and cfg.n_dis == 2 and cfg.diffaug
    assert TrainConfig(preset="mlp").betas == (0.5, 0.999)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
