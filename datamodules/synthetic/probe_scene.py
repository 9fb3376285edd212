"""Memory-probe videos: a landmark seen only in the continued prefix, hidden longer than FramePack's
history window, then shown again (issue 11; paper Sec. 3.1's long-term memory, Fig. 5).

A static camera looks at a textured background. A world-fixed landmark (a flat shape in one of the
eight object colours) sits behind a dark sliding shutter:

    frame 0 (the reference image)     shutter shut: the landmark is hidden
    prefix (segments 0..P-1)          the shutter slides open, the landmark shows, it slides shut
    gap (segments P..P+G-1)           shut: only the shutter is visible
    return (segments P+G..P+G+R-1)    the shutter slides open again: the landmark must reappear

A bouncing object passes behind the landmark and the shutter (it is in the reference image and the
caption; the landmark is in neither). The landmark's colour and shape are drawn independently of
everything else in the scene, so a model that has not kept the prefix in memory can at best guess:
its expected colour accuracy is 1/8 whatever it draws. The renderer returns, per frame, the pixels
where the landmark is fully visible (interior, unoccluded), which `eval/probe.py` scores.

Seeds: training videos (`generate_dataset(probe_train=...)`) are rendered from even seeds,
evaluation probes (`probe_set`) from odd ones, so a probe is never a training video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

import datamodules.synthetic.drawing as drawing
from datamodules.synthetic.drawing import BACKGROUND_COLOURS, OBJECT_COLOURS
from datamodules.video_io import as_stored

__all__ = ["LANDMARK_COLOURS", "ProbeSchedule", "ProbeVideo", "probe_set", "render_probe_video"]

LANDMARK_COLOURS: tuple[str, ...] = tuple(OBJECT_COLOURS)  # chance = 1 / 8
LANDMARK_SHAPES = ("circle", "square", "diamond", "triangle")  # solid: a clear interior to score
SHUTTER_MOVE_FRAMES = 3  # frames the shutter takes to slide open or shut


@dataclass(frozen=True)
class ProbeSchedule:
    """Segments of a probe video: prefix (landmark shown), gap (hidden), return (shown again).

    With 4-frame segments the default gap hides the landmark for 5 segments + the shutter's
    travel, longer than FramePack-F1's 19-frame history (`check_history` verifies it per model).
    """

    prefix_segments: int = 3
    gap_segments: int = 5
    return_segments: int = 2

    def __post_init__(self) -> None:
        for name in ("prefix_segments", "gap_segments", "return_segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProbeSchedule.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def num_segments(self) -> int:
        return self.prefix_segments + self.gap_segments + self.return_segments

    def openness(self, segment_frames: int) -> np.ndarray:
        """Per frame, how far the shutter is open (0 shut, 1 fully open)."""
        if self.prefix_segments * segment_frames < 2 * SHUTTER_MOVE_FRAMES + 2:
            raise ValueError(
                f"a prefix of {self.prefix_segments} x {segment_frames} frames is too short to "
                f"open and shut the shutter ({2 * SHUTTER_MOVE_FRAMES + 2} frames needed)"
            )
        f = np.arange(self.num_segments * segment_frames, dtype=np.float32)
        prefix_end = self.prefix_segments * segment_frames  # shut again by the prefix's last frame
        reopen = (self.prefix_segments + self.gap_segments) * segment_frames
        move = float(SHUTTER_MOVE_FRAMES)
        opening = np.clip(f / move, 0, 1)
        closing = np.clip((prefix_end - 1 - f) / move, 0, 1)
        first = np.minimum(opening, closing)
        second = np.clip((f - reopen + 1) / move, 0, 1)
        return np.maximum(first, second)


@dataclass
class ProbeVideo:
    """One rendered probe: frames, caption, the landmark's scored pixels and its identity."""

    frames: torch.Tensor  # uint8 [F, 3, H, W]
    caption: str
    visible: torch.Tensor  # bool [F, H, W]: landmark interior, unoccluded
    colour: str  # one of LANDMARK_COLOURS
    shape: str
    schedule: ProbeSchedule
    segment_frames: int

    @property
    def prefix_frames(self) -> int:
        return self.schedule.prefix_segments * self.segment_frames

    @property
    def return_start(self) -> int:
        """First frame of the return segments (the shutter starts to reopen)."""
        s = self.schedule
        return (s.prefix_segments + s.gap_segments) * self.segment_frames

    @property
    def scored_frames(self) -> list[int]:
        """Return frames in which the landmark is fully uncovered (shutter open)."""
        full = int(self.visible[self.prefix_frames // 2].sum())  # mid-prefix: fully open
        return [
            f
            for f in range(self.return_start, self.frames.shape[0])
            if int(self.visible[f].sum()) >= full
        ]

    def check_history(self, history_frames: float) -> None:
        """Raise unless every frame showing the landmark before the return is outside the
        history (`history_frames` pixel frames; inf: every frame) of the segment in which it
        comes back."""
        if math.isinf(history_frames):
            raise ValueError(
                "the memory probe needs a bounded history; full_history context keeps every "
                "frame, so the landmark never leaves it"
            )
        shown = self.visible.flatten(1).any(dim=1).nonzero().flatten().tolist()
        before = [f for f in shown if f < self.return_start]
        after = [f for f in shown if f >= self.return_start]
        if not before or not after:
            raise ValueError("the landmark must show in the prefix and in the return")
        first_segment_start = (after[0] // self.segment_frames) * self.segment_frames
        if before[-1] >= first_segment_start - history_frames:
            raise ValueError(
                f"landmark last shown at frame {before[-1]} is within the {history_frames:g}-frame "
                f"history of frame {first_segment_start}: lengthen ProbeSchedule.gap_segments"
            )


def render_probe_video(
    seed: int,
    size: tuple[int, int],
    segment_frames: int,
    schedule: ProbeSchedule | None = None,
    landmark: bool = True,
) -> ProbeVideo:
    """Render one seeded probe video (module docstring) at `size` = (h, w).

    `landmark=False` renders the same video without the landmark (tests use it to show that the
    landmark is nowhere but in the prefix and the return)."""
    schedule = schedule or ProbeSchedule()
    h, w = int(size[0]), int(size[1])
    if min(h, w) < 16:
        raise ValueError(f"probe videos need at least 16 x 16 pixels, got {size!r}")
    num_frames = schedule.num_segments * segment_frames
    openness = schedule.openness(segment_frames)
    rng = np.random.default_rng(seed)
    # The landmark is drawn from its own stream: independent of the rest of the scene.
    mark = np.random.default_rng([seed, 1])
    colour = str(mark.choice(LANDMARK_COLOURS))
    shape = str(mark.choice(LANDMARK_SHAPES))
    radius = mark.uniform(0.17, 0.21) * min(h, w)
    left = bool(mark.integers(2))  # landmark in the left or right half; the shutter opens outwards
    ly = mark.uniform(radius + 1, h - radius - 1)
    lx = mark.uniform(radius + 1, w / 2 - 1) if left else mark.uniform(w / 2 + 1, w - radius - 1)

    scale = min(h, w) / 32.0
    bg_name = str(rng.choice(list(BACKGROUND_COLOURS)))
    pattern = str(rng.choice(drawing.PATTERNS))
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    ys = (np.arange(h, dtype=np.float32) + 0.5)[None, :, None]
    xs = (np.arange(w, dtype=np.float32) + 0.5)[None, None, :]
    low, high = (np.asarray(c, dtype=np.float32) for c in BACKGROUND_COLOURS[bg_name])
    offset = rng.uniform(0, 1000)
    value = drawing.background(rng, pattern, xs + offset, ys + offset, scale)[..., None]
    frames = np.broadcast_to(low + (high - low) * value, (num_frames, h, w, 3)).copy()

    obj_shape = str(rng.choice(drawing.SHAPES))
    obj_colour = str(rng.choice([c for c in OBJECT_COLOURS if c != bg_name]))
    obj_radius = rng.uniform(0.12, 0.16) * min(h, w)
    speed, angle = rng.uniform(0.6, 1.4) * scale, rng.uniform(0, 2 * math.pi)
    y0, x0 = rng.uniform(obj_radius, h - obj_radius), rng.uniform(obj_radius, w - obj_radius)
    cy = drawing.bounce(y0, speed * math.sin(angle), obj_radius, h - obj_radius, t)
    cx = drawing.bounce(x0, speed * math.cos(angle), obj_radius, w - obj_radius, t)
    obj_alpha = np.clip(0.5 - drawing.shape_distance(obj_shape, ys - cy, xs - cx, obj_radius), 0, 1)
    frames += obj_alpha[..., None] * (np.asarray(OBJECT_COLOURS[obj_colour], np.float32) - frames)

    mark_dist = drawing.shape_distance(shape, ys - ly, xs - lx, radius)[0]  # [h, w], static
    mark_alpha = np.clip(0.5 - mark_dist, 0, 1)[None, ..., None] * float(landmark)
    frames += mark_alpha * (np.asarray(OBJECT_COLOURS[colour], np.float32) - frames)

    # The shutter: full height, wide enough to cover the landmark, sliding outwards to open.
    width = 2 * radius + 4 * scale
    travel = (1 if left else -1) * width
    shut_left = lx - width / 2 + travel * openness[:, None, None]
    inside = np.minimum(xs - shut_left, shut_left + width - xs)  # >0 inside the panel
    shutter = np.clip(inside + 0.5, 0, 1)  # [t, 1, w]
    shutter_rgb = np.asarray(rng.uniform(10, 35, size=3), dtype=np.float32)
    frames += shutter[..., None] * (shutter_rgb - frames)

    visible = (mark_dist[None] <= -1.0) & (shutter <= 0.0) & landmark  # interior, uncovered
    video = torch.from_numpy(np.clip(np.rint(frames), 0, 255).astype(np.uint8))
    side = "right" if left else "left"
    caption = (
        f"{drawing.article(obj_colour)} {obj_colour} {obj_shape} bounces over a {pattern} {bg_name} "
        f"background while a dark shutter slides {side} and back"
    )
    return ProbeVideo(
        frames=video.permute(0, 3, 1, 2).contiguous(),
        caption=caption,
        visible=torch.from_numpy(np.ascontiguousarray(visible)),
        colour=colour,
        shape=shape,
        schedule=schedule,
        segment_frames=segment_frames,
    )


def probe_set(
    count: int,
    size: tuple[int, int],
    segment_frames: int,
    seed: int = 0,
    schedule: ProbeSchedule | None = None,
    fps: float = 8.0,
) -> list[ProbeVideo]:
    """`count` held-out probe videos (odd render seeds: never a training video), through the mp4
    round trip the stored training probes went through (`as_stored`)."""
    rng = np.random.default_rng([seed, 104729])
    seeds = [2 * int(s) + 1 for s in rng.integers(0, 2**30, size=count)]
    probes = [render_probe_video(s, size, segment_frames, schedule) for s in seeds]
    return [replace(p, frames=as_stored(p.frames, fps)) for p in probes]
