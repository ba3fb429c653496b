"""Step-based, resumable GAN training (hinge + DiffAugment + EMA for "resnet"/"biggan", BCE for "mlp").

One *step* is ``n_dis`` discriminator updates followed by one generator update. Every random draw
(real-batch order, flips, noise, labels, DiffAugment) comes from trainer-owned generators whose
states are checkpointed, and the global torch RNG (used by dropout) is forked and tracked too, so a
run resumed from a checkpoint continues exactly as the uninterrupted run would (bit-identical on
the same CPU setup).

On CUDA the step issues no host synchronisation: the per-step draws (flips, noise, labels,
DiffAugment) come from a generator on the device (checkpointed too), Adam is fused, G and D run
in channels_last under bf16 autocast, optionally compiled (``TrainConfig.compile``); losses are
copied to the host once per ``log_every`` steps. The CPU path draws exactly what it always drew.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from cganmodel import checkpoint as ckpt
from cganmodel.checkpoint import CheckpointError
from cganmodel.data import ImageData
from cganmodel.devices import resolve_device
from cganmodel.diffaug import diff_augment
from cganmodel.gan import GANConfig, build_discriminator, build_generator
from cganmodel.grid import labelled_grid_png, loss_curve_png
from cganmodel.imaging import to_float
from cganmodel.presets import TrainConfig
from cganmodel.pretrained import save_generator
from cganmodel.sampling import generate, standing_statistics
from cganmodel.seeding import TRAIN_STREAMS, mix_seed
from cganmodel.training import TrainResult, check_finite

CHECKPOINT_FORMAT = "cganmodel-train-checkpoint"
REQUIRED_FILES = (
    "generator.safetensors",
    "discriminator.safetensors",
    "ema.safetensors",
    "optim.safetensors",
    "state.json",
)


class Trainer:
    """Trains a :class:`GANConfig` model on an :class:`ImageData`; see the module docstring."""

    def __init__(self, gan_cfg: GANConfig, train_cfg: TrainConfig, data: ImageData) -> None:
        if train_cfg.preset != gan_cfg.preset:
            raise ValueError(f"training preset {train_cfg.preset!r} does not match GAN preset {gan_cfg.preset!r}")
        if list(data.classes) != list(gan_cfg.classes):
            raise ValueError(f"data classes {data.classes} do not match the GAN config's {gan_cfg.classes}")
        size = gan_cfg.image_size
        if tuple(data.images.shape[1:]) != (size, size, 3):
            raise ValueError(f"data images are {tuple(data.images.shape[1:])}, the GAN needs ({size}, {size}, 3)")
        if len(data) < train_cfg.batch_size:
            raise ValueError(f"data set has {len(data)} images, fewer than batch_size={train_cfg.batch_size}")
        self.gan_cfg = gan_cfg
        self.train_cfg = cfg = train_cfg
        self.device = resolve_device(cfg.device)
        self.cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.G = build_generator(gan_cfg)
            self.D = build_discriminator(gan_cfg)
        self.ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        for m in (self.G, self.D, self.ema):  # channels_last: faster convs on CUDA and CPU (oneDNN)
            m.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        fused = {"fused": True} if self.cuda else {}  # one kernel for all parameters
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=cfg.betas, **fused)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=cfg.betas, **fused)
        if cfg.compile and self.cuda:
            self.G.compile()
            self.D.compile()
        self._images = data.images.permute(0, 3, 1, 2).contiguous().to(self.device)  # uint8 NCHW
        self._labels = data.labels.to(self.device)
        # Resumable state.
        self.step = 0
        self.epoch = 0
        self.pos = 0
        self.history: list[list[float]] = []  # [step, mean d_loss, mean g_loss] per log interval
        self._acc = [0.0, 0.0, 0]  # running sums of the current log interval
        self._gen = torch.Generator().manual_seed(mix_seed(cfg.seed, TRAIN_STREAMS["trainer"]))
        # CUDA: per-step draws on the device (no CPU draw + copy each step); CPU: from self._gen.
        self._dgen = torch.Generator(self.device).manual_seed(mix_seed(cfg.seed, TRAIN_STREAMS["trainer_cuda"])) if self.cuda else None
        self._cpu_rng = torch.Generator().manual_seed(mix_seed(cfg.seed, TRAIN_STREAMS["torch_cpu"])).get_state()
        self._cuda_rng: torch.Tensor | None = None
        self._perm: torch.Tensor | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ----------------------------------------------------------------------------- training
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def _step_gen(self) -> torch.Generator:
        """Where the per-step random draws come from (on the device under CUDA)."""
        return self._gen if self._dgen is None else self._dgen

    def _next_real(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Next real batch (epoch-wise permutation seeded by (seed, epoch)), randomly h-flipped."""
        n, b = self._images.shape[0], self.train_cfg.batch_size
        if self.pos + b > n:
            self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        if self._perm is None:
            perm_gen = torch.Generator().manual_seed(mix_seed(self.train_cfg.seed, TRAIN_STREAMS["epoch_order"], self.epoch))
            self._perm = torch.randperm(n, generator=perm_gen).to(self.device)
        idx = self._perm[self.pos : self.pos + b]
        self.pos += b
        x = to_float(self._images[idx])
        g = self._step_gen
        flip = (torch.rand(b, generator=g, device=g.device) < 0.5).to(self.device)[:, None, None, None]
        x = torch.where(flip, x.flip(3), x).contiguous(memory_format=torch.channels_last)
        return x, self._labels[idx]

    def _noise(self) -> tuple[torch.Tensor, torch.Tensor]:
        b, g = self.train_cfg.batch_size, self._step_gen
        z = torch.randn(b, self.gan_cfg.z_dim, generator=g, device=g.device)
        y = torch.randint(self.gan_cfg.num_classes, (b,), generator=g, device=g.device)
        return z.to(self.device), y.to(self.device)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.train_cfg.diffaug, self._step_gen) if self.train_cfg.diffaug else x

    def _d_loss(
        self, real: torch.Tensor, y_real: torch.Tensor, fake: torch.Tensor, y_fake: torch.Tensor
    ) -> torch.Tensor:
        b = real.shape[0]
        x = self._augment(torch.cat([real, fake]))
        with self._autocast():
            out = self.D(x, torch.cat([y_real, y_fake])).float()
        o_real, o_fake = out[:b], out[b:]
        if self.gan_cfg.preset == "mlp":
            bce = F.binary_cross_entropy_with_logits
            return 0.5 * (bce(o_real, torch.ones_like(o_real)) + bce(o_fake, torch.zeros_like(o_fake)))
        return F.relu(1 - o_real).mean() + F.relu(1 + o_fake).mean()

    def _g_loss(self, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            out = self.D(self._augment(fake), y).float()
        if self.gan_cfg.preset == "mlp":
            return F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        return -out.mean()

    def _set_lr(self) -> None:
        """Apply the recipe's schedule (``TrainConfig.lr_scale``); with none the optimisers are left untouched."""
        cfg = self.train_cfg
        if cfg.lr_decay_start:
            scale = cfg.lr_scale(self.step)
            for opt, lr in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)):
                for group in opt.param_groups:
                    group["lr"] = lr * scale

    def _train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._set_lr()
        d_losses = []
        for _ in range(self.train_cfg.n_dis or 1):
            real, y_real = self._next_real()
            z, y_fake = self._noise()
            with torch.no_grad(), self._autocast():
                fake = self.G(z, y_fake).float()
            d_loss = self._d_loss(real, y_real, fake, y_fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            d_losses.append(d_loss.detach())
        z, y = self._noise()
        with self._autocast():
            fake = self.G(z, y).float()
        g_loss = self._g_loss(fake, y)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self._update_ema()
        return torch.stack(d_losses).mean(), g_loss.detach()

    @torch.no_grad()
    def _update_ema(self) -> None:
        t = self.step
        decay = min(self.train_cfg.ema_decay, (1 + t) / (10 + t))
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.G.parameters()), 1 - decay)
        torch._foreach_copy_(list(self.ema.buffers()), list(self.G.buffers()))

    def _flush_losses(self) -> None:
        """Move pending per-step loss tensors into the running sums (one device sync)."""
        if self._pending:
            values = torch.stack([torch.stack(p) for p in self._pending]).tolist()
            for d, g in values:
                self._acc[0] += d
                self._acc[1] += g
                self._acc[2] += 1
            self._pending.clear()

    def _log_interval(self) -> tuple[float, float] | None:
        self._flush_losses()
        if not self._acc[2]:
            return None
        d, g = self._acc[0] / self._acc[2], self._acc[1] / self._acc[2]
        self.history.append([self.step, d, g])
        self._acc = [0.0, 0.0, 0]
        return d, g

    def _capture_global_rng(self) -> None:
        self._cpu_rng = torch.get_rng_state()
        if self.cuda:
            self._cuda_rng = torch.cuda.get_rng_state(self.device)

    def _restore_global_rng(self) -> None:
        torch.set_rng_state(self._cpu_rng)
        if self.cuda:
            if self._cuda_rng is None:
                torch.cuda.manual_seed(mix_seed(self.train_cfg.seed, TRAIN_STREAMS["torch_cuda"]))
            else:
                torch.cuda.set_rng_state(self._cuda_rng, self.device)

    def run(
        self,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        on_checkpoint: Callable[[int, dict[str, bytes]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Train up to ``train_cfg.steps`` steps (from the current step); see the module docstring.

        ``on_progress`` gets ``step, steps, d_loss, g_loss, images_per_s`` (means over the last
        ``log_every`` steps; images/s counts real images through D). ``on_checkpoint(step, files)``
        runs every ``checkpoint_every`` steps and at the end (also after a stop).
        """
        cfg = self.train_cfg
        start = time.perf_counter()
        stopped = False
        last_checkpoint = -1
        last = self.history[-1] if self.history else None
        devices = [self.device.index or 0] if self.cuda else []
        with torch.random.fork_rng(devices=devices):
            self._restore_global_rng()
            self.G.train()
            self.D.train()
            t_log, images = time.perf_counter(), 0
            while self.step < cfg.steps:
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                self._pending.append(self._train_step())
                self.step += 1
                images += cfg.batch_size * (cfg.n_dis or 1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    means = self._log_interval()
                    now = time.perf_counter()
                    if means is not None:
                        check_finite(self.step, {"d_loss": means[0], "g_loss": means[1]}, "lr_g / lr_d")
                        last = [self.step, *means]
                        if on_progress is not None:
                            on_progress(
                                dict(step=self.step, steps=cfg.steps, d_loss=means[0], g_loss=means[1],
                                     images_per_s=images / max(now - t_log, 1e-9))
                            )
                    t_log, images = now, 0
                if (
                    on_checkpoint is not None
                    and cfg.checkpoint_every
                    and self.step % cfg.checkpoint_every == 0
                    and self.step < cfg.steps
                ):
                    self._capture_global_rng()
                    on_checkpoint(self.step, self.checkpoint_files())
                    last_checkpoint = self.step
            self._capture_global_rng()
            if on_checkpoint is not None and last_checkpoint != self.step:
                on_checkpoint(self.step, self.checkpoint_files())
        return TrainResult(
            step=self.step,
            steps=cfg.steps,
            stopped=stopped,
            elapsed_s=time.perf_counter() - start,
            last={"d_loss": last[1], "g_loss": last[2]} if last else {},
        )

    # ----------------------------------------------------------------------------- checkpoints
    def samples_png(self) -> bytes:
        """Labelled grid from the EMA generator: one row per class, fixed noise (seed = train seed)."""
        k = self.train_cfg.samples_per_class
        labels = [c for c in range(self.gan_cfg.num_classes) for _ in range(k)]
        images = generate(self.ema, labels, self.train_cfg.seed, device=self.device).images
        return labelled_grid_png({name: images[c * k : (c + 1) * k] for c, name in enumerate(self.gan_cfg.classes)})

    def checkpoint_files(self) -> dict[str, bytes]:
        """The full training state as ``{file name: bytes}`` (see :data:`REQUIRED_FILES`, plus PNGs).
        Raises :class:`TrainingDiverged` rather than save a state whose losses since the last log are not
        finite (``checkpoint_every`` may be shorter than ``log_every``)."""
        self._flush_losses()
        check_finite(self.step, {"d_loss": self._acc[0], "g_loss": self._acc[1]}, "lr_g / lr_d")
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "step": self.step,
            "epoch": self.epoch,
            "pos": self.pos,
            "gan_config": self.gan_cfg.to_dict(),
            "train_config": self.train_cfg.to_dict(),
            "loss_history": self.history,
            "loss_acc": list(self._acc),
            "rng": {
                "trainer": ckpt.rng_to_str(self._gen.get_state()),
                "torch_cpu": ckpt.rng_to_str(self._cpu_rng),
                "torch_cuda": None if self._cuda_rng is None else ckpt.rng_to_str(self._cuda_rng),
            },
        }
        if self._dgen is not None:  # only on CUDA, so CPU checkpoints keep their exact bytes
            state["rng"]["trainer_cuda"] = ckpt.rng_to_str(self._dgen.get_state())  # type: ignore[index]
        return {
            "generator.safetensors": ckpt.tensors_to_bytes(self.G.state_dict()),
            "discriminator.safetensors": ckpt.tensors_to_bytes(self.D.state_dict()),
            "ema.safetensors": ckpt.tensors_to_bytes(self.ema.state_dict()),
            "optim.safetensors": ckpt.optimizers_to_bytes({"g": self.opt_g, "d": self.opt_d}),
            "state.json": json.dumps(state, indent=1).encode("utf-8"),
            "loss.png": loss_curve_png(self.history),
            "samples.png": self.samples_png(),
        }

    def load_checkpoint(self, files: Mapping[str, bytes]) -> None:
        """Restore a state written by :meth:`checkpoint_files`; validates everything before loading.

        Raises :class:`CheckpointError` for missing files, unparsable content, or a checkpoint of
        a different architecture / preset.
        """
        missing = [f for f in REQUIRED_FILES if f not in files]
        if missing:
            raise CheckpointError(f"checkpoint is incomplete: missing {', '.join(missing)}")
        state = ckpt.read_json("state.json", files["state.json"])
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ckpt.corrupt("state.json", f"not a {CHECKPOINT_FORMAT} state file")
        try:
            step, epoch, pos = int(state["step"]), int(state["epoch"]), int(state["pos"])
            gan_cfg, train_cfg = state["gan_config"], state["train_config"]
            history = [[int(h[0]), float(h[1]), float(h[2])] for h in state["loss_history"]]
            acc = [float(state["loss_acc"][0]), float(state["loss_acc"][1]), int(state["loss_acc"][2])]
            rng = state["rng"]
            trainer_rng = ckpt.rng_from_str("state.json", rng["trainer"])
            cpu_rng = ckpt.rng_from_str("state.json", rng["torch_cpu"])
            cuda_rng = ckpt.rng_from_str("state.json", rng["torch_cuda"]) if rng.get("torch_cuda") else None
            dgen_rng = ckpt.rng_from_str("state.json", rng["trainer_cuda"]) if rng.get("trainer_cuda") else None
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ckpt.corrupt("state.json", f"missing or invalid field ({exc!r})") from None
        if not isinstance(gan_cfg, dict) or not isinstance(train_cfg, dict):
            raise ckpt.corrupt("state.json", "configs must be JSON objects")
        ckpt.check_config("state.json", gan_cfg, self.gan_cfg.to_dict())
        if train_cfg.get("preset") != self.train_cfg.preset:
            raise CheckpointError(
                f"checkpoint does not match the model: state.json: training preset {train_cfg.get('preset')!r}, "
                f"expected {self.train_cfg.preset!r}"
            )
        if step < 0 or epoch < 0 or not 0 <= pos <= self._images.shape[0]:
            raise ckpt.corrupt("state.json", f"invalid position step={step} epoch={epoch} pos={pos}")
        modules = {"generator.safetensors": self.G, "discriminator.safetensors": self.D, "ema.safetensors": self.ema}
        tensors = {}
        for name, module in modules.items():
            tensors[name] = ckpt.bytes_to_tensors(name, files[name])
            ckpt.check_state_dict(name, module, tensors[name])
        ckpt.load_optimizers("optim.safetensors", files["optim.safetensors"], {"g": self.opt_g, "d": self.opt_d})
        for name, module in modules.items():
            ckpt.load_state_dict(name, module, tensors[name])
        try:
            self._gen.set_state(trainer_rng)
            torch.Generator().set_state(cpu_rng)  # validate before keeping it
            if self._dgen is not None and dgen_rng is not None:  # a CPU checkpoint keeps the seeded stream
                self._dgen.set_state(dgen_rng)
        except (RuntimeError, ValueError) as exc:
            raise ckpt.corrupt("state.json", f"bad RNG state ({exc})") from None
        self._cpu_rng, self._cuda_rng = cpu_rng, (cuda_rng if self.cuda else None)
        self.step, self.epoch, self.pos = step, epoch, pos
        self.history, self._acc = history, acc
        self._perm = None
        self._pending.clear()

    def export(self) -> tuple[bytes, dict[str, Any]]:
        """The EMA generator as safetensors bytes plus its JSON metadata (see ``pretrained``), with
        ``standing_stats`` batches of BatchNorm standing statistics (``sampling.standing_statistics``)."""
        cfg = self.train_cfg
        G = self.ema
        if cfg.standing_stats:
            G = standing_statistics(self.ema, len(self.gan_cfg.classes), batches=cfg.standing_stats, batch_size=cfg.batch_size,
                                    seed=mix_seed(cfg.seed, TRAIN_STREAMS["standing_stats"], self.step), device=self.device)
        return save_generator(G, self.gan_cfg, step=self.step, train_config=cfg.to_dict())
