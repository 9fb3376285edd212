"""Drawing for the procedural videos: palettes, shapes, textured backgrounds, bouncing motion.

Shared by the training scenes (`scene.py`) and the memory-probe scenes (`probe_scene.py`), which
both render with numpy over a [t, h, w] grid in pixel units (authored at 32 x 32, scaled).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "BACKGROUND_COLOURS",
    "OBJECT_COLOURS",
    "PATTERNS",
    "SHAPES",
    "article",
    "background",
    "bounce",
    "join",
    "shape_distance",
]

OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (50, 210, 70),
    "blue": (50, 90, 240),
    "yellow": (245, 225, 40),
    "magenta": (225, 50, 220),
    "cyan": (50, 225, 235),
    "orange": (250, 145, 30),
    "white": (245, 245, 245),
}
# Two muted tones per background so bright objects stay visible on it.
BACKGROUND_COLOURS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "green": ((30, 80, 40), (80, 130, 70)),
    "blue": ((25, 35, 85), (70, 90, 150)),
    "gray": ((60, 60, 60), (120, 120, 120)),
    "brown": ((70, 45, 25), (130, 95, 60)),
    "purple": ((55, 30, 75), (110, 80, 140)),
}
PATTERNS = ("striped", "checkered", "mottled")
SHAPES = ("circle", "square", "triangle", "diamond", "cross")


def bounce(start: float, velocity: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    """Closed-form position of a point bouncing elastically between lo and hi (triangle wave)."""
    span = max(hi - lo, 1e-6)
    u = np.mod(start - lo + velocity * t, 2 * span)
    return lo + span - np.abs(u - span)


def shape_distance(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Approximate signed distance in pixels to the shape's border (negative inside)."""
    ay, ax = np.abs(dy), np.abs(dx)
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(ax, ay) - 0.85 * r
    if shape == "diamond":
        return (ax + ay - 1.2 * r) / math.sqrt(2.0)
    if shape == "triangle":
        # Equilateral, apex up (y points down); circumradius 1.25 r, inradius half of that.
        big = 1.25 * r
        edges = (dy, -0.5 * dy - 0.866 * dx, -0.5 * dy + 0.866 * dx)
        return np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - 0.5 * big
    if shape == "cross":
        arm = 0.38 * r
        return np.minimum(np.maximum(ax - r, ay - arm), np.maximum(ax - arm, ay - r))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def background(
    rng: np.random.Generator, pattern: str, wx: np.ndarray, wy: np.ndarray, scale: float
) -> np.ndarray:
    """Pattern intensity in [0, 1] at world coordinates (broadcast [t, h, w])."""
    if pattern == "striped":
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 12) * scale
        phase = (wx * math.cos(angle) + wy * math.sin(angle)) * (2 * math.pi / period)
        return 0.5 + 0.5 * np.tanh(2.0 * np.sin(phase))
    if pattern == "checkered":
        cell = rng.uniform(5, 10) * scale
        product = np.sin(math.pi * wx / cell) * np.sin(math.pi * wy / cell)
        return 0.5 + 0.5 * np.tanh(4.0 * product)
    if pattern == "mottled":
        # Sum of random plane waves: smooth, non-repeating noise that is cheap to evaluate anywhere.
        total = np.zeros(np.broadcast_shapes(wx.shape, wy.shape), dtype=np.float32)
        waves = 6
        for _ in range(waves):
            angle = rng.uniform(0, 2 * math.pi)
            freq = 2 * math.pi / (rng.uniform(8, 24) * scale)
            offset = rng.uniform(0, 2 * math.pi)
            total = total + np.sin(freq * (wx * math.cos(angle) + wy * math.sin(angle)) + offset)
        return 0.5 + 0.5 * np.tanh(total / math.sqrt(waves))
    raise ValueError(f"unknown background pattern {pattern!r}; expected one of {PATTERNS}")


def join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
