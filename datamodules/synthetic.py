"""The embedded default dataset: procedurally rendered, captioned videos written as mp4.

Each video shows 2-4 coloured shapes bouncing inside the frame over a textured background while the
camera pans, with dark pillars fixed in the world that the shapes pass behind. Long-term memory is
exercised because objects disappear behind pillars and must come back out unchanged, and the pan keeps
revealing new background.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datamodules.video_io import write_video

__all__ = ["generate_dataset", "render_video"]

log = logging.getLogger(__name__)

# Bumped whenever rendering changes, so cached datasets from an older generator are regenerated.
GENERATOR_VERSION = 1
ARGS_FILE = ".synthetic.json"
LOCK_FILE = ".synthetic.lock"
METADATA_FILE = "metadata.jsonl"

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


@dataclass(frozen=True)
class _Object:
    shape: str
    colour: str
    radius: float
    start: tuple[float, float]  # (y, x) in screen pixels
    velocity: tuple[float, float]  # (vy, vx) in pixels per frame


def _bounce(start: float, velocity: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
    """Closed-form position of a point bouncing elastically between lo and hi (triangle wave)."""
    span = max(hi - lo, 1e-6)
    u = np.mod(start - lo + velocity * t, 2 * span)
    return lo + span - np.abs(u - span)


def _shape_distance(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
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


def _background(
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


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


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
    value = _background(rng, pattern, world_x, world_y, scale)[..., None]
    frames = low + (high - low) * value  # [t, h, w, 3]

    for obj in objects:
        cy = _bounce(obj.start[0], obj.velocity[0], obj.radius, h - obj.radius, t)
        cx = _bounce(obj.start[1], obj.velocity[1], obj.radius, w - obj.radius, t)
        dist = _shape_distance(obj.shape, ys - cy, xs - cx, obj.radius)
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

    things = _join([f"{_article(o.colour)} {o.colour} {o.shape}" for o in objects])
    pillars = "a dark pillar" if num_pillars == 1 else "two dark pillars"
    direction = "left" if pan_sign < 0 else "right"
    caption = (
        f"{things} bounce past {pillars} over a {pattern} {bg_name} background "
        f"as the camera pans {direction}"
    )
    return video, caption


def _is_complete(root: Path, args: dict[str, object], expected: int) -> bool:
    """True if `root` holds a finished dataset of `expected` videos generated with `args`."""
    try:
        stored = json.loads((root / ARGS_FILE).read_text())
        lines = (root / METADATA_FILE).read_text().splitlines()
        if stored != args:
            return False
        paths = [json.loads(line)["path"] for line in lines if line.strip()]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return False  # unreadable or hand-edited files: regenerate rather than trust them
    return len(paths) == expected and all((root / p).is_file() for p in paths)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `path`, held for the `with` block."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def generate_dataset(
    root: str | Path,
    num_train: int,
    num_val: int,
    min_segments: int,
    max_segments: int,
    segment_frames: int,
    fps: float,
    size: tuple[int, int],
    seed: int,
    probe_train: int = 0,
) -> Path:
    """Write `root/videos/*.mp4`, `root/metadata.jsonl` and `root/.synthetic.json`; return root.

    `probe_train` adds that many training videos of memory-probe events (`datamodules/probe.py`:
    a landmark shown, hidden longer than FramePack's history, shown again), each as long as the
    probe (`ProbeSchedule().num_segments` segments), so a model can learn to remember.

    Reuses an existing dataset generated with identical arguments. A directory holding a previous
    synthetic dataset with different arguments (or an interrupted run, which has no metadata) is
    regenerated; a directory holding a metadata.jsonl that this generator did not write is refused
    with FileExistsError, so real data is never overwritten.
    """
    root = Path(root)
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(
            f"need num_train, num_val >= 0 and some videos, got {num_train}, {num_val}"
        )
    if not 1 <= min_segments <= max_segments:
        raise ValueError(
            f"need 1 <= min_segments <= max_segments, got {min_segments}, {max_segments}"
        )
    if probe_train < 0:
        raise ValueError(f"probe_train must be >= 0, got {probe_train}")
    if segment_frames <= 0 or not fps > 0:
        raise ValueError(f"segment_frames and fps must be positive, got {segment_frames}, {fps}")
    size = (int(size[0]), int(size[1]))
    args: dict[str, object] = dict(
        version=GENERATOR_VERSION,
        num_train=num_train,
        num_val=num_val,
        min_segments=min_segments,
        max_segments=max_segments,
        segment_frames=segment_frames,
        fps=float(fps),
        size=list(size),
        seed=seed,
    )
    if probe_train:  # only when used: datasets written before the option stay valid
        args["probe_train"] = probe_train
    # Processes sharing a data_dir (a parallel study, several runs started at once) render it
    # once: the first holds the lock while it renders, the others then find it complete.
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / LOCK_FILE):
        metadata = root / METADATA_FILE
        if _is_complete(root, args, num_train + num_val + probe_train):
            log.info("reusing synthetic dataset in %s", root)
            return root
        if metadata.exists() and not (root / ARGS_FILE).exists():
            raise FileExistsError(
                f"{metadata} exists but was not written by the synthetic generator; "
                f"refusing to overwrite it (use source='folder' or another data_dir)"
            )
        log.info("generating synthetic dataset in %s (%d train, %d val)", root, num_train, num_val)
        # Remove the metadata first: if this run is interrupted the directory reads as incomplete.
        metadata.unlink(missing_ok=True)
        videos = root / "videos"
        videos.mkdir(parents=True, exist_ok=True)
        for stale in videos.glob("*.mp4"):
            if stale.name.startswith(("train_", "val_")):
                stale.unlink()
        (root / ARGS_FILE).write_text(json.dumps(args, indent=2) + "\n")

        lines = []
        splits = ["train"] * num_train + ["val"] * num_val
        for index, split in enumerate(splits):
            rng = np.random.default_rng([seed, index])
            num_segments = int(rng.integers(min_segments, max_segments + 1))
            remainder = int(rng.integers(0, segment_frames))
            frames, caption = render_video(
                int(rng.integers(2**31)), num_segments * segment_frames + remainder, size
            )
            relative = f"videos/{split}_{index:05d}.mp4"
            write_video(root / relative, frames, fps)
            lines.append(json.dumps({"path": relative, "caption": caption, "split": split}))
        from datamodules.probe import render_probe_video  # here: probe.py imports this module

        for index in range(probe_train):
            rng = np.random.default_rng([seed, 7, index])
            probe = render_probe_video(2 * int(rng.integers(2**30)), size, segment_frames)  # even
            relative = f"videos/train_probe_{index:05d}.mp4"
            write_video(root / relative, probe.frames, fps)
            lines.append(json.dumps({"path": relative, "caption": probe.caption, "split": "train"}))

        tmp = metadata.with_name(metadata.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, metadata)  # atomic on POSIX: readers see no metadata or the full file
        return root
