"""What the format tests share: random models that reach past what formats hold, comparisons in the quantities
formats quantise (alpha, rotation angle), the smallest-three rotation bound, derived once, and the check that a
bad file gets one line naming it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splatkit.errors import SplatkitError
from splatkit.io.formats import read_splats
from splatkit.model.gaussians import Gaussians

F32 = 2.0**-24  # relative rounding of a float32
EPS = 1e-6  # float32 slack on values of order 1 (quaternion components, alpha, rgb, SH)


def random_gaussians(n, degree, seed=0, spread=10.0):
    """Random raw parameters, some beyond what the quantised formats can hold (rgb outside [0, 1], |SH| > 1)."""
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(n, 3, generator=g) * spread,
        scales=torch.randn(n, 3, generator=g) * 1.5 - 3,
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g) * 3,
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g) * 0.4,
    )


def as_np(t):
    return t.detach().double().numpy()


def alpha(g):
    return 1.0 / (1.0 + np.exp(-as_np(g.opacities)))


def angle(q1, q2):
    """Rotation angle between quaternions, 4 asin(chord / 2) (accurate for tiny angles, unlike acos of a dot)."""
    a, b = as_np(q1), as_np(q2)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    b = b * np.where(np.sum(a * b, axis=1) < 0, -1.0, 1.0)[:, None]
    return 4.0 * np.arcsin(np.minimum(np.linalg.norm(a - b, axis=1) / 2.0, 1.0))


def smallest_three_angle(e):
    """Largest rotation error when the three smallest components v of a unit quaternion are each off by <= e and
    the largest, L >= 1/2, is rebuilt as sqrt(1 - |v'|^2): |dL| = ||v|^2 - |v'|^2| / (L + L') <= e (2 sum|v| + 3e)
    / (1/2) with sum|v| <= sqrt(3 (1 - L^2)) <= 1.5, so the 4D chord is at most sqrt(3 e^2 + dL^2)."""
    dl = 2.0 * e * (3.0 + 3.0 * e)
    return 4.0 * math.asin(math.sqrt(3.0 * e * e + dl * dl) / 2.0)


def assert_within(got, want, bound, what):
    """Every |got - want| is at most `bound` (broadcast); the message names the worst element. Returns the largest
    error."""
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    bound = np.broadcast_to(bound, err.shape)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"
    return float(err.max())


def expect_error(path, *words, reader=read_splats):
    """`reader(path)` raises one line that starts with the path and holds every one of `words`; returns it."""
    with pytest.raises(SplatkitError) as info:
        reader(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for w in words:
        assert w in message, message
    return message
