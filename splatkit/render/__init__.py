"""Rendering: one functional entry point, `rasterize()`, over interchangeable backends."""

# Importing a backend module registers it; none of them builds or loads anything at import.
from splatkit.render import gsplat_backend as _gsplat_backend  # noqa: F401
from splatkit.render import native_backend as _native_backend  # noqa: F401
from splatkit.render import torch_backend as _torch_backend  # noqa: F401
from splatkit.render.api import RenderOutput, backend_names, rasterize, register_backend, resolve_backend, resolve_device

__all__ = ["RenderOutput", "backend_names", "rasterize", "register_backend", "resolve_backend", "resolve_device"]
