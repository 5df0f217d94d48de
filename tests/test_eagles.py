"""EAGLES quantized latents (Girish et al. 2024) and coarse-to-fine: the straight-through estimator, the DCT
decoder basis against scipy's DCT, latents and their Adam moments through every edit strategies make, the
latents' learning rate rule, influence pruning, the resolution schedule's closed form, and the --quantize
preset on the command line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch

from splatkit.cli import parse
from splatkit.data.cameras import Camera
from splatkit.model.gaussians import init_from_points
from splatkit.model.quantized import dct_basis, round_ste
from splatkit.render import RenderOutput
from splatkit.train.coarse_to_fine import downsampled, resolution_scale
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.learning_rates import LearningRates
from splatkit.train.parameterisations import EaglesQuantized
from splatkit.train.plugin import SetupContext, StepInfo, View
from splatkit.train.strategies import ADCStrategy, MCMCStrategy, ops


def test_straight_through_rounds_forward_and_passes_gradients_unchanged():
    z = torch.tensor([-2.5, -1.49, -0.2, 0.5, 0.51, 3.7], requires_grad=True)
    weights = torch.arange(1.0, 7.0)
    rounded = round_ste(z)
    assert torch.equal(rounded.detach(), torch.round(z.detach()))
    (weights * rounded.square()).sum().backward()
    # d/dz of w * round(z)^2 through the estimator is w * 2 round(z): the gradient at the rounded value.
    torch.testing.assert_close(z.grad, weights * 2 * torch.round(z.detach()), rtol=0, atol=0)


def test_dct_basis_is_scipys_orthonormal_dct_ii():
    reference = scipy.fft.dct(np.eye(45), type=2, norm="ortho", axis=0)  # rows: frequencies, columns: samples
    basis = dct_basis(16, 45).double().numpy()
    np.testing.assert_allclose(basis, reference[:, :16].T, atol=1e-6)
    np.testing.assert_allclose(basis @ basis.T, np.eye(16), atol=1e-6)


def _model(n: int = 200, seed: int = 0, coded=("shN", "quats", "opacities")) -> tuple[GaussianModel, EaglesQuantized]:
    rng = np.random.default_rng(seed)
    init = init_from_points(rng.normal(size=(n, 3)), rng.uniform(size=(n, 3)), sh_degree=3)
    parameterisation = EaglesQuantized(coded=coded)
    model = GaussianModel(parameterisation)
    parameterisation.create(model, init, LearningRates(), scene_extent=1.0)
    with torch.no_grad():  # SH rest away from zero, so rows can be told apart
        model.params["shN_latents"].copy_(torch.randint(-8, 9, (n, 16)).float())
    return model, parameterisation


def _take_adam_step(model: GaussianModel) -> None:
    g = model.activated()
    (g.means.sum() + g.sh.square().sum() + g.opacities.sum() + g.quats.sum() + g.scales.sum()).backward()
    model.step()


def test_decoders_are_shared_and_latents_start_at_the_initial_values():
    model, parameterisation = _model()
    assert model.params["shN_decoder"].shape == (1, 45) and model.params["shN_bias"].shape == (45,)
    assert model.params["quats_decoder"].shape == (8, 4) and model.params["opacities_decoder"].shape == (1, 1)
    assert set(model.per_gaussian()) >= {"means", "scales", "sh0", "shN_latents", "quats_latents",
                                         "opacities_latents"}
    assert "shN_decoder" not in model.per_gaussian() and "quats" not in model.params
    # Opacity 1 -> 1: the nearest integer latent decodes within half a step |w| of logit(0.1).
    g = model.gaussians()
    step = float(model.params["opacities_decoder"].detach().abs())
    assert (g.opacities - math.log(0.1 / 0.9)).abs().max() <= 0.5 * step + 1e-6


@pytest.mark.parametrize("edit", ["clone", "split", "prune", "relocate", "grow", "reset"])
def test_latents_and_their_adam_moments_follow_every_edit(edit):
    model, parameterisation = _model()
    _take_adam_step(model)
    before = {k: v.detach().clone() for k, v in model.params.items()}
    moments = {k: model.optimizers[k].state[model.params[k]]["exp_avg"].clone() for k in model.optimizers}
    decoded = model.gaussians()
    n = len(model)
    generator = torch.Generator().manual_seed(1)
    selected = torch.zeros(n, dtype=torch.bool)
    selected[::7] = True
    if edit == "clone":
        ops.duplicate(model, selected)
        origin = torch.cat([torch.arange(n), selected.nonzero()[:, 0]])
    elif edit == "split":
        ops.split(model, selected, generator)
        kept = (~selected).nonzero()[:, 0]
        origin = torch.cat([kept, selected.nonzero()[:, 0].repeat(2)])
    elif edit == "prune":
        ops.remove(model, selected)
        origin = (~selected).nonzero()[:, 0]
    elif edit == "relocate":
        ops.relocate_dead(model, selected, generator)
        origin = None
    elif edit == "grow":
        ops.add_by_opacity(model, 30, generator)
        origin = None
    else:
        ops.reset_opacities(model, 0.01, selected)
        origin = torch.arange(n)
    for name in ("shN_decoder", "shN_bias", "quats_decoder", "opacities_decoder"):  # shared: never edited
        assert torch.equal(model.params[name], before[name])
    for name in model.per_gaussian():
        if name in model.params:
            assert model.params[name].shape[0] == len(model), name
            state = model.optimizers[name].state[model.params[name]]
            assert state["exp_avg"].shape == model.params[name].shape, name
    after = model.gaussians()
    if edit in ("clone", "split", "prune"):
        # Every row's latents (hence its decoded SH rest and rotation) come from its origin.
        for name in ("shN_latents", "quats_latents"):
            assert torch.equal(model.params[name].detach(), before[name][origin])
        torch.testing.assert_close(after.shN, decoded.shN[origin])
        new = torch.arange(len(model)) >= (n if edit == "clone" else len(kept) if edit == "split" else len(model))
        moment = model.optimizers["shN_latents"].state[model.params["shN_latents"]]["exp_avg"]
        assert torch.equal(moment[~new], moments["shN_latents"][origin[~new]]) and not moment[new].any()
    if edit == "split":
        # Each child is the parent's size / 1.6 (scales are plain floats here).
        torch.testing.assert_close(after.scales[len(kept):], decoded.scales[origin[len(kept):]] - math.log(1.6))
    if edit == "reset":
        # Opacity through the 1 -> 1 decoder: the nearest integer latent to logit(0.01), half a step away at most.
        step = float(model.params["opacities_decoder"].detach().abs())
        lowered = selected & (decoded.activated_opacities > 0.01)
        assert (after.opacities[lowered] - math.log(0.01 / 0.99)).abs().max() <= 0.5 * step + 1e-5
        assert torch.equal(after.opacities[~selected], decoded.opacities[~selected])
    if edit in ("relocate", "grow"):
        assert len(model) == n + (30 if edit == "grow" else 0)


def test_latent_rate_is_a_tenth_of_the_attribute_rate_over_the_decoder_norm(tiny_scene):
    model, parameterisation = _model()
    lr = LearningRates()
    ctx = SetupContext(None, None, model, tiny_scene, 100, 1.0, 0, False, lr=lr)
    state = parameterisation.setup(ctx)
    with torch.no_grad():
        model.params["shN_decoder"].mul_(3.0)
    parameterisation.post_backward(model, state, StepInfo(0, 1000, [], [], None, 1.0))
    expected = 0.1 * lr.shN / float(model.params["shN_decoder"].detach().norm())
    assert math.isclose(model.learning_rate("shN_latents"), expected, rel_tol=1e-6)
    # Opacity's rate is not divided (the reference's `latent_scale_norm: none` for opacity).
    assert math.isclose(model.learning_rate("opacities_latents"), 0.1 * lr.opacities, rel_tol=1e-6)


def test_influence_pruning_removes_the_least_influential_fraction_on_its_schedule(tiny_scene):
    model, parameterisation = _model(n=100)
    ctx = SetupContext(None, None, model, tiny_scene, 1000, 1.0, 0, False)
    state = parameterisation.setup(ctx)
    assert sorted(state["_prune_steps"]) == [170, 340, 510, 680, 850]  # 5,100 of 30,000, until 27,000
    influence = torch.randperm(100).float()
    tags = model.params["means"].detach().clone()

    def step(i: int) -> None:
        render = RenderOutput(None, None, None, None, None, weight_sums=influence[:len(model)])
        info = StepInfo(i, 1000, [View(None, 0, 0, None, render)], [0], None, 1.0)
        parameterisation.post_backward(model, state, info)
        model.fold_statistics(lambda pending: None)
        parameterisation.after_step(model, state, info)

    step(169)
    assert len(model) == 100
    step(170)  # the sums of two renders: each Gaussian's rank is its influence's
    kept = influence >= 15
    assert len(model) == 85 and torch.equal(model.params["means"].detach(), tags[kept])
    logged = parameterisation.log(model, state)
    assert not model.buffers["influence"].any() and logged.pop("influence_pruned") == 15
    # Beside it, each decoder's weight norm (what the latents' rate is divided by).
    assert logged == {f"{name}_decoder_norm": float(model.params[f"{name}_decoder"].detach().norm())
                      for name in parameterisation.coded}


def test_coarse_to_fine_schedule_is_the_reference_cosine():
    assert resolution_scale(0, 1000, 0.3, 0.7) == pytest.approx(0.3)
    assert resolution_scale(350, 1000, 0.3, 0.7) == pytest.approx(0.65)  # half way: cos(pi/2) = 0
    assert resolution_scale(175, 1000, 0.3, 0.7) == pytest.approx(1 - 0.35 * (1 + math.cos(math.pi / 4)))
    assert resolution_scale(700, 1000, 0.3, 0.7) == 1.0 and resolution_scale(999, 1000, 0.3, 0.7) == 1.0
    values = [resolution_scale(s, 1000, 0.3, 0.7) for s in range(0, 1000, 10)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_a_downsampled_view_projects_points_where_the_full_one_does_scaled():
    camera = Camera.from_pose("c", np.eye(3), np.array([0.0, 0.0, -4.0]), math.radians(50), 160, 120)
    small, target, keep = downsampled(camera, torch.full((120, 160, 3), 0.25), None, 0.3)
    assert (small.width, small.height) == (48, 36) and keep is None
    assert torch.allclose(target, torch.tensor(0.25)) and target.shape == (36, 48, 3)
    point = np.array([0.3, -0.2, 1.0, 1.0])

    def project(cam: Camera) -> np.ndarray:
        x = (cam.world_to_cam @ point)[:3]
        uv = cam.K @ (x / x[2])
        return uv[:2]

    np.testing.assert_allclose(project(small), project(camera) * [48 / 160, 36 / 120], rtol=1e-12)
    mask = torch.ones(120, 160, 1, dtype=torch.bool)
    mask[:, 80:] = False  # a pixel of the small view is kept only when its whole footprint was
    _, _, small_keep = downsampled(camera, torch.zeros(120, 160, 3), mask, 0.3)
    columns = small_keep[0, :, 0]
    assert columns[:22].all() and not columns[24:].any()


def test_quantize_preset_sets_defaults_that_flags_override():
    cfg = parse(["train", "demo", "--quantize", "--steps", "7000"])
    assert isinstance(cfg.parameterisation, EaglesQuantized) and cfg.coarse_to_fine
    assert (cfg.strategy.refine_every, cfg.strategy.refine_until, cfg.strategy.reset_every) == (125, 0.6, 2500)
    assert cfg.strategy.refine_end(7000) == 4200
    cfg = parse(["train", "demo", "--quantize", "--no-coarse-to-fine", "strategy:mcmc", "--strategy.cap-max", "9"])
    assert isinstance(cfg.strategy, MCMCStrategy) and cfg.strategy.cap_max == 9 and not cfg.coarse_to_fine
    cfg = parse(["train", "demo", "--quantize", "strategy:adc", "--strategy.refine-every", "50"])
    assert isinstance(cfg.strategy, ADCStrategy) and cfg.strategy.refine_every == 50
    plain = parse(["train", "demo"])
    assert plain.parameterisation.name == "3dgs" and not plain.coarse_to_fine and plain.strategy.refine_every == 100


def test_preset_plugin_flags_need_no_subcommand_name():
    cfg = parse(["train", "demo", "--quantize", "--strategy.refine-every", "50",
                 "--parameterisation.no-influence-prune"])
    assert isinstance(cfg.parameterisation, EaglesQuantized) and not cfg.parameterisation.influence_prune
    assert cfg.strategy.refine_every == 50 and cfg.strategy.refine_until == 0.6 and cfg.coarse_to_fine
