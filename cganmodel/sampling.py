"""Deterministic batch generation from a conditional generator, with optional classifier filtering."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cganmodel.devices import module_device
from cganmodel.imaging import nhwc_to_input, to_uint8
from cganmodel.seeding import round_seed

#: A class keeps being redrawn until it has been sampled this many times its requested count.
MAX_CANDIDATES_PER_IMAGE = 50
MAX_ROUNDS = 200


class GenerationError(RuntimeError):
    """Generation could not produce what was asked (e.g. classifier filtering never filled a class)."""


@dataclass
class Generated:
    images: np.ndarray  # uint8 (N, H, W, 3), in the order of the requested labels
    labels: np.ndarray  # int64 (N,)
    stats: dict[int, dict[str, int]] = field(default_factory=dict)  # {class: {"generated", "accepted"}}


MAX_NOISE_REDRAWS = 2000  # redraw rounds of sample_noise before a truncation is judged too small


def sample_noise(n: int, z_dim: int, gen: torch.Generator, truncation: float | None = None) -> torch.Tensor:
    """``n`` standard-normal latents; with ``truncation``, entries with ``|z| > truncation`` are redrawn.

    Each round redraws every entry still outside ``[-truncation, truncation]``; a round keeps a fresh
    draw with probability ``p = erf(truncation / sqrt(2))``, so about ``ln(n * z_dim) / p`` rounds are
    needed. A truncation that would need more than ``MAX_NOISE_REDRAWS`` rounds is refused at once
    (``GenerationError``), and the loop itself stops there too: it can never spin forever.
    """
    z = torch.randn(n, z_dim, generator=gen)
    if truncation is not None:
        keep = math.erf(truncation / math.sqrt(2.0))
        needed = math.log(max(n * z_dim, 2)) / keep if keep > 0 else math.inf
        if needed > MAX_NOISE_REDRAWS:
            raise GenerationError(
                f"truncation {truncation:g} is too small: a draw lands inside it with probability {keep:.2g}, "
                f"so about {needed:.3g} redraw rounds would be needed (at most {MAX_NOISE_REDRAWS}); use a larger truncation"
            )
        for _ in range(MAX_NOISE_REDRAWS):
            bad = z.abs() > truncation
            count = int(bad.sum())
            if count == 0:
                break
            z[bad] = torch.randn(count, generator=gen)
        else:
            raise GenerationError(f"truncation {truncation:g} is too small: noise still outside it after {MAX_NOISE_REDRAWS} redraw rounds")
    return z


def standing_statistics(G: nn.Module, num_classes: int, *, batches: int, batch_size: int, seed: int,
                        device: str | torch.device = "cpu") -> nn.Module:
    """A copy of ``G`` whose BatchNorm running statistics are recomputed with its own weights: the
    cumulative average over ``batches`` forward passes of ``batch_size`` standard-normal latents and uniform
    labels drawn from ``torch.Generator().manual_seed(seed)`` (BigGAN's "standing statistics"). An EMA
    generator needs this: its weights are an average, but its BatchNorm buffers are the raw G's."""
    G = copy.deepcopy(G)
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    gen = torch.Generator().manual_seed(seed)
    z_dim = int(G.z_dim)  # type: ignore[arg-type]
    G.train()
    with torch.no_grad():
        for _ in range(batches):
            z = sample_noise(batch_size, z_dim, gen)
            y = torch.randint(0, num_classes, (batch_size,), generator=gen)
            G(z.to(device), y.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return G.eval()


def average_parameters(models: Sequence[nn.Module]) -> nn.Module:
    """A copy of ``models[0]`` whose parameters are the element-wise mean of the ``models``' parameters
    (snapshots of one training run: weight averaging over a longer window than its EMA). Buffers stay the
    first model's: recompute BatchNorm statistics for the averaged weights with :func:`standing_statistics`."""
    if not models:
        raise ValueError("no models to average")
    named = [dict(m.named_parameters()) for m in models]
    if any(n.keys() != named[0].keys() or any(n[k].shape != v.shape for k, v in named[0].items()) for n in named):
        raise ValueError("the models to average do not have the same parameters")
    out = copy.deepcopy(models[0])
    with torch.no_grad():
        for name, p in out.named_parameters():
            p.copy_(torch.stack([n[name].detach().double() for n in named]).mean(0).to(p.dtype))
    return out


def generate(
    G: nn.Module,
    labels: Sequence[int],
    seed: int,
    *,
    truncation: float | None = None,
    classifier: nn.Module | None = None,
    min_confidence: float | None = None,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    on_batch: Callable[[int], None] | None = None,
    class_names: Sequence[str] | None = None,
) -> Generated:
    """Generate one image per entry of ``labels``.

    All round-0 noise is drawn up front from ``torch.Generator().manual_seed(seed)``, so the result
    does not depend on how the work is batched (beyond floating-point kernel choices). With
    ``classifier`` and ``min_confidence``, an image is kept only if the classifier gives its own label
    probability >= ``min_confidence`` (judged on the delivered uint8 image); rejected positions are
    refilled in further rounds whose noise comes from ``round_seed(seed, round)``, drawn per class in
    class order. Each round oversamples a class by its observed acceptance rate. ``stats`` counts,
    per class, all candidates ``generated`` and those ``accepted`` (passing the threshold, including
    surplus ones of the last round). Raises :class:`GenerationError` when a class is still unfilled
    after ``MAX_CANDIDATES_PER_IMAGE`` x its count candidates or ``MAX_ROUNDS`` rounds.

    ``G`` (and ``classifier``) are moved to ``device`` if needed and run in eval mode; their
    training flags are restored afterwards. ``on_batch(n_done)`` is called after each batch with the
    number of positions filled so far. ``class_names`` (indexed by label) name the classes in errors.
    """
    z_dim = int(G.z_dim)  # type: ignore[arg-type]
    num_classes = int(G.num_classes)  # type: ignore[arg-type]
    y_all = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1))
    n = len(y_all)
    if n and (int(y_all.min()) < 0 or int(y_all.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got {int(y_all.min())}..{int(y_all.max())}")
    if truncation is not None and not truncation > 0:
        raise ValueError(f"truncation must be positive, got {truncation}")
    if (classifier is None) != (min_confidence is None):
        raise ValueError("classifier and min_confidence must be given together")
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    device = torch.device(device)
    size = int(G.image_size)  # type: ignore[arg-type]

    modules = [m for m in (G, classifier) if m is not None]
    was_training = [m.training for m in modules]
    for m in modules:
        if module_device(m) not in (None, device):
            m.to(device)
        m.eval()

    images = torch.zeros(n, size, size, 3, dtype=torch.uint8)
    filled = torch.zeros(n, dtype=torch.bool)
    stats = {c: {"generated": 0, "accepted": 0} for c in sorted(set(y_all.tolist()))}
    n_filled = 0

    def run(z: torch.Tensor, y: torch.Tensor, free: dict[int, torch.Tensor] | None) -> None:
        """Generate candidates for ``y`` and place the accepted ones.

        Round 0 (``free is None``): candidate i belongs to position i. Later rounds: accepted
        candidates fill their class's free positions (``free[c]``, ascending) in draw order.
        """
        nonlocal n_filled
        for start in range(0, len(y), batch_size):
            zb, yb = z[start : start + batch_size], y[start : start + batch_size]
            out = to_uint8(G(zb.to(device), yb.to(device)))
            if classifier is None:
                ok = torch.ones(len(yb), dtype=torch.bool)
            else:
                x = nhwc_to_input(out, device)
                probs = torch.softmax(classifier(x).float(), dim=1).cpu()
                ok = probs[torch.arange(len(yb)), yb] >= float(min_confidence or 0.0)
            for c in yb.unique().tolist():
                sel = yb == c
                stats[c]["generated"] += int(sel.sum())
                stats[c]["accepted"] += int((sel & ok).sum())
            if free is None:
                src = torch.nonzero(ok).flatten()
                dst = src + start
            else:
                src_parts, dst_parts = [], []
                for c in yb.unique().tolist():
                    acc = torch.nonzero(ok & (yb == c)).flatten()
                    k = min(len(acc), len(free[c]))
                    src_parts.append(acc[:k])
                    dst_parts.append(free[c][:k])
                    free[c] = free[c][k:]
                src, dst = torch.cat(src_parts), torch.cat(dst_parts)
            images[dst] = out[src]
            filled[dst] = True
            n_filled += len(dst)
            if on_batch is not None:
                on_batch(n_filled)

    try:
        with torch.inference_mode():
            z0 = sample_noise(n, z_dim, torch.Generator().manual_seed(seed), truncation)
            run(z0, y_all, None)
            round_index = 0
            while not bool(filled.all()):
                round_index += 1
                todo = {c: torch.nonzero(~filled & (y_all == c)).flatten() for c in stats}
                todo = {c: p for c, p in todo.items() if len(p)}
                over = [
                    c
                    for c in todo
                    if stats[c]["generated"] >= MAX_CANDIDATES_PER_IMAGE * int((y_all == c).sum())
                ]
                if over or round_index > MAX_ROUNDS:
                    detail = ", ".join(
                        f"{class_names[c] if class_names else f'class {c}'}: {stats[c]['accepted']} of {stats[c]['generated']} candidates accepted, "
                        f"{len(todo[c])} still missing"
                        for c in sorted(todo)
                    )
                    raise GenerationError(
                        f"could not reach min_confidence={min_confidence} after {round_index - 1} "
                        f"redraw rounds ({detail})"
                    )
                gen = torch.Generator().manual_seed(round_seed(seed, round_index))
                zs, ys = [], []
                for c, pos in sorted(todo.items()):
                    rate = max(stats[c]["accepted"], 1) / max(stats[c]["generated"], 1)
                    k = min(math.ceil(len(pos) / rate * 1.2), 20 * len(pos) + 16)
                    zs.append(sample_noise(k, z_dim, gen, truncation))
                    ys.append(torch.full((k,), c, dtype=torch.int64))
                run(torch.cat(zs), torch.cat(ys), todo)
    finally:
        for m, flag in zip(modules, was_training):
            m.train(flag)
    return Generated(images=images.numpy(), labels=y_all.numpy(), stats=stats)
