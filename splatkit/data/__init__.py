"""Scene ingestion: COLMAP and transforms.json captures -> `Scene`, and lazy image access via `ImageStore`."""

from splatkit.data.cameras import Camera, Undistortion
from splatkit.data.images import ImageStore
from splatkit.data.loader import load_scene
from splatkit.data.scene import Scene, Similarity

__all__ = ["Camera", "ImageStore", "Scene", "Similarity", "Undistortion", "load_scene"]
