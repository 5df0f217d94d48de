"""splatkit: photos to Gaussian-splatting scenes, trained on CPU or CUDA.

Layers (imports point one way): data -> model -> render -> train -> (compress/export) -> viewer, cli on top.
Nothing happens at import: no environment reads, builds or seeding.
"""

__version__ = "0.1.0"
