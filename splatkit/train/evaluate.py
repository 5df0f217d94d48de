"""Held-out evaluation: render each test view, compare with its photo, optionally save side-by-sides."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from splatkit.atomic import atomic_path
from splatkit.data.images import ImageStore
from splatkit.data.scene import Scene
from splatkit.model.gaussians import Gaussians
from splatkit.model.levels import LevelChoice
from splatkit.render import rasterize
from splatkit.train.appearance import AppearanceDecoder
from splatkit.train.exposure import apply_exposure, fit_exposure
from splatkit.train.metrics import ignore_masked, psnr, ssim


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def save_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=".png")


def keep_mask(images: ImageStore, i: int, device: torch.device | str) -> torch.Tensor | None:
    """View i's mask as a (H, W, 1) bool tensor on `device`, or None when all its pixels count."""
    keep = images.mask(i)
    return None if keep is None else torch.from_numpy(keep).to(device)


@torch.no_grad()
def evaluate(
    gaussians: Gaussians,
    scene: Scene,
    images: ImageStore,
    ids: list[int],
    *,
    backend: str = "auto",
    side_by_side_dir: Path | None = None,
    levels: LevelChoice = LevelChoice(),
    fit_exposure: bool = False,
    appearance: AppearanceDecoder | None = None,
) -> dict:
    """Per-view and mean PSNR/SSIM over cameras `ids` of `scene` (of a model with levels of detail, what
    `levels` picks for each view: by default its finest level).

    Views with a mask are scored on their kept pixels only; their entry then says which share of the pixels
    was ignored (`masked`), and the result's `masked` is true when any view was masked.

    `fit_exposure` scores each view as INRIA 3DGS's `--train_test_exp` does: a gain and an offset per channel
    are fitted (least squares, `fit_exposure`) on the left half of the photo, columns [0, W // 2), and the right half
    alone is scored through it, so no scored pixel informs the fit. The view's entry keeps the transform
    (`exposure`, 3x4), and the result's `protocol` names the protocol: "plain" or "fit-exposure". With
    `appearance` (the decoder of an `--appearance` run whose model `gaussians` is, without levels), the view's
    embedding is fitted on the left half first (`AppearanceDecoder.fit`; the entry keeps it as `embedding`),
    then the transform on the left half as rendered under it; the plain protocol renders the mean embedding, the
    model's own colours.
    """
    background = scene.background or (0.0, 0.0, 0.0)
    views = []
    for i in ids:
        camera = scene.cameras[i]
        chosen = levels.for_view(gaussians, camera)
        target = torch.from_numpy(images[i]).to(chosen.means.device)
        keep = keep_mask(images, i, chosen.means.device)
        embedding = None
        if fit_exposure and appearance is not None:
            half = camera.width // 2
            activated = chosen.activated()
            embedding = appearance.fit(
                activated, lambda g: rasterize(g, camera, background=background, backend=backend).rgb[:, :half],
                target[:, :half], None if keep is None else keep[:, :half])
            chosen = appearance.through(activated, embedding)
        render = rasterize(chosen, camera, background=background, backend=backend).rgb.clamp(0, 1)
        fitted = None
        if fit_exposure:
            render, target, keep, fitted = _right_half_through_left_fit(render, target, keep)
        scored, truth = ignore_masked(render, target, keep)
        view = {"name": camera.name, "psnr": psnr(scored, truth, keep), "ssim": float(ssim(scored, truth, keep))}
        if keep is not None:
            view["masked"] = 1.0 - float(keep.float().mean())
        if fitted is not None:
            view["exposure"] = fitted.tolist()
        if embedding is not None:
            view["embedding"] = embedding.tolist()
        views.append(view)
        if side_by_side_dir is not None:
            pair = torch.cat([target, render], dim=1)
            save_png(side_by_side_dir / scene.output_names[i], to_uint8(pair))
    mean = {key: float(np.mean([v[key] for v in views])) if views else float("nan") for key in ("psnr", "ssim")}
    return {"mean": mean, "views": views, "masked": any("masked" in v for v in views),
            "protocol": "fit-exposure" if fit_exposure else "plain"}


def _right_half_through_left_fit(render: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(render, photo, mask) of the right half, the render through the transform fitted on the left half, and
    that transform (3, 4)."""
    half = render.shape[1] // 2
    fitted = fit_exposure(render[:, :half], target[:, :half], None if keep is None else keep[:, :half])
    right = apply_exposure(render[:, half:], fitted.to(render.device)).clamp(0, 1)
    return right, target[:, half:], None if keep is None else keep[:, half:], fitted
