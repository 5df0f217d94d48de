"""Rendering: one functional entry point, `rasterize()`, over interchangeable backends."""

from splatkit.render import torch_backend as _torch_backend  # noqa: F401  (registers the reference backend)
from splatkit.render.api import RenderOutput, backend_names, rasterize, register_backend, resolve_backend

__all__ = ["RenderOutput", "backend_names", "rasterize", "register_backend", "resolve_backend"]
