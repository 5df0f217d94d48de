"""Error zones of LPM (Yang et al., "Gaussian Splatting with Localized Points Management", CVPR 2025): where in 3D a
view's rendering error comes from, found from the error map and matched keypoints in a neighbouring view.

Pipeline (GS-LPM's lpm/utils.py, region_matching.py, zones_projection.py):
  error map -> error patches -> 8-connected regions -> the matched keypoints in each -> boxes around them and
  around their partners in the other view -> rays through both boxes' perimeters, paired -> closest points
  between paired rays -> 3D AABB (the zone).
Pixel coordinates follow `Camera.K` (pixel centres at +0.5); boxes are (x0, y0, x1, y1) in whole pixels with the
right and bottom edges exclusive. Everything lives in the training frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from splatkit.data.cameras import Camera

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Zone:
    """An axis-aligned 3D box where a view's error is localised (training frame units)."""

    lo: np.ndarray  # (3,) float64
    hi: np.ndarray  # (3,) float64

    @property
    def center(self) -> np.ndarray:
        return 0.5 * (self.lo + self.hi)

    @property
    def radius(self) -> float:
        """Half the shortest side: the radius of the ball and cone LPM's opacity reset uses."""
        return 0.5 * float(np.min(self.hi - self.lo))


def error_map(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(H, W) error of a render against its photo (both (H, W, 3)), each first divided by its own mean + 0.01 so
    that a global brightness difference does not count: sum over channels of |render/m_r - target/m_t|."""
    return ((render / (render.mean() + 0.01)) - (target / (target.mean() + 0.01))).abs().sum(dim=-1)


def error_patches(error: torch.Tensor, quantile: float = 0.4, patch: int = 16, fraction: float = 0.85
                  ) -> torch.Tensor:
    """(H, W) bool: pixels of `patch` x `patch` tiles in which more than `fraction` of the pixels exceed the map's
    `quantile`. Tiles are cut from the top-left; a partial tile at the right or bottom edge counts its missing
    pixels as below the threshold (as the reference's zero padding does)."""
    h, w = error.shape
    above = (error > torch.quantile(error.float().flatten(), quantile)).float()
    padded = torch.nn.functional.pad(above, (0, (-w) % patch, 0, (-h) % patch))
    counts = torch.nn.functional.avg_pool2d(padded[None, None], patch)[0, 0] * patch * patch
    tiles = counts > fraction * patch * patch
    return tiles.repeat_interleave(patch, 0).repeat_interleave(patch, 1)[:h, :w]


def error_boxes(mask: torch.Tensor | np.ndarray) -> list[Box]:
    """Bounding boxes of the 8-connected regions of a (H, W) bool mask."""
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:count]]


