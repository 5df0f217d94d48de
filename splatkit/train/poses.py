"""Camera pose refinement (`--pose-opt`): a learnable rigid correction per training camera, as gsplat's
`pose_opt` and InstantSplat's joint optimisation, for poses that are only approximate (feed-forward models,
structure from motion on few photos).

Camera i renders with cam_from_world = exp(xi_i) @ W_i, where W_i is the loaded pose and xi_i = (rotation
omega, translation v) a twist in the camera's own frame (radians and training-frame units). The corrections are
one shared parameter of the `GaussianModel` ("pose_corrections", (C, 6)), so they have their own Adam and
learning-rate schedule, follow checkpoints and resumes, and never enter the Gaussians' edits. The first training
camera keeps xi = 0, pinning the frame (the corrections and the Gaussians could otherwise drift together).

Held-out cameras have no learned correction; `refine_poses` fits one against the frozen Gaussians before they
are scored, as InstantSplat evaluates.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from splatkit.atomic import write_text_atomic
from splatkit.data.cameras import Camera
from splatkit.data.images import ImageStore
from splatkit.data.scene import Scene
from splatkit.model.gaussians import Gaussians
from splatkit.render import rasterize
from splatkit.train.metrics import ignore_masked, photometric_loss

PARAM = "pose_corrections"


def twist_matrix(xi: torch.Tensor) -> torch.Tensor:
    """exp of se(3) twists xi (..., 6) = (omega, v) as (..., 4, 4) rigid transforms (torch's matrix exponential,
    differentiable everywhere, exactly the identity at xi = 0)."""
    w, v = xi[..., :3], xi[..., 3:]
    zero = torch.zeros_like(w[..., 0])
    rows = [torch.stack([zero, -w[..., 2], w[..., 1], v[..., 0]], -1),
            torch.stack([w[..., 2], zero, -w[..., 0], v[..., 1]], -1),
            torch.stack([-w[..., 1], w[..., 0], zero, v[..., 2]], -1),
            torch.stack([zero, zero, zero, zero], -1)]
    return torch.linalg.matrix_exp(torch.stack(rows, -2))


class CameraPoses:
    """The poses training renders with: the loaded ones, or (pose refinement on) each training camera's loaded
    pose corrected by its learnable twist."""

    def __init__(self, scene: Scene, model=None, *, eval_steps: int = 0) -> None:
        """`model` (a GaussianModel) holds the corrections when `declare` gave it them (training with
        --pose-opt, or a checkpoint of such a run); without it poses are not refined. `eval_steps` is how long
        `for_evaluation` fits each held-out pose."""
        self.scene, self.model, self.eval_steps = scene, model, eval_steps
        self.refine = model is not None and PARAM in model.params
        device = model.device if model is not None else "cpu"
        self.base = torch.stack([torch.as_tensor(c.world_to_cam, dtype=torch.float32) for c in scene.cameras]
                                ).to(device)
        self.pinned = scene.train_ids[0] if scene.train_ids else 0

    def viewmat(self, index: int) -> torch.Tensor | None:
        """cam_from_world (4, 4) of camera `index` as training renders it, with the autograd graph to its
        correction; None when poses are not refined (the camera's own pose is used)."""
        if not self.refine:
            return None
        xi = self.model.params[PARAM][index]
        if index == self.pinned:
            xi = xi.detach()
        return twist_matrix(xi) @ self.base[index]

    def trained(self, index: int) -> bool:
        """Whether camera `index` has a learned correction (a training camera other than the pinned one)."""
        return self.refine and index != self.pinned and index not in self.scene.test_ids

    @torch.no_grad()
    def trained_scene(self) -> Scene:
        """The scene with each camera at the pose training rendered it with (its loaded pose where it has no
        learned correction, exactly)."""
        cameras = [replace(c, world_to_cam=self.viewmat(i).double().cpu().numpy()) if self.trained(i) else c
                   for i, c in enumerate(self.scene.cameras)]
        return replace(self.scene, cameras=cameras)

    def for_evaluation(self, gaussians: Gaussians, images: ImageStore, backend: str) -> tuple[Scene, str | None]:
        """The scene as the held-out views are scored (training frame) and a line saying how their poses were
        set: unchanged without refinement; else training cameras at their refined poses and each held-out one
        fitted to its photo against the frozen `gaussians` (`refine_poses`, `eval_steps` steps)."""
        if not self.refine:
            return self.scene, None
        cameras = list(self.trained_scene().cameras)
        ids = self.scene.test_ids
        for i, fitted in zip(ids, refine_poses(gaussians, self.scene, images, ids, steps=self.eval_steps,
                                               backend=backend)):
            cameras[i] = fitted
        note = (f"held-out poses fitted to their photos against the frozen model first ({self.eval_steps} Adam "
                "steps each, as InstantSplat evaluates)")
        return replace(self.scene, cameras=cameras), note

    @torch.no_grad()
    def save(self, path: Path) -> None:
        """Every camera's pose as trained (refined where --pose-opt refined it), in the scene's original frame
        (e.g. COLMAP's), as JSON: name, width, height, K (3x3, pixels) and cam_from_world (4x4, OpenCV axes)."""
        back = self.scene.to_normalized.inverse()
        cameras = [{"name": c.name, "width": c.width, "height": c.height, "K": np.asarray(c.K).tolist(),
                    "cam_from_world": back.apply_camera(c.world_to_cam).tolist(), "refined": self.trained(i)}
                   for i, c in enumerate(self.trained_scene().cameras)]
        write_text_atomic(path, json.dumps({"cameras": cameras}, indent=1))


def declare(model, num_cameras: int, lr: float, lr_final: float) -> None:
    """Give `model` the (num_cameras, 6) corrections, zero (training with --pose-opt, or to read a checkpoint
    that holds them)."""
    model.add_param(PARAM, torch.zeros(num_cameras, 6), lr=lr, lr_final=lr_final, per_gaussian=False)


def refine_poses(gaussians: Gaussians, scene: Scene, images: ImageStore, ids: list[int], *, steps: int,
                 lr: float = 1e-3, backend: str = "auto", ssim_lambda: float = 0.2) -> list[Camera]:
    """Cameras `ids` of `scene` with poses fitted to their photos against the frozen `gaussians`: `steps` Adam
    steps on each view's twist (the training loss, masks honoured). Returns the cameras in `ids`' order."""
    activated = gaussians.activated()  # detached: only the twists learn
    background = scene.background or (0.0, 0.0, 0.0)
    out = []
    for i in ids:
        camera = scene.cameras[i]
        base = torch.as_tensor(camera.world_to_cam, dtype=torch.float32, device=activated.means.device)
        xi = torch.zeros(6, device=base.device, requires_grad=True)
        optimizer = torch.optim.Adam([xi], lr=lr)
        target = torch.from_numpy(images[i]).to(base.device)
        keep = images.mask(i)
        keep = None if keep is None else torch.from_numpy(keep).to(base.device)
        for _ in range(steps):
            render = rasterize(activated, camera, background=background, backend=backend,
                               viewmat=twist_matrix(xi) @ base)
            rgb, truth = ignore_masked(render.rgb, target, keep)
            photometric_loss(rgb, truth, keep, ssim_lambda)[0].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            out.append(replace(camera, world_to_cam=(twist_matrix(xi) @ base).double().cpu().numpy()))
    return out
