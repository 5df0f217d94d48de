"""A built-in demo capture with exact ground truth: a textured room with a few objects, ray cast in numpy.

`splatkit train demo` needs a scene that exists everywhere, costs nothing to download, and whose truth is known
(poses, intrinsics, surface colours). So we render one: a room (tiled floor, four differently patterned walls,
ceiling) holding three spheres and two boxes, lit by a fixed directional key light, a fill light and ambient
light. Shading is Lambertian, so every surface point has one colour from every view and the scene is exactly
representable. Edges and texture detail are supersampled (jittered, stratified) so they look like photos.

The output is an ordinary COLMAP text model plus PNGs, so the demo goes through the same loader as real data.
World frame: z up, floor at z = 0, metres. Cameras: OpenCV axes (x right, y down, z forward).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from splatkit._resources import user_cache
from splatkit.errors import file_error

# Bump when the generator's output changes, so cached scenes from older versions are not reused.
GENERATOR_VERSION = 1

ROOM_MIN = np.array([-5.0, -4.0, 0.0])
ROOM_MAX = np.array([5.0, 4.0, 3.5])
KEY_DIR = np.array([0.45, 0.3, 1.0]) / np.linalg.norm([0.45, 0.3, 1.0])  # towards the key light
FILL_DIR = np.array([-0.6, -0.5, 0.4]) / np.linalg.norm([-0.6, -0.5, 0.4])  # towards the fill light
AMBIENT, KEY, FILL = 0.38, 0.55, 0.2
HFOV_DEG = 60.0
SAMPLES_PER_AXIS = 2  # 2x2 jittered samples in pixels that need antialiasing
REFINE_CONTRAST = 0.05  # neighbour colour difference (0-1 scale) that triggers supersampling
N_POINTS = 4000
POINT_NOISE = 0.01  # metres, like SfM triangulation noise
EPS = 1e-6

Texture = Callable[..., np.ndarray]
Track = list[tuple[int, float, float, float]]  # (image index, u, v, reprojection error) per observation


# ----------------------------------------------------------------------------------------------- textures


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _value_noise(grid: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth 2D value noise in [0, 1] from a periodic lattice of random values (one cell per unit of u, v)."""
    g = grid.shape[0]
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = _smoothstep(u - iu), _smoothstep(v - iv)
    i0, j0 = iu.astype(np.int64) % g, iv.astype(np.int64) % g
    i1, j1 = (i0 + 1) % g, (j0 + 1) % g
    top = grid[i0, j0] * (1 - fu) + grid[i1, j0] * fu
    bottom = grid[i0, j1] * (1 - fu) + grid[i1, j1] * fu
    return top * (1 - fv) + bottom * fv


