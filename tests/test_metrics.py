"""SSIM and PSNR against independent computations."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from splatkit.train.metrics import psnr, ssim


def _ssim_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. SSIM with scipy's Gaussian filter (sigma 1.5, radius 5), scored on full windows only."""
    c1, c2 = 0.01**2, 0.03**2
    scores = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)

        def f(t):
            return gaussian_filter(t, 1.5, truncate=5 / 1.5)[5:-5, 5:-5]

        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        scores.append(s)
    return float(np.mean(scores))


def test_ssim_matches_scipy_reference():
    rng = np.random.default_rng(0)
    a = rng.random((40, 50, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    ours = float(ssim(torch.from_numpy(a), torch.from_numpy(b)))
    assert abs(ours - _ssim_scipy(a, b)) < 1e-4
    assert 0.2 < ours < 0.95


def test_ssim_identity_and_psnr_analytic():
    a = torch.rand(20, 20, 3)
    assert abs(float(ssim(a, a)) - 1.0) < 1e-5
    b = (a * 0 + 0.5)
    c = b + 0.1
    assert abs(psnr(b, c) - (-10 * math.log10(0.01))) < 1e-4
