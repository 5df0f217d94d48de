"""SSIM and PSNR against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from splatkit.train.metrics import ignore_masked, photometric_loss, psnr, ssim


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


def test_masked_ssim_and_psnr_score_only_kept_pixels():
    """Masked SSIM is the mean of the (scipy) SSIM map over windows centred on kept pixels; masked PSNR is the
    closed form over kept pixels."""
    rng = np.random.default_rng(1)
    a = rng.random((40, 50, 3)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1).astype(np.float32)
    keep = np.zeros((40, 50, 1), bool)
    keep[5:30, 12:44] = True
    c1, c2, maps = 0.01**2, 0.03**2, []
    for ch in range(3):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)

        def f(t):
            return gaussian_filter(t, 1.5, truncate=5 / 1.5)[5:-5, 5:-5]

        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        maps.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    expected = np.stack(maps)[:, keep[5:-5, 5:-5, 0]].mean()
    ta, tb, tk = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(keep)
    assert abs(float(ssim(ta, tb, tk)) - expected) < 1e-4
    mse = float(((a - b) ** 2)[keep[..., 0]].mean())
    assert psnr(ta, tb, tk) == pytest.approx(-10 * math.log10(mse), abs=1e-4)


def test_masked_loss_ignores_the_masked_photo_and_sends_no_gradient_there():
    rng = np.random.default_rng(2)
    render = torch.tensor(rng.random((30, 40, 3)), dtype=torch.float32, requires_grad=True)
    target = torch.tensor(rng.random((30, 40, 3)), dtype=torch.float32)
    keep = torch.ones(30, 40, 1, dtype=torch.bool)
    keep[10:20, 5:25] = False
    noisy = target.clone()
    noisy[10:20, 5:25] = torch.rand(10, 20, 3)

    def loss(photo):
        scored, truth = ignore_masked(render, photo, keep)
        return photometric_loss(scored, truth, keep, 0.2)[0]

    value = loss(target)
    assert loss(noisy).item() == value.item()  # the masked region's content does not matter at all
    value.backward()
    assert float(render.grad[10:20, 5:25].abs().max()) == 0.0
    assert float(render.grad[keep[..., 0]].abs().min()) > 0.0
    # L1 is a mean over kept pixels: a uniform error e there gives exactly e (ssim_lambda 0).
    flat = torch.zeros(30, 40, 3)
    scored, truth = ignore_masked(flat + 0.25 * keep, flat, keep)
    loss, psnr = photometric_loss(scored, truth, keep, 0.0)
    assert float(loss) == pytest.approx(0.25) and psnr == pytest.approx(-10 * math.log10(0.25**2))