def _mix(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-point blend between colours a and b by weight w in [0, 1]."""
    return a * (1.0 - w[:, None]) + b * w[:, None]


def _room_textures(rng: np.random.Generator) -> list[Texture]:
    """Albedo functions of the world point for faces x-, x+, y-, y+, floor, ceiling.

    Feature sizes stay >= ~0.25 m, i.e. several pixels at the far wall in a 200 px wide image.
    """
    grid = rng.random((64, 64))
    tile_jitter = rng.random((64, 64))
    hue = rng.uniform(-0.06, 0.06, size=(6, 3))

    def wall_stripes(p: np.ndarray) -> np.ndarray:  # x = -5: soft vertical stripes
        w = 0.5 + 0.5 * np.sin(2 * np.pi * p[:, 1] / 0.9)
        return _mix(np.array([0.55, 0.68, 0.5]) + hue[0], np.array([0.9, 0.88, 0.78]), _smoothstep(w * 1.6 - 0.3))

    def wall_noise(p: np.ndarray) -> np.ndarray:  # x = +5: blue plaster, two octaves of value noise
        n = 0.65 * _value_noise(grid, p[:, 1] / 0.6, p[:, 2] / 0.6)
        n = n + 0.35 * _value_noise(grid.T, p[:, 1] / 0.3, p[:, 2] / 0.3)
        return _mix(np.array([0.2, 0.3, 0.6]) + hue[1], np.array([0.7, 0.8, 0.92]), n)

    def wall_wainscot(p: np.ndarray) -> np.ndarray:  # y = -4: wood panels below 1 m, warm gradient above
        z = p[:, 2]
        upper = _mix(np.array([0.85, 0.6, 0.4]) + hue[2], np.array([0.95, 0.9, 0.75]), z / ROOM_MAX[2])
        plank = 0.5 + 0.5 * np.cos(2 * np.pi * p[:, 0] / 0.35)
        wood = _mix(np.array([0.45, 0.28, 0.15]), np.array([0.6, 0.4, 0.22]), plank**4)
        return _mix(upper, wood, 1.0 - _smoothstep((z - 0.95) / 0.1))

    def wall_dots(p: np.ndarray) -> np.ndarray:  # y = +4: large polka dots on a light background
        u, v = p[:, 0] / 0.8, p[:, 2] / 0.8
        r = np.hypot(u - np.round(u), v - np.round(v))
        dot = 1.0 - _smoothstep((r - 0.22) / 0.08)
        return _mix(np.array([0.92, 0.85, 0.7]), np.array([0.8, 0.25, 0.3]) + hue[3], dot)

    def floor_tiles(p: np.ndarray) -> np.ndarray:  # z = 0: 0.6 m checker tiles with grout and per-tile tint
        u, v = p[:, 0] / 0.6, p[:, 1] / 0.6
        iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        checker = ((iu + iv) % 2).astype(np.float64)
        base = _mix(np.array([0.82, 0.72, 0.55]) + hue[4], np.array([0.55, 0.3, 0.22]), checker)
        base = base * (0.9 + 0.2 * tile_jitter[iu % 64, iv % 64])[:, None]
        edge = np.minimum(np.minimum(u - iu, 1 - (u - iu)), np.minimum(v - iv, 1 - (v - iv)))
        return _mix(np.array([0.3, 0.3, 0.3]), base, _smoothstep(edge / 0.06))

    def ceiling(p: np.ndarray) -> np.ndarray:  # z = 3.5: near-white with a gentle noise
        n = _value_noise(grid, p[:, 0] / 1.5 + 17.0, p[:, 1] / 1.5)
        return np.array([0.8, 0.8, 0.78]) + 0.12 * (n[:, None] - 0.5)

    return [wall_stripes, wall_noise, wall_wainscot, wall_dots, floor_tiles, ceiling]


# ----------------------------------------------------------------------------------------------- geometry


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (N, 3) arrays (b may be a single 3-vector)."""
    b = np.broadcast_to(b, a.shape)
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _sphere_hit(o: np.ndarray, d: np.ndarray, od: np.ndarray, oo: np.ndarray, center: np.ndarray, radius: float,
                far: bool = False) -> np.ndarray:
    """Ray-sphere distance: the near root (or the far one, for bounding tests), inf if missed or behind.

    od and oo are the row-wise o.d and o.o, computed once per batch of rays: the per-sphere work is then two
    matrix-vector products, which keeps a few million rays per second on one core.
    """
    b = od - d @ center
    disc = b * b - (oo - 2.0 * (o @ center) + center @ center - radius**2)
    root = np.sqrt(np.maximum(disc, 0.0))
    t = -b + root if far else -b - root
    return np.where((disc > 0) & (t > EPS), t, np.inf)


@dataclass(frozen=True)
class Sphere:
    center: np.ndarray
    radius: float
    texture: Texture  # albedo of the unit normal (object frame = world axes)

    def intersect(self, o: np.ndarray, d: np.ndarray, od: np.ndarray, oo: np.ndarray) -> np.ndarray:
        """Distance to the first hit in front of each ray origin (inf on a miss); d must be unit length."""
        return _sphere_hit(o, d, od, oo, self.center, self.radius)

    def surface(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = (p - self.center) / self.radius
        return n, self.texture(n)


@dataclass(frozen=True)
class Box:
    center: np.ndarray
    half: np.ndarray
    yaw: float  # rotation about world z, radians
    texture: Texture  # albedo of (local point, face axis, face sign)

    @property
    def rot(self) -> np.ndarray:
        """Local-to-world rotation."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    @property
    def bound(self) -> float:
        return float(np.linalg.norm(self.half))

    def intersect(self, o: np.ndarray, d: np.ndarray, od: np.ndarray, oo: np.ndarray) -> np.ndarray:
        """Slab test in the box frame; distance to the entry point (inf on a miss or from inside)."""
        ol, dl = (o - self.center) @ self.rot, d @ self.rot
        dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
        t1, t2 = (-self.half - ol) / dl, (self.half - ol) / dl
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        t_in = np.maximum(np.maximum(near[:, 0], near[:, 1]), near[:, 2])  # column ops: faster than .max(axis=1)
        t_out = np.minimum(np.minimum(far[:, 0], far[:, 1]), far[:, 2])
        return np.where((t_in <= t_out) & (t_in > EPS), t_in, np.inf)

    def surface(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = (p - self.center) @ self.rot
        axis = np.argmax(np.abs(q) / self.half, axis=1)
        sign = np.sign(q[np.arange(len(q)), axis])
        n_local = np.zeros_like(q)
        n_local[np.arange(len(q)), axis] = sign
        return n_local @ self.rot.T, self.texture(q, axis, sign)


@dataclass(frozen=True)
class World:
    """Everything the ray caster needs: room textures (x-, x+, y-, y+, floor, ceiling) and objects."""

    room_textures: list[Texture]
    objects: list[Sphere | Box]


def _build_world(rng: np.random.Generator) -> World:
    """The demo room; the seed jitters object positions and colours and reseeds the noise textures."""
    room = _room_textures(rng)
    jit = rng.uniform(-0.1, 0.1, size=(5, 2))
    tint = rng.uniform(-0.05, 0.05, size=(5, 3))
    grid = rng.random((32, 32))

    def red_bands(n: np.ndarray) -> np.ndarray:  # latitude bands
        w = _smoothstep(2.5 * np.sin(np.arcsin(np.clip(n[:, 2], -1, 1)) * 7.0) + 0.5)
        return _mix(np.array([0.85, 0.15, 0.12]) + tint[0], np.array([0.95, 0.93, 0.88]), w)

    def beach_ball(n: np.ndarray) -> np.ndarray:  # six coloured longitude segments
        colours = np.array([[0.95, 0.8, 0.1], [0.15, 0.35, 0.85], [0.95, 0.95, 0.95],
                            [0.2, 0.65, 0.3], [0.95, 0.45, 0.1], [0.6, 0.25, 0.7]]) + tint[1]
        seg = np.floor((np.arctan2(n[:, 1], n[:, 0]) + np.pi) / (2 * np.pi) * 6).astype(np.int64) % 6
        return colours[seg]

    def marble(n: np.ndarray) -> np.ndarray:  # green, smooth noise on the sphere
        m = _value_noise(grid, 2.5 * n[:, 0] + 3 * n[:, 2] + 8, 2.5 * n[:, 1] + 8)
        return _mix(np.array([0.1, 0.45, 0.25]) + tint[2], np.array([0.6, 0.85, 0.55]), m)

    def wooden_crate(q: np.ndarray, axis: np.ndarray, sign: np.ndarray) -> np.ndarray:  # wavy wood grain
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (q[:, 2] + 0.3 * q[:, 1]) / 0.12 + 2 * np.sin(q[:, 0] * 4))
        top = (axis == 2)[:, None]
        wood = _mix(np.array([0.7, 0.5, 0.3]) + tint[3], np.array([0.5, 0.32, 0.18]), grain)
        return np.where(top, wood * 1.1, wood)

    def puzzle_cube(q: np.ndarray, axis: np.ndarray, sign: np.ndarray) -> np.ndarray:  # 0.2 m checks, face colours
        face_colours = np.array([[0.2, 0.5, 0.9], [0.95, 0.85, 0.2], [0.9, 0.35, 0.2],
                                 [0.3, 0.75, 0.4], [0.95, 0.95, 0.95], [0.7, 0.3, 0.6]]) + tint[4]
        face = 2 * axis + (sign > 0)
        cell = np.floor(q / 0.2).astype(np.int64)
        cells = cell.sum(axis=1) - cell[np.arange(len(q)), axis]  # the two in-face coordinates
        return face_colours[face] * np.where(cells % 2 == 0, 1.0, 0.7)[:, None]

    return World(
        room_textures=room,
        objects=[
            Sphere(np.array([0.9 + jit[0, 0], 0.5 + jit[0, 1], 0.5]), 0.5, red_bands),
            Sphere(np.array([-0.8 + jit[1, 0], 0.9 + jit[1, 1], 0.4]), 0.4, beach_ball),
            Sphere(np.array([0.2 + jit[2, 0], -1.0 + jit[2, 1], 0.35]), 0.35, marble),
            Box(np.array([-0.7 + jit[3, 0], -0.5 + jit[3, 1], 0.35]), np.array([0.45, 0.35, 0.35]), 0.4, wooden_crate),
            Box(np.array([1.2 + jit[4, 0], -0.6 + jit[4, 1], 0.6]), np.array([0.2, 0.2, 0.6]), -0.5, puzzle_cube),
        ],
    )


# ----------------------------------------------------------------------------------------------- ray caster


def trace(world: World, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of each ray (origins o, unit directions d, both (N, 3)) -> (distance (N,), RGB in [0, 1]).

    Rays must start inside the room, so every ray hits something.
    """
    n = len(d)
    dd = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t_axes = np.where(dd > 0, ROOM_MAX - o, ROOM_MIN - o) / dd  # exit distance per axis
    axis = (t_axes[:, 1] < t_axes[:, 0]).astype(np.int64)
    best_t = np.minimum(t_axes[:, 0], t_axes[:, 1])
    axis[t_axes[:, 2] < best_t] = 2
    best_t = np.minimum(best_t, t_axes[:, 2])
    best_id = np.full(n, -1)
    od, oo = _dot(o, d), _dot(o, o)
    for k, obj in enumerate(world.objects):
        t = _hit(obj, o, d, od, oo)
        closer = t < best_t
        best_t[closer], best_id[closer] = t[closer], k

    p = o + best_t[:, None] * d
    normal, albedo = np.empty((n, 3)), np.empty((n, 3))
    room = np.flatnonzero(best_id == -1)
    positive = d[room, axis[room]] > 0
    face = np.where(axis[room] == 2, 4 + positive, 2 * axis[room] + positive)  # x-, x+, y-, y+, floor, ceiling
    normal[room] = 0.0
    normal[room, axis[room]] = np.where(positive, -1.0, 1.0)  # walls face into the room
    for f, texture in enumerate(world.room_textures):
        idx = room[face == f]
        albedo[idx] = texture(p[idx])
    for k, obj in enumerate(world.objects):
        idx = np.flatnonzero(best_id == k)
        normal[idx], albedo[idx] = obj.surface(p[idx])
    return best_t, np.clip(np.clip(albedo, 0.0, 1.0) * _irradiance(world, p, normal)[:, None], 0.0, 1.0)


def _hit(obj: Sphere | Box, o: np.ndarray, d: np.ndarray, od: np.ndarray, oo: np.ndarray) -> np.ndarray:
    """obj.intersect for all rays; boxes are only slab-tested on rays that hit their bounding sphere."""
    if isinstance(obj, Sphere):
        return obj.intersect(o, d, od, oo)
    t = np.full(len(d), np.inf)
    idx = np.flatnonzero(np.isfinite(_sphere_hit(o, d, od, oo, obj.center, obj.bound, far=True)))
    t[idx] = obj.intersect(o[idx], d[idx], od[idx], oo[idx])
    return t


def _irradiance(world: World, p: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """View-independent light: ambient + key light (with object shadows) + unshadowed fill light."""
    key = np.maximum(_dot(normal, KEY_DIR), 0.0)
    lit = key > 0
    origins = p[lit] + 1e-4 * normal[lit]
    dirs = np.broadcast_to(KEY_DIR, origins.shape)
    shadowed = np.zeros(len(origins), bool)
    od, oo = origins @ KEY_DIR, _dot(origins, origins)
    for obj in world.objects:
        shadowed |= np.isfinite(_hit(obj, origins, dirs, od, oo))
    key[np.flatnonzero(lit)[shadowed]] = 0.0
    return AMBIENT + KEY * key + FILL * np.maximum(_dot(normal, FILL_DIR), 0.0)


def intrinsics(width: int, height: int, hfov_deg: float = HFOV_DEG) -> np.ndarray:
    """Pinhole K with square pixels, centred principal point (pixel centres at +0.5, so cx = width / 2)."""
    f = 0.5 * width / np.tan(np.radians(hfov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray, up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """4x4 world-to-camera matrix in OpenCV axes (x right, y down, z towards the target)."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, np.asarray(up, np.float64))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([x, y, z])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return w2c


def pixel_rays(K: np.ndarray, w2c: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-space rays through continuous pixel coordinates uv (N, 2), in the +0.5-centre convention."""
    cam = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0], (uv[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(uv))], axis=1)
    d = cam @ w2c[:3, :3]  # R^T applied to each row
    d /= np.sqrt(_dot(d, d))[:, None]
    eye = -w2c[:3, :3].T @ w2c[:3, 3]
    return np.broadcast_to(eye, d.shape).copy(), d


def _shade(world: World, K: np.ndarray, w2c: np.ndarray, uv: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Colours seen through pixel positions uv (N, 2); traced in chunks, which keeps temporaries in cache."""
    out = np.empty((len(uv), 3))
    for i in range(0, len(uv), chunk):
        out[i:i + chunk] = trace(world, *pixel_rays(K, w2c, uv[i:i + chunk]))[1]
    return out


def render_view(world: World, K: np.ndarray, w2c: np.ndarray, width: int, height: int,
                rng: np.random.Generator, samples: int = SAMPLES_PER_AXIS) -> np.ndarray:
    """(H, W, 3) image in [0, 1], antialiased by adaptive supersampling.

    One ray per pixel centre first; pixels that differ from a neighbour by more than REFINE_CONTRAST (edges,
    texture detail) are re-rendered as the mean of samples x samples jittered, stratified rays. Flat regions
    would not change under supersampling, so this gives photo-like edges at under half the cost.
    """
    jj, ii = np.meshgrid(np.arange(width), np.arange(height))
    uv = np.stack([jj.ravel() + 0.5, ii.ravel() + 0.5], axis=1)
    image = _shade(world, K, w2c, uv).reshape(height, width, 3)
    step_x = (np.abs(np.diff(image, axis=1)) > REFINE_CONTRAST).any(axis=2)
    step_y = (np.abs(np.diff(image, axis=0)) > REFINE_CONTRAST).any(axis=2)
    refine = np.zeros((height, width), bool)
    refine[:, 1:] |= step_x
    refine[:, :-1] |= step_x
    refine[1:] |= step_y
    refine[:-1] |= step_y
    idx = np.flatnonzero(refine)
    offsets = (np.stack(np.meshgrid(np.arange(samples), np.arange(samples)), -1).reshape(-1, 2) + 0.5) / samples
    jitter = (rng.random((len(idx), samples**2, 2)) - 0.5) / samples
    sub = (uv[idx, None, :] - 0.5 + offsets + jitter).reshape(-1, 2)
    colour = _shade(world, K, w2c, sub).reshape(len(idx), samples**2, 3).mean(axis=1)
    image = image.reshape(-1, 3)
    image[idx] = colour
    return np.clip(image, 0.0, 1.0).reshape(height, width, 3)


def _orbit_poses(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """A ring band around the objects: radius ~3.3 m, heights spread 0.9-1.9 m, looking at the scene centre."""
    poses = []
    for i in range(n):
        angle = 2 * np.pi * i / n + rng.uniform(-0.3, 0.3) * np.pi / n
        radius = 3.3 + rng.uniform(-0.25, 0.25)
        height = 0.9 + 1.0 * ((i * 0.618034) % 1.0)
        eye = np.array([radius * np.cos(angle), radius * np.sin(angle), height])
        target = np.array([0.0, 0.0, 0.45]) + rng.uniform(-0.15, 0.15, 3)
        poses.append(look_at(eye, target))
    return poses


def _walk_poses(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """A walk along the walls, like a street capture: a loop 1.9 m inside them, each camera looking at the
    nearest wall (yaw -35, 0 or +35 degrees off its normal, tilted down towards the floor). Every view sees only
    a local stretch, so the scene has spatial extent the way a city block has: what `splatkit partition` is for."""
    half = ROOM_MAX[:2] - 1.9
    corners = np.array([[-half[0], -half[1]], [half[0], -half[1]], [half[0], half[1]], [-half[0], half[1]]])
    edges = np.roll(corners, -1, axis=0) - corners
    starts = np.concatenate([[0.0], np.cumsum(np.linalg.norm(edges, axis=1))])  # arc length at each corner
    outward = np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # normal of the wall each side faces
    poses = []
    for i in range(n):
        s = (i + rng.uniform(-0.2, 0.2)) / n * starts[-1]
        side = min(max(int(np.searchsorted(starts, s, side="right")) - 1, 0), 3)
        xy = corners[side] + (s - starts[side]) / (starts[side + 1] - starts[side]) * edges[side]
        yaw = np.radians(35.0 * ((i % 3) - 1))
        look = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]) @ outward[side]
        eye = np.array([*xy, 1.2 + 0.5 * ((i * 0.618034) % 1.0)])
        poses.append(look_at(eye, eye + np.array([*look, -0.35])))
    return poses


LAYOUTS = {"orbit": _orbit_poses, "walk": _walk_poses}


# ----------------------------------------------------------------------------------------------- writers


def _sample_points(world: World, K: np.ndarray, poses: list[np.ndarray], width: int, height: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[Track]]:
    """SfM-like sparse points: first hits of random camera rays, with true colours and noisy positions.

    Returns positions (P, 3), colours (P, 3) in [0, 1] and, per point, its observations (image index, u, v, error):
    the true surface point's projection in every image where it is in frame and not occluded, and the
    reprojection error of the noisy point there.
    """
    cam = rng.integers(0, len(poses), N_POINTS)
    o, d = np.empty((N_POINTS, 3)), np.empty((N_POINTS, 3))
    for c in range(len(poses)):
        m = cam == c
        uv = rng.random((m.sum(), 2)) * [width, height]
        o[m], d[m] = pixel_rays(K, poses[c], uv)
    t, colour = trace(world, o, d)
    truth = o + t[:, None] * d
    noisy = truth + rng.normal(0.0, POINT_NOISE, truth.shape)
    tracks: list[Track] = [[] for _ in range(N_POINTS)]
    for c, w2c in enumerate(poses):
        uv, depth = _project(K, w2c, truth)
        in_frame = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
        cand = np.flatnonzero((depth > 0.05) & in_frame)
        eye = -w2c[:3, :3].T @ w2c[:3, 3]
        dist = np.linalg.norm(truth[cand] - eye, axis=1)
        t_hit, _ = trace(world, np.broadcast_to(eye, (len(cand), 3)).copy(), (truth[cand] - eye) / dist[:, None])
        seen = cand[t_hit > dist * (1 - 1e-3) - 1e-3]
        error = np.linalg.norm(_project(K, w2c, noisy[seen])[0] - uv[seen], axis=1)
        for k, e in zip(seen, error):
            tracks[k].append((c, uv[k, 0], uv[k, 1], e))
    return noisy, colour, tracks


def _project(K: np.ndarray, w2c: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) and depths (N,) of world points x (N, 3)."""
    pc = x @ w2c[:3, :3].T + w2c[:3, 3]
    uv = pc[:, :2] / np.maximum(pc[:, 2:], 1e-9) * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    return uv, pc[:, 2]


def _write_colmap_text(sparse: Path, K: np.ndarray, width: int, height: int, names: list[str],
                       poses: list[np.ndarray], points: np.ndarray, colours: np.ndarray,
                       tracks: list[Track]) -> None:
    """COLMAP text model: one shared PINHOLE camera, world-to-camera poses as (qw qx qy qz, t)."""
    sparse.mkdir(parents=True)
    (sparse / "cameras.txt").write_text(
        "# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
        f"1 PINHOLE {width} {height} {K[0, 0]:.12g} {K[1, 1]:.12g} {K[0, 2]:.12g} {K[1, 2]:.12g}\n"
    )
    observations: list[list[str]] = [[] for _ in poses]  # per image: "X Y POINT3D_ID"
    point_lines = ["# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    rgb = np.round(colours * 255).astype(int)
    for pid, (p, c, track) in enumerate(zip(points, rgb, tracks), start=1):
        if not track:
            continue
        entries = []
        for img, u, v, _ in track:
            entries.append(f"{img + 1} {len(observations[img])}")
            observations[img].append(f"{u:.4f} {v:.4f} {pid}")
        error = sum(e for *_, e in track) / len(track)
        xyz = f"{p[0]:.6f} {p[1]:.6f} {p[2]:.6f}"
        point_lines.append(f"{pid} {xyz} {c[0]} {c[1]} {c[2]} {error:.4f} " + " ".join(entries))
    image_lines = ["# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "# POINTS2D[] as (X, Y, POINT3D_ID)"]
    for i, (name, w2c) in enumerate(zip(names, poses)):
        qx, qy, qz, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        q = np.array([qw, qx, qy, qz]) * (1 if qw >= 0 else -1)
        t = w2c[:3, 3]
        image_lines.append(f"{i + 1} " + " ".join(f"{v:.12g}" for v in (*q, *t)) + f" 1 {name}")
        image_lines.append(" ".join(observations[i]))
    (sparse / "images.txt").write_text("\n".join(image_lines) + "\n")
    (sparse / "points3D.txt").write_text("\n".join(point_lines) + "\n")


def generate_demo_scene(out_dir: Path, *, seed: int = 0, n_cameras: int = 60, width: int = 200,
                        height: int = 150, layout: str = "orbit") -> Path:
    """Render the demo scene into out_dir (images/*.png + sparse/0/*.txt), deterministic from `seed`.

    `layout` places the cameras: "orbit" (the demo: a ring around the objects, looking at them) or "walk" (a loop
    along the walls, each view seeing a local stretch of them, for block partitioning).

    Everything is written to a hidden sibling folder first and renamed into place at the end, so an interrupted
    run never leaves a half scene behind. out_dir must not exist (or be empty).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise file_error(out_dir, "already exists and is not empty; remove it or choose another folder")
    rng = np.random.default_rng(seed)
    world = _build_world(rng)
    K = intrinsics(width, height)
    poses = LAYOUTS[layout](rng, n_cameras)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "images").mkdir(parents=True)
        names = [f"{i:03d}.png" for i in range(n_cameras)]
        for name, w2c in zip(names, poses):
            image = render_view(world, K, w2c, width, height, rng)
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(tmp / "images" / name, compress_level=1)
        points, colours, tracks = _sample_points(world, K, poses, width, height, rng)
        _write_colmap_text(tmp / "sparse" / "0", K, width, height, names, poses, points, colours, tracks)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def demo_scene_path(cache_root: Path | None = None, *, seed: int = 0) -> Path:
    """The cached demo scene folder, generated on first use (a few seconds)."""
    root = Path(cache_root) if cache_root is not None else user_cache()
    out = root / f"demo_scene_v{GENERATOR_VERSION}_seed{seed}"
    if out.is_dir() and (out / "sparse" / "0" / "points3D.txt").is_file():
        return out
    try:
        return generate_demo_scene(out, seed=seed)
    except Exception:
        # Another process may have finished the same (deterministic) scene first; its copy is as good as ours.
        if (out / "sparse" / "0" / "points3D.txt").is_file():
            return out
        raise

