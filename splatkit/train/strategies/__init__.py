"""Densification and point-management strategies, plugged into the trainer through one small interface."""

from splatkit.train.strategies.adc import ADCStrategy
from splatkit.train.strategies.base import Strategy

__all__ = ["ADCStrategy", "Strategy"]
