"""Moving a model into another frame (`Similarity`, `Gaussians.transformed`): the rotated SH must give the colour
of the original direction, and a transformed model seen from the moved camera must render the same picture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from splatkit.data.cameras import Camera
from splatkit.data.scene import Similarity
from splatkit.model.gaussians import Gaussians
from splatkit.model.sh import sh_rotation
from splatkit.render import rasterize
from splatkit.render.sh import eval_sh
from splatkit.train.metrics import psnr

TURN = Rotation.from_rotvec([0.4, -1.1, 2.0]).as_matrix()


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_rotated_sh_gives_the_colour_of_the_unrotated_direction(degree):
    g = torch.Generator().manual_seed(degree)
    coeffs = torch.randn(5, (degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)
    rotated = coeffs.clone()
    rotated[:, 1:] = torch.einsum("kj,njc->nkc", sh_rotation(TURN, degree), coeffs[:, 1:])
    # c'(R d) = c(d): the rotated field seen along the turned direction is the original one.
    turned = dirs @ torch.as_tensor(TURN).T
    torch.testing.assert_close(eval_sh(degree, turned, rotated), eval_sh(degree, dirs, coeffs), atol=1e-10, rtol=0)
    assert not torch.allclose(eval_sh(degree, turned, coeffs), eval_sh(degree, dirs, coeffs), atol=1e-3)


def test_similarity_inverse_composition_and_json():
    t = Similarity(2.5, np.array([1.0, -2.0, 0.5]), TURN)
    u = Similarity(0.3, np.array([0.2, 0.1, -4.0]), Rotation.from_rotvec([0.0, 0.3, 0.0]).as_matrix())
    x = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_allclose(t.inverse().apply_points(t.apply_points(x)), x, atol=1e-5)
    np.testing.assert_allclose(t.then(u).apply_points(x), u.apply_points(t.apply_points(x)), atol=1e-5)
    back = Similarity.from_json(t.to_json())
    np.testing.assert_allclose(back.apply_points(x), t.apply_points(x), atol=1e-6)
    assert "rotation" not in Similarity(2.0, np.zeros(3)).to_json()  # older run folders stay as they were


@pytest.mark.parametrize("sim", [Similarity(1.0, np.array([0.3, -0.2, 0.1]), TURN),
                                 Similarity(0.5, np.array([-1.0, 0.0, 2.0]), TURN.T),
                                 Similarity(3.0, np.array([0.5, 0.5, 0.5]))])
def test_transformed_model_renders_the_same_from_the_moved_camera(sim):
    g = torch.Generator().manual_seed(1)
    n = 300
    model = Gaussians(means=torch.randn(n, 3, generator=g) * 0.6, scales=torch.randn(n, 3, generator=g) * 0.3 - 2.5,
                      quats=torch.randn(n, 4, generator=g), opacities=torch.randn(n, generator=g) + 1,
                      sh0=torch.randn(n, 1, 3, generator=g) * 0.5, shN=torch.randn(n, 15, 3, generator=g) * 0.3)
    camera = Camera.from_pose("c", Rotation.from_rotvec([0.1, 0.2, 0.0]).as_matrix(), np.array([0.2, -0.1, -3.0]),
                              math.radians(50.0), 64, 48)
    moved = Camera("m", 64, 48, camera.K, sim.apply_camera(camera.world_to_cam))
    before = rasterize(model, camera, backend="torch").rgb
    after = rasterize(model.transformed(sim), moved, backend="torch").rgb
    assert float(before.std()) > 0.05  # a picture worth comparing
    assert psnr(after, before) > 60.0  # measured 132-136 dB
    if not np.array_equal(sim.rotation, np.eye(3)):  # rotating SH matters: without it the colours differ
        unrotated = model.transformed(sim)
        unrotated.shN = model.shN
        wrong = psnr(rasterize(unrotated, moved, backend="torch").rgb, before)
        print(f"transformed {psnr(after, before):.1f} dB, SH not rotated {wrong:.1f} dB")
        assert wrong < 45.0
