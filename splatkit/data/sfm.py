"""Structure from motion in-process with pycolmap (no COLMAP binary): SIFT features, exhaustive or sequential
matching, incremental mapping, undistortion to PINHOLE, and checks that catch what a low reprojection error
hides (images registered in a wrong place).

Schönberger and Frahm, "Structure-from-Motion Revisited", CVPR 2016 (COLMAP); pycolmap's Python API.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import pycolmap
from scipy.spatial.transform import Rotation

from splatkit.errors import SplatkitError

Matcher = Literal["exhaustive", "sequential"]
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")  # other files in the folder are skipped
CameraModel = Literal["SIMPLE_RADIAL", "SIMPLE_PINHOLE", "PINHOLE", "OPENCV"]

ROTATION_DISAGREEMENT_DEG = 45.0  # see view_graph_doubts
MIN_PAIR_INLIERS = 30  # pairs with fewer verified matches say too little about the relative pose
# Pairs whose relative pose comes from epipolar geometry, which fixes the rotation.
EPIPOLAR = (pycolmap.TwoViewGeometryConfiguration.CALIBRATED, pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED)
MAX_MAPPING_ATTEMPTS = 3  # mapping again without doubtful images converges in one or two more


@dataclass
class SfmOptions:
    """How `run_sfm` works; the CLI's `splatkit process` fields carry these."""

    matcher: Matcher = "exhaustive"
    overlap: int = 10
    """Sequential matching: match each image with this many following ones."""
    camera_model: CameraModel = "SIMPLE_RADIAL"
    single_camera: bool = True
    max_image_size: int = 1600
    """SIFT runs on images scaled down to at most this many pixels on the long side."""
    threads: int = -1
    """-1: all cores."""
    seed: int = 0
    keep_doubtful: bool = False
    """Keep images the view-graph check doubts in the model (reported) instead of mapping without them."""


@dataclass
class SfmReport:
    """What the mapping achieved, and which images the checks doubt."""

    images: int
    models: list[int]
    """Registered images per model found, largest first."""
    mean_reprojection_error: float
    """Pixels, in the largest model."""
    points: int
    doubtful: dict[str, str] = field(default_factory=dict)
    """Image name -> why its pose looks wrong, for doubtful images kept in the model."""
    dropped: dict[str, str] = field(default_factory=dict)
    """Image name -> why it was left out: its pose looked wrong in an earlier mapping."""
    unreadable: list[str] = field(default_factory=list)
    """Photos COLMAP's reader could not decode (corrupt or truncated), left out of the mapping."""

    @property
    def registered(self) -> int:
        return self.models[0] if self.models else 0

    def lines(self) -> list[str]:
        """The report as the user reads it."""
        share = self.registered / self.images if self.images else 0.0
        out = [f"registered {self.registered} of {self.images} images ({share:.0%}) in the largest of "
               f"{len(self.models)} model(s) {self.models}; {self.points:,} points, mean reprojection error "
               f"{self.mean_reprojection_error:.2f} px"]
        out += [f"doubtful pose, kept: {name}: {why}" for name, why in sorted(self.doubtful.items())]
        out += [f"left out, its pose looked wrong: {name}: {why}" for name, why in sorted(self.dropped.items())]
        out += [f"left out, the file could not be read as an image: {name}" for name in self.unreadable]
        return out


