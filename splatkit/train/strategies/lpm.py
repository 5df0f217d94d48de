"""Localized points management, LPM (Yang et al., "Gaussian Splatting with Localized Points Management", CVPR 2025;
reference code Surrey-UP-Lab/GS-LPM), as a strategy wrapped around a base strategy (ADC or MCMC).

At set-up every training camera gets up to `neighbours` views whose optical axes lie within `angle` degrees, and
keypoint matches with each (the scene's SfM tracks when it has them, else SIFT), cached in the run folder. At
each of the base strategy's refinement steps and each LPM reset step, the current view's error map and one
neighbour's matches give 3D error zones (`zones.py`). Then:

- localized densification: the base strategy's refinement runs with a focus of 1 / `grad_ratio` on Gaussians
  inside a zone (ADC clones and splits them at half the gradient threshold and prunes as many of the least
  opaque Gaussians as that added; MCMC relocates and grows towards them, within its cap);
- localized opacity reset: Gaussians in the cone from the camera to a zone, in front of it, and at least as
  opaque as the `top_ratio` rank of the zone's inside Gaussians drop to opacity 0.01 (occluders of an error
  zone must earn their opacity back). The base strategy's global reset stays.

Differences from the reference, on purpose: a view without zones still refines as the base strategy does (the
reference skips densification entirely then); a camera never counts as its own neighbour; ray pairs that are
parallel or meet behind a camera are dropped; the reset only lowers opacities (it never raises one below 0.01).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import cv2
import numpy as np
import torch
from rich.progress import Progress

from splatkit.data.matches import (Matches, SiftMatcher, load_matches, neighbour_pairs, neighbour_views,
                                   save_matches, sift_matches, track_matches)
from splatkit.errors import SplatkitError
from splatkit.train.gaussian_model import GaussianModel
from splatkit.train.plugin import SetupContext, StepInfo, View
from splatkit.train.strategies import ops
from splatkit.train.strategies.adc import ADCStrategy
from splatkit.train.strategies.base import STRATEGIES, Strategy
from splatkit.train.strategies.zones import (Zone, cone_masks, error_boxes, error_map, error_patches, in_zones,
                                             region_matches, zone_from_matches)

BaseStrategy = STRATEGIES.choice()  # registered before LPM (the package imports adc and mcmc first)
RESET_OPACITY = 0.01
COUNTERS = ("zones", "densify_focus", "reset")


@STRATEGIES.register("lpm")
@dataclass
class LPMStrategy(Strategy):
    """Localized points management (LPM): error zones from multi-view geometry steer densification and reset
    opacities in front of them; wraps a base strategy (ADC or MCMC)."""

    base: BaseStrategy = field(default_factory=ADCStrategy)
    """The strategy LPM steers (`strategy.base:mcmc` for MCMC)."""
    angle: float = 45.0
    """Neighbour views look within this many degrees of a camera's own direction (the paper: 90 indoors)."""
    neighbours: int = 3
    """Neighbour views kept per camera (drawn at random, seeded, when more qualify)."""
    matcher: Literal["auto", "tracks", "sift"] = "auto"
    """Where matches come from: the scene's SfM tracks (COLMAP), SIFT, or auto (tracks when the scene has them)."""
    grad_ratio: float = 0.5
    """Inside a zone, Gaussians grow at this fraction of the base strategy's gradient threshold."""
    top_ratio: float = 0.7
    """Reset Gaussians in front of a zone at least as opaque as this rank of the zone's own (0.7: the top 70%)."""
    reset_start: int = 500
    reset_stop: int = 15_000
    reset_every: int = 100
    """Localized opacity reset cadence (the paper: 200 for indoor scenes)."""
    error_quantile: float = 0.4
    """Pixels above this quantile of the view's error map count as erroneous."""
    patch: int = 16
    patch_fraction: float = 0.85
    """A patch is an error patch when more than this fraction of its pixels are erroneous."""
    seed: int = 0
    """Seed of the neighbour draw and of the referred view at each step."""

    @property
    def init_opacity(self) -> float:  # the base strategy's recipe
        return self.base.init_opacity

    @property
    def init_scale(self) -> float:
        return self.base.init_scale

    def validate(self) -> None:
        self.require(angle=0 < self.angle <= 180, neighbours=self.neighbours >= 1, grad_ratio=0 < self.grad_ratio <= 1,
                     top_ratio=0 <= self.top_ratio <= 1, reset_every=self.reset_every >= 1,
                     error_quantile=0 <= self.error_quantile < 1, patch=self.patch >= 1,
                     patch_fraction=0 <= self.patch_fraction < 1)
        self.base.validate()

    def render_needs(self) -> frozenset[str]:
        return self.base.render_needs()

    # ---- set-up: neighbours and matches, once (cached in the run folder)

    def setup(self, ctx: SetupContext) -> dict[str, Any]:
        base_state = self.base.setup(ctx)
        scene = ctx.scene
        neighbours = neighbour_views(scene.cameras, scene.train_ids, self.angle, self.neighbours, self.seed)
        pairs = neighbour_pairs(neighbours)
        kind = self._matcher_kind(ctx)
        key = _cache_key(kind, scene, pairs)
        path = ctx.run_dir / "lpm_matches.npz"
        started = time.perf_counter()
        matches = load_matches(path, key)
        if matches is None:
            matches = _compute_matches(kind, ctx, pairs)
            save_matches(path, matches, key)
        counts = {name: 0 for name in COUNTERS}
        return {"base": base_state, "generator": torch.Generator().manual_seed(self.seed), "counts": counts,
                "_cameras": scene.cameras, "_neighbours": neighbours, "_matches": matches, "_zones": [],
                "_matching_s": time.perf_counter() - started, "_seconds": 0.0}

    def _matcher_kind(self, ctx: SetupContext) -> str:
        if self.matcher == "auto":
            return "tracks" if ctx.scene.observations is not None else "sift"
        if self.matcher == "tracks" and ctx.scene.observations is None:
            raise SplatkitError("--strategy.matcher tracks: the scene has no structure-from-motion tracks "
                                "(COLMAP models have them); use sift or auto")
        return self.matcher

    # ---- the base strategy's hooks, passed through

    def losses(self, model: GaussianModel, state: dict, info: StepInfo) -> dict[str, torch.Tensor]:
        return self.base.losses(model, state["base"], info)

    def pre_backward(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        self.base.pre_backward(model, state["base"], info)

    def post_backward(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        self.base.post_backward(model, state["base"], info)

    # ---- LPM proper

    def resets_at(self, step: int) -> bool:
        return self.reset_start < step < self.reset_stop and step % self.reset_every == 0

    @torch.no_grad()
    def after_step(self, model: GaussianModel, state: dict, info: StepInfo) -> None:
        refine, reset = self.base.refines_at(info), self.resets_at(info.phase_step)
        found: list[tuple[np.ndarray, list[Zone]]] = []
        if refine or reset:
            started = time.perf_counter()
            found = self.find_zones(state, info)
            state["_zones"] = [zone for _, zones in found for zone in zones]
            state["counts"]["zones"] += len(state["_zones"])
            state["_seconds"] += time.perf_counter() - started
        focus = None
        if refine and state["_zones"]:
            inside = in_zones(model.params["means"].detach(), state["_zones"])
            focus = torch.where(inside, 1.0 / self.grad_ratio, 1.0)
            state["counts"]["densify_focus"] += int(inside.sum())
        self.base.after_step(model, state["base"], replace(info, focus=focus))
        if reset:
            for center, zones in found:
                if zones:
                    state["counts"]["reset"] += self.reset_in_front(model, center, zones)

    def find_zones(self, state: dict, info: StepInfo) -> list[tuple[np.ndarray, list[Zone]]]:
        """Error zones of the step's views (every process's, in slot order), each view's with its camera centre.
        A neighbour is drawn from `state["generator"]` for every view of the batch, so all processes draw
        alike; each process finds its own views' zones from their error maps, and `info.gather` shares them."""
        picks = {}
        for slot, index in enumerate(info.batch):
            neighbours = state["_neighbours"].get(index, [])
            if neighbours:
                picks[slot] = neighbours[int(torch.randint(len(neighbours), (1,), generator=state["generator"]))]
        mine = [(view.camera.center, self.view_zones(state, view, picks[view.slot]))
                for view in info.views if view.slot in picks]
        return [found for process in info.gather(mine) for found in process]

    def view_zones(self, state: dict, view: View, other: int) -> list[Zone]:
        """Error zones of `view` from its error map and its matches with neighbour camera `other`."""
        xy, partner_xy = state["_matches"][(view.camera_index, other)]
        full = state["_cameras"][view.camera_index]  # keypoints are in full-size pixels; a coarse-to-fine step
        xy = xy * np.array([view.width / full.width, view.height / full.height])  # renders a smaller view
        error = error_map(view.render.rgb.detach(), view.target)
        mask = error_patches(error, self.error_quantile, self.patch, self.patch_fraction).cpu().numpy()
        zones = [zone_from_matches(view.camera, a, state["_cameras"][other], b)
                 for a, b in region_matches(error_boxes(mask), xy, partner_xy, mask)]
        return [zone for zone in zones if zone is not None]

    def reset_in_front(self, model: GaussianModel, camera_center: np.ndarray, zones: list[Zone]) -> int:
        """Lower to 0.01 the opacity of Gaussians in front of the zones (in their cones from the camera) that are
        at least as opaque as the `top_ratio` rank of the Gaussians inside them. Returns how many."""
        means = model.params["means"].detach()
        inside = torch.zeros(len(means), dtype=torch.bool, device=means.device)
        front = torch.zeros_like(inside)
        for zone in zones:
            zone_inside, zone_front = cone_masks(means, camera_center, zone)
            inside |= zone_inside
            front |= zone_front
        k = int(self.top_ratio * int(inside.sum()))
        if k == 0:
            return 0
        opacities = model.activated().opacities
        threshold = torch.topk(opacities[inside], k).values[-1]
        chosen = front & (opacities >= threshold)
        ops.reset_opacities(model, RESET_OPACITY, chosen)
        return int(chosen.sum())

    def log(self, model: GaussianModel, state: dict) -> dict[str, float]:
        figures = {f"lpm_{name}": float(value) for name, value in state["counts"].items()}
        figures["lpm_seconds"] = state["_seconds"]
        figures["lpm_matching_s"] = state["_matching_s"]
        state["counts"] = {name: 0 for name in COUNTERS}
        state["_seconds"] = 0.0
        return {**self.base.log(model, state["base"]), **figures}

    def boxes(self, state: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(zone.lo, zone.hi) for zone in state["_zones"]] + self.base.boxes(state["base"])


def _cache_key(kind: str, scene, pairs: list[tuple[int, int]]) -> str:
    """What the matches depend on: the matcher, the pairs, and each camera's image and size."""
    digest = hashlib.sha256(kind.encode())
    digest.update(repr(pairs).encode())
    for camera in scene.cameras:
        digest.update(f"{camera.name}|{camera.width}x{camera.height}|{camera.image_path}".encode())
    return digest.hexdigest()


def _compute_matches(kind: str, ctx: SetupContext, pairs: list[tuple[int, int]]) -> Matches:
    if kind == "tracks":
        return track_matches(ctx.scene.observations, pairs)

    def grey(i: int) -> np.ndarray:
        return cv2.cvtColor((ctx.images[i] * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY)

    with Progress(transient=True) as progress:
        task = progress.add_task("LPM: matching SIFT keypoints between neighbour views", total=len(pairs))
        return sift_matches(grey, pairs, SiftMatcher(), lambda done, total: progress.update(task, completed=done))

