"""Parameterisations: how a model's raw parameters become the Gaussians handed to `rasterize()`."""

from splatkit.train.parameterisations.base import PARAMETERISATIONS, Parameterisation
from splatkit.train.parameterisations.eagles import EaglesQuantized
from splatkit.train.parameterisations.flod import FLoD
from splatkit.train.parameterisations.plain import Plain3DGS

__all__ = ["PARAMETERISATIONS", "EaglesQuantized", "FLoD", "Parameterisation", "Plain3DGS"]
