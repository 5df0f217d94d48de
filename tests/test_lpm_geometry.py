"""LPM's geometry against analytic cases: error patches, regions, ray-pair closest points, zones, the cone."""

from __future__ import annotations

import numpy as np
import torch

from splatkit.data.cameras import Camera
from splatkit.data.matches import neighbour_views
from splatkit.train.strategies.zones import (Zone, closest_points, cone_masks, error_boxes, error_map, error_patches,
                                             in_zones, region_matches, zone_from_matches)


def _look_at(name: str, position, target, width: int = 64, height: int = 48, focal: float = 60.0) -> Camera:
    """A pinhole camera at `position` looking at `target` (OpenCV axes, world up -y)."""
    position, target = np.asarray(position, float), np.asarray(target, float)
    z = target - position
    z /= np.linalg.norm(z)
    x = np.cross([0.0, -1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = np.stack([x, y, z], 1), position
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])
    return Camera(name, width, height, K, np.linalg.inv(c2w))


def _project(camera: Camera, point) -> np.ndarray:
    p = camera.world_to_cam[:3, :3] @ np.asarray(point, float) + camera.world_to_cam[:3, 3]
    uv = camera.K @ p
    return uv[:2] / uv[2]


def test_closest_points_between_skew_lines():
    """Line a: the x axis; line b: through (0, 1, 2) along y shifted, i.e. points (s', 1 + s, 2) -> closest pair
    (0, 0, 0)+... computed by hand: a(t) = (t, 0, 0), b(s) = (3, s, 2): closest at t = 3, s = 0, distance 2."""
    o_a, d_a = np.array([[-5.0, 0, 0]]), np.array([[1.0, 0, 0]])
    o_b, d_b = np.array([[3.0, -4, 2]]), np.array([[0.0, 1, 0]])
    p_a, p_b, valid = closest_points(o_a, d_a, o_b, d_b)
    np.testing.assert_allclose(p_a, [[3, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(p_b, [[3, 0, 2]], atol=1e-12)
    assert valid.all()
    # Parallel rays, and rays that would meet behind an origin, are not valid.
    _, _, valid = closest_points(np.array([[0.0, 0, 0], [10.0, 0, 0]]), np.array([[1.0, 0, 0], [1.0, 0, 0]]),
                                 np.array([[0.0, 1, 0], [3.0, -4, 2]]), np.array([[1.0, 0, 0], [0.0, 1, 0]]))
    assert not valid.any()


def test_zone_of_a_region_contains_the_seen_cube():
    """Two cameras 60 degrees apart see a small cube; the boxes around its projections give a zone that holds the
    cube and is about its size. A far wall's corner matched in the same region is dropped by its depth."""
    cube = np.array([[x, y, z] for x in (-0.1, 0.1) for y in (-0.1, 0.1) for z in (-0.1, 0.1)]) + [0.2, 0.1, 0.0]
    a = _look_at("a", [0, 0, -4], [0, 0, 0])
    b = _look_at("b", [4 * np.sin(np.pi / 3), 0, -4 * np.cos(np.pi / 3)], [0, 0, 0])
    wall = np.array([[0.25, 0.15, 6.0]])  # seen just beside the cube, eight metres further away
    xy_a = np.array([_project(a, p) for p in np.concatenate([cube, wall])])
    xy_b = np.array([_project(b, p) for p in np.concatenate([cube, wall])])
    regions = region_matches([(0, 0, 64, 48)], xy_a, xy_b)
    assert len(regions) == 1 and len(regions[0][0]) == 9
    zone = zone_from_matches(a, regions[0][0], b, regions[0][1])
    assert zone is not None
    assert np.all(zone.lo <= cube.min(0) + 0.08) and np.all(zone.hi >= cube.max(0) - 0.08)
    assert np.all(zone.hi - zone.lo < 0.8)  # the pixel-rounded boxes widen it a little, not to the wall
    assert region_matches([(0, 0, 64, 48)], xy_a[:1], xy_b[:1]) == []  # one match spans no box
    mask = np.zeros((48, 64), bool)  # keypoints off the error patches do not count
    assert region_matches([(0, 0, 64, 48)], xy_a, xy_b, mask) == []


def test_error_patches_and_regions():
    h, w = 40, 50  # not multiples of 16: the last tiles are partial
    error = torch.zeros(h, w)
    error[0:16, 16:32] = 1.0  # a whole tile above the threshold
    error[16:32, 0:16] = 1.0
    error[16:32, 0:2] = 0.0  # 32 of 256 pixels below: 87.5% above, still more than 85%
    error[32:40, 32:48] = 1.0  # a partial tile (8 rows): at most 50% of 256, never an error tile
    mask = error_patches(error, quantile=0.4, patch=16, fraction=0.85)
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[0:16, 16:32] = True
    expected[16:32, 0:16] = True
    assert torch.equal(mask, expected)
    # The two tiles touch at a corner: one 8-connected region.
    assert error_boxes(mask) == [(0, 0, 32, 32)]


def test_error_map_ignores_a_global_brightness_change():
    rng = np.random.default_rng(0)
    image = torch.tensor(rng.random((20, 30, 3)), dtype=torch.float32)
    m = float(image.mean())  # only the +0.01 keeps a halved image from scoring exactly zero:
    expected = image.sum(-1) * abs(0.5 / (0.5 * m + 0.01) - 1 / (m + 0.01))
    torch.testing.assert_close(error_map(image * 0.5, image), expected)
    assert float(error_map(image.flip(0), image).mean()) > 0.5


def test_in_zones_and_cone_masks_hand_built():
    """Camera at the origin looking along +z at a zone centred at z = 10 with radius 1."""
    zone = Zone(np.array([-1.0, -1, 9]), np.array([1.0, 1, 11]))
    points = torch.tensor([
        [0.0, 0, 10],  # zone centre: inside, not in front (beyond h - r = 9)
        [0.0, 0, 5],  # on the axis, in front
        [0.4, 0, 5],  # within the cone (tan = 0.08 < 0.1)
        [0.6, 0, 5],  # outside the cone (tan = 0.12 > 0.1)
        [0.0, 0, -1],  # behind the camera
        [0.0, 0, 9.5],  # between h - r and h: not in front
        [0.9, 0, 10],  # inside the ball, inside the box
        [0.9, 0.9, 10.0],  # in the box, outside the ball (|.| = 1.27)
    ])
    inside, front = cone_masks(points, np.zeros(3), zone)
    assert inside.tolist() == [True, False, False, False, False, True, True, False]
    assert front.tolist() == [False, True, True, False, False, False, False, False]
    assert in_zones(points, [zone]).tolist() == [True, False, False, False, False, True, True, True]


def test_neighbour_views_by_viewing_angle():
    """Cameras on a circle looking at the centre, 20 degrees apart: within 45 degrees are the 2 + 2 nearest."""
    cams = [_look_at(str(k), [4 * np.sin(np.radians(20 * k)), 0, -4 * np.cos(np.radians(20 * k))], [0, 0, 0])
            for k in range(18)]
    ids = list(range(18))
    near = neighbour_views(cams, ids, max_angle=45.0, count=10, seed=0)
    assert near[0] == [1, 2, 16, 17] and all(len(v) == 4 for v in near.values())
    few = neighbour_views(cams, ids, max_angle=45.0, count=3, seed=0)
    assert all(len(v) == 3 and set(v) <= set(near[k]) for k, v in few.items())
    assert few == neighbour_views(cams, ids, max_angle=45.0, count=3, seed=0)  # seeded
    assert neighbour_views(cams, ids, max_angle=10.0, count=3, seed=0)[5] == []
    assert neighbour_views(cams, [0], max_angle=45.0, count=3, seed=0) == {0: []}  # never itself