def region_matches(boxes: list[Box], xy: np.ndarray, partner_xy: np.ndarray, mask: np.ndarray | None = None
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each box, the matches (keypoints, partners) whose keypoint lies inside it and, with `mask` ((H, W)
    bool, the error patches), on the mask; boxes with fewer than two such matches are left out.

    The reference takes every match in the region's bounding box; background seen through its corners then
    stretches the partner box, and the zone, far beyond the region."""
    if mask is not None and len(xy):
        h, w = mask.shape
        cols, rows = np.clip(xy[:, 0].astype(int), 0, w - 1), np.clip(xy[:, 1].astype(int), 0, h - 1)
        on = mask[rows, cols]
        xy, partner_xy = xy[on], partner_xy[on]
    result = []
    for x0, y0, x1, y1 in boxes:
        inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
        if inside.sum() >= 2:
            result.append((xy[inside], partner_xy[inside]))
    return result


def box_around(points: np.ndarray) -> Box:
    """The whole-pixel box (x0, y0, x1, y1) from the floor of the points' minimum to the floor of their maximum."""
    lo, hi = np.floor(points.min(0)).astype(int), np.floor(points.max(0)).astype(int)
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


def zone_from_matches(camera: Camera, xy: np.ndarray, other: Camera, partner_xy: np.ndarray,
                      spread: float = 3.0) -> Zone | None:
    """The zone of one error region from its matches: the boxes around the keypoints and around their partners
    give rays whose closest points span the zone (`zone_from_box_pair`).

    Matches whose own triangulated depth (closest points of the keypoint's and the partner's rays) is more than
    `spread` median absolute deviations from the median are dropped first: they belong to another surface seen
    through the region's edge (an addition to the reference, which keeps every match)."""
    o_a, d_a = pixel_rays(camera, xy)
    o_b, d_b = pixel_rays(other, partner_xy)
    p_a, _, valid = closest_points(o_a, d_a, o_b, d_b)
    depth = np.linalg.norm(p_a - o_a, axis=1)
    if valid.sum() < 2:
        return None
    median = np.median(depth[valid])
    deviation = np.median(np.abs(depth[valid] - median))
    keep = valid & (np.abs(depth - median) <= spread * max(deviation, 1e-3 * median))
    if keep.sum() < 2:
        return None
    box, other_box = box_around(xy[keep]), box_around(partner_xy[keep])
    if box[2] <= box[0] or box[3] <= box[1] or other_box[2] <= other_box[0] or other_box[3] <= other_box[1]:
        return None
    return zone_from_box_pair(camera, box, other, other_box)


def pixel_rays(camera: Camera, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Origins (P, 3) and unit directions (P, 3) of the rays through pixel coordinates `xy` (P, 2) of `camera`."""
    uv1 = np.concatenate([np.asarray(xy, np.float64), np.ones((len(xy), 1))], axis=1)
    cam_to_world = np.linalg.inv(np.asarray(camera.world_to_cam, np.float64))
    directions = (uv1 @ np.linalg.inv(camera.K).T) @ cam_to_world[:3, :3].T
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return np.broadcast_to(cam_to_world[:3, 3], directions.shape), directions


def perimeter_rays(camera: Camera, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Origins (P, 3) and unit directions (P, 3) of the rays through the centres of a box's perimeter pixels
    (top row, bottom row, left column, right column)."""
    x0, y0, x1, y1 = box
    xs, ys = np.arange(x0, x1), np.arange(y0, y1)
    pixels = np.concatenate([np.stack([xs, np.full_like(xs, y0)], 1), np.stack([xs, np.full_like(xs, y1 - 1)], 1),
                             np.stack([np.full_like(ys, x0), ys], 1), np.stack([np.full_like(ys, x1 - 1), ys], 1)])
    return pixel_rays(camera, pixels + 0.5)


def closest_points(o_a: np.ndarray, d_a: np.ndarray, o_b: np.ndarray, d_b: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest points between rays a and b, row by row (all (P, 3)): (p_a, p_b, valid), where p_a = o_a + t d_a
    and p_b = o_b + s d_b minimise |p_a - p_b|. Rows whose rays are (nearly) parallel or meet behind either
    origin (t <= 0 or s <= 0) are not valid."""
    w = o_a - o_b
    a, b, c = (d_a * d_a).sum(1), (d_a * d_b).sum(1), (d_b * d_b).sum(1)
    d, e = (d_a * w).sum(1), (d_b * w).sum(1)
    denom = a * c - b * b
    valid = denom > 1e-8 * a * c  # sin^2 of the angle between the rays
    safe = np.where(valid, denom, 1.0)
    t, s = (b * e - c * d) / safe, (a * e - b * d) / safe
    valid &= (t > 0) & (s > 0)
    return o_a + t[:, None] * d_a, o_b + s[:, None] * d_b, valid


def zone_from_box_pair(camera: Camera, box: Box, other: Camera, other_box: Box) -> Zone | None:
    """The 3D box spanned by the closest points of rays through the two boxes' perimeters, paired in order (the
    shorter perimeter repeats its first ray, as in the reference), or None when no ray pair meets in front."""
    o_a, d_a = perimeter_rays(camera, box)
    o_b, d_b = perimeter_rays(other, other_box)
    n = max(len(d_a), len(d_b))
    o_a, d_a, o_b, d_b = (_pad_first(v, n) for v in (o_a, d_a, o_b, d_b))
    p_a, p_b, valid = closest_points(o_a, d_a, o_b, d_b)
    if not valid.any():
        return None
    points = np.concatenate([p_a[valid], p_b[valid]])
    return Zone(points.min(0), points.max(0))


def _pad_first(v: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([v, np.repeat(v[:1], n - len(v), axis=0)]) if len(v) < n else np.asarray(v)


def in_zones(means: torch.Tensor, zones: list[Zone]) -> torch.Tensor:
    """(N,) bool: means (N, 3) strictly inside any zone."""
    inside = torch.zeros(len(means), dtype=torch.bool, device=means.device)
    for zone in zones:
        lo, hi = (means.new_tensor(v) for v in (zone.lo, zone.hi))
        inside |= ((means > lo) & (means < hi)).all(dim=1)
    return inside


def cone_masks(means: torch.Tensor, camera_center: np.ndarray, zone: Zone) -> tuple[torch.Tensor, torch.Tensor]:
    """(inside, in_front), both (N,) bool, for LPM's localised opacity reset.

    inside: within the zone's radius r of its centre c. in_front: within the cone whose apex is the camera
    centre C and whose base, of radius r, is centred on c (angle to the axis at most atan(r / h), h = |c - C|),
    and nearer to C than the zone begins (distance at most h - r; at most h when the camera is within r of c).
    """
    center, radius = means.new_tensor(zone.center), zone.radius
    apex = means.new_tensor(camera_center)
    inside = (means - center).norm(dim=1) <= radius
    axis = center - apex
    height = float(axis.norm())
    offsets = means - apex
    distance = offsets.norm(dim=1)
    cos_half_angle = height / float(np.hypot(height, radius))
    within = (offsets @ axis) >= cos_half_angle * distance * height
    limit = height - radius if height > radius else height
    return inside, within & (distance <= limit)
