"""Small statistics used by several lessons: map normalisation, IoU, AUROC, intervals, correlation."""
from __future__ import annotations

import numpy as np

from .validate import ArgumentError


def minmax(m: np.ndarray) -> np.ndarray:
    """Map rescaled to [0, 1] (a constant map becomes zeros)."""
    m = np.asarray(m, np.float64)
    lo, hi = m.min(), m.max()
    return np.zeros_like(m) if hi - lo < 1e-12 else (m - lo) / (hi - lo)


def upsample(m: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of an (h, w) map to (size, size)."""
    import torch

    t = torch.from_numpy(np.asarray(m, np.float64))[None, None]
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def iou(pred: np.ndarray, mask: np.ndarray) -> float:
    pred, mask = np.asarray(pred, bool), np.asarray(mask, bool)
    union = (pred | mask).sum()
    return float((pred & mask).sum() / union) if union else 1.0


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties counted half): the chance
    that a pixel inside the mask scores higher than one outside. 0.5 = no better than chance."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    n_pos, n_neg = y.sum(), (~y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (scipy's ``binomtest(...).proportion_ci``); (0, 1)
    when n = 0."""
    if n == 0:
        return (0.0, 1.0)
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def bootstrap_ci(statistic, n_items: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of ``statistic(indices)`` over items resampled with replacement.
    Written here rather than with ``scipy.stats.bootstrap`` because resamples whose statistic is
    undefined (a correlation over a constant resample) must be dropped, which scipy cannot do: one
    NaN resample makes its whole interval NaN."""
    rng = np.random.default_rng(seed)
    vals = [statistic(rng.integers(0, n_items, n_items)) for _ in range(n_boot)]
    vals = np.asarray([v for v in vals if np.isfinite(v)])
    a = (1 - level) / 2
    return (float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a)))


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5, data_range: float = 255.0) -> float:
    """Structural similarity (Wang et al. 2004, Gaussian window σ = ``sigma`` px, K1 = 0.01,
    K2 = 0.03) of two images (H, W) or (H, W, C), averaged over all pixels and channels; 1 = identical.
    Written here rather than taken from scikit-image, whose ``structural_similarity`` averages only
    pixels at least (window − 1)/2 = 5 px from the border: on a 32-px image that drops 53 % of the
    pixels, where the toy world puts objects (left, right, top, bottom)."""
    from scipy.ndimage import gaussian_filter

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ArgumentError(f"ssim needs images of one shape, got {a.shape} and {b.shape}")
    if a.ndim == 3:
        return float(np.mean([ssim(a[..., c], b[..., c], sigma, data_range) for c in range(a.shape[2])]))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = gaussian_filter(a, sigma), gaussian_filter(b, sigma)
    var_a = gaussian_filter(a * a, sigma) - mu_a**2
    var_b = gaussian_filter(b * b, sigma) - mu_b**2
    cov = gaussian_filter(a * b, sigma) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