def natural_key(name: str) -> list:
    """Sort key that orders frame_2 before frame_10 (capture order, for sequential matching)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def run_sfm(images: Path, work: Path, options: SfmOptions,
            stage: Callable[[str], None] = lambda name: None) -> tuple[pycolmap.Reconstruction, SfmReport]:
    """Features, matches and the largest incremental model of the photos in `images` (database and models
    under `work`). Images the view-graph check doubts are left out and the mapping is run
    again without them (`keep_doubtful` keeps them, reported). `stage` is told each stage as it starts.

    Raises SplatkitError (one line) when no pair of images matches or no model registers 3 images.
    """
    work.mkdir(parents=True, exist_ok=True)
    with quiet_colmap():
        return _run_sfm(images, work, options, stage)


@contextlib.contextmanager
def quiet_colmap() -> Iterator[None]:
    """pycolmap's log lines (thousands of them) would bury splatkit's report: only fatal ones get through."""
    level, pycolmap.logging.minloglevel = pycolmap.logging.minloglevel, 3
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = level


def _run_sfm(images: Path, work: Path, options: SfmOptions, stage: Callable[[str], None]
             ) -> tuple[pycolmap.Reconstruction, SfmReport]:
    database = work / "database.db"
    database.unlink(missing_ok=True)
    names = sorted((p.name for p in images.iterdir()
                    if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")),
                   key=natural_key)
    if len(names) < 3:
        raise SplatkitError(f"{images}: {len(names)} images; structure from motion needs at least 3")
    stage(f"features of {len(names)} images")
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = options.camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = options.max_image_size
    extraction.num_threads = options.threads
    extraction.use_gpu = False
    mode = pycolmap.CameraMode.SINGLE if options.single_camera else pycolmap.CameraMode.AUTO
    pycolmap.extract_features(database, images, image_names=names, camera_mode=mode, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    with pycolmap.Database.open(database) as db:
        read = {image.name for image in db.read_all_images()}
    unreadable = [name for name in names if name not in read]
    names = [name for name in names if name in read]
    if len(names) < 3:
        raise SplatkitError(f"{images}: {len(names)} readable images; structure from motion needs at least 3")
    stage(f"{options.matcher} matching")
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = options.threads
    matching.use_gpu = False
    verification = pycolmap.TwoViewGeometryOptions()
    verification.compute_relative_pose = True  # kept for the view-graph check
    if options.matcher == "sequential":  # pairs in capture order, which COLMAP's image ids need not follow
        pairs = work / "pairs.txt"
        pairs.write_text("".join(f"{names[i]} {names[j]}\n" for i in range(len(names))
                                 for j in range(i + 1, min(i + 1 + options.overlap, len(names)))))
        imported = pycolmap.ImportedPairingOptions()
        imported.match_list_path = str(pairs)
        pycolmap.match_image_pairs(database, matching_options=matching, pairing_options=imported,
                                   verification_options=verification, device=pycolmap.Device.cpu)
    else:
        pycolmap.match_exhaustive(database, matching_options=matching, verification_options=verification,
                                  device=pycolmap.Device.cpu)
    with pycolmap.Database.open(database) as db:
        verified = sum(len(g.inlier_matches) > 0 for g in db.read_two_view_geometries()[1])
    if verified == 0:
        raise SplatkitError(f"{images}: no two of the {len(names)} images match (no verified pair); the photos "
                            "need overlapping views of textured surfaces")
    doubtful: dict[str, str] = {}
    for attempt in range(MAX_MAPPING_ATTEMPTS):
        stage("mapping" if attempt == 0 else f"mapping again without {len(doubtful)} doubtful images")
        pipeline = pycolmap.IncrementalPipelineOptions()
        pipeline.num_threads = options.threads
        pipeline.random_seed = options.seed
        pipeline.image_names = [n for n in names if n not in doubtful]
        models = pycolmap.incremental_mapping(database, images, work / f"sparse_{attempt}", options=pipeline)
        ranked = sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)
        if not ranked or ranked[0].num_reg_images() < 3:
            best = ranked[0].num_reg_images() if ranked else 0
            raise SplatkitError(f"{images}: structure from motion registered only {best} of {len(names)} images "
                                f"({verified} verified image pairs); take more photos with more overlap")
        rec = ranked[0]
        doubts = view_graph_doubts(rec, database)
        if not doubts or options.keep_doubtful:
            break
        doubtful.update(doubts)
    report = SfmReport(images=len(names) + len(unreadable), models=[r.num_reg_images() for r in ranked],
                       mean_reprojection_error=float(rec.compute_mean_reprojection_error()),
                       points=rec.num_points3D(), doubtful=doubts if options.keep_doubtful else {},
                       dropped=doubtful, unreadable=unreadable)
    return rec, report


def undistort(rec: pycolmap.Reconstruction, images: Path, work: Path, out: Path) -> None:
    """`out/images/` (undistorted to PINHOLE) and `out/sparse/` (binary model) of the registered images."""
    model = work / "model"
    model.mkdir(parents=True, exist_ok=True)
    rec.write(model)
    with quiet_colmap():
        pycolmap.undistort_images(out, model, images, output_type="COLMAP")
    for extra in ("stereo", "run-colmap-geometric.sh", "run-colmap-photometric.sh"):  # patch-match inputs
        path = out / extra
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _cam_from_world(image: pycolmap.Image) -> pycolmap.Rigid3d:
    pose = image.cam_from_world
    return pose() if callable(pose) else pose


def view_graph_doubts(rec: pycolmap.Reconstruction, database: Path) -> dict[str, str]:
    """Registered images whose pose in `rec` disagrees with the relative rotations their verified image pairs
    measured (two-view geometry, before mapping) by more than ROTATION_DISAGREEMENT_DEG, in the median over
    at least two pairs: the mark of an image registered on a wrong but self-consistent set of matches (a
    symmetric object seen from its other side), whose reprojection error stays low.

    Only pairs whose relative pose comes from epipolar geometry count: a homography's decomposition (a tiled
    floor filling a video frame) leaves the rotation ambiguous. Even epipolar rotations of short-baseline video
    pairs scatter by up to ~30 deg, hence the threshold; misplaced images are off by 50-180 deg.
    """
    by_id = {im.image_id: im for im in rec.images.values() if im.has_pose}
    disagreements: dict[int, list[float]] = {i: [] for i in by_id}
    with pycolmap.Database.open(database) as db:
        pair_ids, geometries = db.read_two_view_geometries()
    for pair_id, geometry in zip(pair_ids, geometries):
        id1, id2 = pycolmap.pair_id_to_image_pair(pair_id)
        if (id1 not in by_id or id2 not in by_id or len(geometry.inlier_matches) < MIN_PAIR_INLIERS
                or geometry.config not in EPIPOLAR):
            continue
        measured = geometry.cam2_from_cam1.rotation.matrix()
        R1 = _cam_from_world(by_id[id1]).rotation.matrix()
        R2 = _cam_from_world(by_id[id2]).rotation.matrix()
        angle = math.degrees(Rotation.from_matrix(measured.T @ R2 @ R1.T).magnitude())
        disagreements[id1].append(angle)
        disagreements[id2].append(angle)
    doubts = {}
    for image_id, angles in disagreements.items():  # one pair cannot tell which of its two images is wrong
        if len(angles) >= 2 and np.median(angles) > ROTATION_DISAGREEMENT_DEG:
            doubts[by_id[image_id].name] = (f"its rotation disagrees with its {len(angles)} matched pairs' by "
                                            f"{np.median(angles):.0f} deg (median)")
    return doubts


def similarity_error(centers: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-camera distance (in `reference`'s units) between `reference` (N,3) and `centers` (N,3) mapped onto it
    by the best similarity (Umeyama's least squares: scale, then scipy's Kabsch rotation), and the reference
    rig's radius (farthest camera from the mean) to compare it with."""
    a, b = centers - centers.mean(0), reference - reference.mean(0)
    scale = math.sqrt((b**2).sum() / (a**2).sum())
    rotation, _ = Rotation.align_vectors(b, a * scale)
    mapped = rotation.apply(a * scale)
    return np.linalg.norm(mapped - b, axis=1), float(np.linalg.norm(b, axis=1).max())


def pose_errors(cam_from_world: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> tuple[float, float]:
    """How far poses are from reference poses of the same images, up to the frame they are expressed in.

    Both map image names to (4, 4) cam_from_world matrices (OpenCV axes); every name of `cam_from_world` must be
    in `reference`. Returns the median camera-centre error as a share of the reference rig's radius, after the
    best similarity (`similarity_error`), and the median rotation error in degrees, after the best rotation
    between the two sets of orientations (scipy's Kabsch)."""
    names = sorted(cam_from_world)
    centre = lambda w2c: -w2c[:3, :3].T @ w2c[:3, 3]  # noqa: E731
    errors, radius = similarity_error(np.stack([centre(cam_from_world[n]) for n in names]),
                                      np.stack([centre(reference[n]) for n in names]))
    frame, _ = Rotation.align_vectors(np.concatenate([reference[n][:3, :3] for n in names]),
                                      np.concatenate([cam_from_world[n][:3, :3] for n in names]))
    angles = [math.degrees(Rotation.from_matrix(reference[n][:3, :3].T @ cam_from_world[n][:3, :3]
                                                @ frame.as_matrix().T).magnitude()) for n in names]
    return float(np.median(errors) / radius), float(np.median(angles))
