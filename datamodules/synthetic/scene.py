"""The embedded training scene: 2-4 coloured shapes bouncing inside the frame over a textured
background while the camera pans, with dark pillars fixed in the world that the shapes pass
behind. Long-term memory is exercised because objects disappear behind pillars and must come back
out unchanged, and the pan keeps revealing new background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from datamodules.synthetic.drawing import (
    BACKGROUND_COLOURS,
    OBJECT_COLOURS,
    PATTERNS,
    SHAPES,
    article,
    background,
    bounce,
    join,
    shape_distance,
)

__all__ = ["render_video"]


@dataclass(frozen=True)
class _Object:
    shape: str
    colour: str
    radius: float
    start: tuple[float, float]  # (y, x) in screen pixels
    velocity: tuple[float, float]  # (vy, vx) in pixels per frame


def render_video(seed: int, num_frames: int, size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    """Render one seeded synthetic video as uint8 [t, 3, h, w] plus a caption describing it."""
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size must be a (height, width) pair of positive ints, got {size!r}")
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    scale = min(h, w) / 32.0  # scene parameters are authored for 32x32 and scale with resolution

    bg_name = str(rng.choice(list(BACKGROUND_COLOURS)))
    pattern = str(rng.choice(PATTERNS))
    pan_sign = float(rng.choice([-1.0, 1.0]))  # -1: camera moves left, content drifts right
    pan_speed = rng.uniform(0.2, 0.5) * scale
    pan_start = rng.uniform(0, 1000)
    drift_y = rng.uniform(-0.05, 0.05) * scale  # slight vertical drift so the pan is not purely 1D

    num_objects = int(rng.integers(2, 5))
    shapes = rng.choice(SHAPES, size=num_objects, replace=False)
    palette = [c for c in OBJECT_COLOURS if c != bg_name]
    colours = rng.choice(palette, size=num_objects, replace=False)
    objects = []
    for shape, colour in zip(shapes, colours, strict=True):
        radius = rng.uniform(0.12, 0.20) * min(h, w)
        start = (rng.uniform(radius, h - radius), rng.uniform(radius, w - radius))
        speed, angle = rng.uniform(0.6, 1.4) * scale, rng.uniform(0, 2 * math.pi)
        velocity = (speed * math.sin(angle), speed * math.cos(angle))
        objects.append(_Object(str(shape), str(colour), radius, start, velocity))

    num_pillars = int(rng.integers(1, 3))
    pillar_period = 1.25 * w  # world-periodic so a pillar is in view however long the pan runs
    pillar_offset = rng.uniform(0, pillar_period)
    pillar_width = rng.uniform(0.18, 0.28) * w  # wide enough to hide a shape
    pillar_rgb = np.asarray(rng.uniform(10, 35, size=3), dtype=np.float32)

    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    ys = (np.arange(h, dtype=np.float32) + 0.5)[None, :, None]
    xs = (np.arange(w, dtype=np.float32) + 0.5)[None, None, :]
    world_x = xs + pan_start + pan_sign * pan_speed * t
    world_y = ys + pan_start + drift_y * t

    low, high = (np.asarray(c, dtype=np.float32) for c in BACKGROUND_COLOURS[bg_name])
    value = background(rng, pattern, world_x, world_y, scale)[..., None]
    frames = low + (high - low) * value  # [t, h, w, 3]

    for obj in objects:
        cy = bounce(obj.start[0], obj.velocity[0], obj.radius, h - obj.radius, t)
        cx = bounce(obj.start[1], obj.velocity[1], obj.radius, w - obj.radius, t)
        dist = shape_distance(obj.shape, ys - cy, xs - cx, obj.radius)
        alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]  # one-pixel soft edge anti-aliases
        frames = frames + alpha * (np.asarray(OBJECT_COLOURS[obj.colour], np.float32) - frames)

    # Pillars drawn last so objects pass behind them.
    pillar_pos = np.zeros_like(world_x)
    for k in range(num_pillars):
        centre = pillar_offset + k * pillar_period / 2
        local = np.mod(world_x - centre + pillar_period / 2, pillar_period) - pillar_period / 2
        edge = pillar_width / 2 - np.abs(local)  # distance inside the pillar, <0 outside
        pillar_pos = np.maximum(pillar_pos, np.clip(edge + 0.5, 0.0, 1.0))
    frames = frames + pillar_pos[..., None] * (pillar_rgb - frames)

    video = torch.from_numpy(np.clip(np.rint(frames), 0, 255).astype(np.uint8))
    video = video.permute(0, 3, 1, 2).contiguous()

    things = join([f"{article(o.colour)} {o.colour} {o.shape}" for o in objects])
    pillars = "a dark pillar" if num_pillars == 1 else "two dark pillars"
    direction = "left" if pan_sign < 0 else "right"
    caption = (
        f"{things} bounce past {pillars} over a {pattern} {bg_name} background "
        f"as the camera pans {direction}"
    )
    return video, caption
