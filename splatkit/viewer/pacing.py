"""Render pacing, free of viser so it can be tested alone: which height to render while the camera moves,
a one-item "newest wins" slot per client, and a limiter capping the viewer's share of the machine."""

from __future__ import annotations

import math
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


def choose_height(pixels_per_second: float | None, target_fps: float, aspect: float, max_height: int,
                  min_height: int = 64, default: int = 256) -> int:
    """The tallest render that fits one frame's time budget at the measured speed (nerfstudio's rule:
    pixels per frame = speed / fps; height = sqrt(pixels / aspect)), within [min_height, max_height]."""
    max_height = max(1, int(max_height))
    if not pixels_per_second or pixels_per_second <= 0:
        return min(default, max_height)
    pixels = pixels_per_second / max(target_fps, 1e-3)
    height = int(math.sqrt(pixels / max(aspect, 1e-3)))
    return max(min(min_height, max_height), min(height, max_height))


class SpeedMeter:
    """Smoothed render speed (pixels per second) and the last render's time."""

    def __init__(self, smoothing: float = 0.3) -> None:
        self.smoothing = smoothing
        self.pixels_per_second: float | None = None
        self.last_seconds = 0.0

    def add(self, pixels: int, seconds: float) -> None:
        self.last_seconds = seconds
        speed = pixels / max(seconds, 1e-6)
        if self.pixels_per_second is None:
            self.pixels_per_second = speed
        else:
            self.pixels_per_second += self.smoothing * (speed - self.pixels_per_second)


class LatestSlot(Generic[T]):
    """Holds at most one pending item: `put` replaces whatever has not been taken yet (a newer camera pose
    supersedes a render that has not started), `take` waits for one."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._has_item = False
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: T) -> None:
        with self._cond:
            self._item, self._has_item = item, True
            self._cond.notify()

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item, or None after `timeout` seconds (or once closed) with nothing new."""
        with self._cond:
            if not self._has_item and not self._closed:
                self._cond.wait(timeout)
            if not self._has_item:
                return None
            item, self._item, self._has_item = self._item, None, False
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class RenderShare:
    """Keeps the time spent rendering at most `share` of wall time (e.g. 0.1 beside training), by asking
    each render to wait until the previous ones have been paid off. Shared by all clients' workers."""

    def __init__(self, share: float = 1.0) -> None:
        self.share = share
        self._lock = threading.Lock()
        self._next_allowed = 0.0

    def wait_time(self, now: float | None = None) -> float:
        now = time.perf_counter() if now is None else now
        with self._lock:
            return max(0.0, self._next_allowed - now)

    def spent(self, seconds: float, now: float | None = None) -> None:
        if self.share >= 1.0:
            return
        now = time.perf_counter() if now is None else now
        with self._lock:
            self._next_allowed = max(self._next_allowed, now) + seconds * (1.0 - self.share) / self.share
