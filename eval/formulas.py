"""The VBench formulas, each written once over per-frame network outputs (METRICS.md).

Every function here is pure: it takes what a feature / score / flow / interpolation network produced
for a video (or a slice of it) and returns a float. The networks live in `eval/backends/`; the drift
(Eq. 8) slices the same per-frame outputs, so nothing is computed twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "consistency_per_frame",
    "consistency_score",
    "dynamic_degree",
    "dynamic_fraction",
    "dynamic_stride",
    "dynamic_threshold",
    "mean_score",
    "motion_smoothness",
    "smoothness_error",
    "smoothness_errors",
    "smoothness_from_errors",
    "top5_mean",
]


def _check_2d(features: torch.Tensor, name: str) -> None:
    if features.ndim != 2:
        raise ValueError(f"{name}: expected features [T, d], got shape {tuple(features.shape)}")


def consistency_per_frame(features: torch.Tensor) -> torch.Tensor:
    """Per-frame terms c[t], t = 1..T-1, of subject/background consistency (METRICS.md).

    c[t] = (max(0, cos(f[t-1], f[t])) + max(0, cos(f[0], f[t]))) / 2; the anchor f[0] is the first
    row of `features`, so slicing the features restarts the anchor (Eq. 8 drift segments).
    """
    _check_2d(features, "consistency_per_frame")
    f = F.normalize(features.double(), dim=-1)
    if f.shape[0] < 2:
        return f.new_zeros(0)
    # max(0, cos) as VBench; the upper clamp only removes rounding above 1.
    prev = (f[:-1] * f[1:]).sum(-1).clamp(0, 1)
    first = (f[:1] * f[1:]).sum(-1).clamp(0, 1)
    return (prev + first) / 2


def consistency_score(features: torch.Tensor) -> float:
    """Subject / background consistency of one video from its per-frame features [T, d].

    Mean over t = 1..T-1 of the per-frame terms; NaN for a single frame (no pair to compare).
    """
    terms = consistency_per_frame(features)
    return float(terms.mean()) if terms.numel() else math.nan


def mean_score(per_frame: torch.Tensor) -> float:
    """Aesthetic / imaging quality: plain mean of per-frame scores [T] (already scaled, METRICS.md)."""
    if per_frame.ndim != 1:
        raise ValueError(f"mean_score: expected per-frame scores [T], got {tuple(per_frame.shape)}")
    return float(per_frame.double().mean()) if per_frame.numel() else math.nan


def top5_mean(magnitude: np.ndarray | torch.Tensor) -> float:
    """Mean of the largest 5% of per-pixel flow magnitudes (VBench dynamic degree, METRICS.md)."""
    flat = torch.as_tensor(magnitude).reshape(-1).double()
    if flat.numel() == 0:
        raise ValueError("top5_mean: empty flow magnitude map")
    k = max(1, int(flat.numel() * 0.05))
    return float(flat.topk(k).values.mean())


def dynamic_stride(fps: float) -> int:
    """Frame stride k = max(1, round(fps / 8)) so flow is measured at about 8 fps (METRICS.md)."""
    if not fps > 0:
        raise ValueError(f"dynamic_stride: fps must be positive, got {fps!r}")
    return max(1, round(fps / 8))


def dynamic_threshold(height: int, width: int, fps: float | None = None) -> float:
    """Per-pair motion threshold max(1, 8 / fps) * 6 * min(H, W) / 256 in pixels (METRICS.md).

    VBench's current `set_params` scales the threshold by max(1, 8 / fps): below 8 fps consecutive
    frames lie further apart in time, so the same speed moves more pixels per pair. `fps=None`
    (or >= 8) gives the plain 6 * min(H, W) / 256.
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"dynamic_threshold: fps must be positive, got {fps!r}")
    factor = 1.0 if fps is None else max(1.0, 8.0 / fps)
    return factor * 6.0 * min(height, width) / 256


def dynamic_degree(pair_magnitudes: torch.Tensor, threshold: float) -> float:
    """VBench's binary dynamic degree from per-pair top-5% flow magnitudes m_i [T'-1].

    T' = number of subsampled frames; count_needed = round(4 T' / 16) with Python's banker's
    rounding, exactly as VBench. NaN when there is no pair.
    """
    if pair_magnitudes.numel() == 0:
        return math.nan
    frames_used = pair_magnitudes.numel() + 1
    count_needed = round(4 * frames_used / 16)
    moving = int((pair_magnitudes > threshold).sum())
    return float(moving >= count_needed)


def dynamic_fraction(pair_magnitudes: torch.Tensor, threshold: float) -> float:
    """Continuous variant: fraction of pairs above threshold (METRICS.md: 0/1 is too coarse)."""
    if pair_magnitudes.numel() == 0:
        return math.nan
    return float((pair_magnitudes > threshold).double().mean())


InterpolateFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def smoothness_error(odd: np.ndarray, mid: np.ndarray) -> float:
    """mean|O[k] - P_k| (0..255) of one uint8 HWC midpoint `mid` against the true frame `odd`."""
    if mid.dtype != np.uint8 or mid.shape != odd.shape:
        raise ValueError(
            f"interpolate_fn must return uint8 {odd.shape}, got {mid.dtype} {mid.shape}"
        )
    return float(np.abs(odd.astype(np.float64) - mid.astype(np.float64)).mean())


def smoothness_errors(frames: torch.Tensor, interpolate_fn: InterpolateFn) -> torch.Tensor:
    """Per-pair errors mean|O[k] - P_k| (0..255) of motion smoothness (METRICS.md).

    E = frames[0::2], O = frames[1::2], P_k = interpolate_fn(E[k], E[k+1]) as uint8 HWC; all frames,
    no fps subsampling. Returns [K] with K = min(len(E) - 1, len(O)).
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(
            f"smoothness_errors: frames must be uint8 [T, 3, H, W], "
            f"got {frames.dtype} {tuple(frames.shape)}"
        )
    hwc = frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    evens, odds = hwc[0::2], hwc[1::2]
    count = min(len(evens) - 1, len(odds))
    errors = []
    for k in range(max(0, count)):
        errors.append(smoothness_error(odds[k], interpolate_fn(evens[k], evens[k + 1])))
    return torch.tensor(errors, dtype=torch.float64)


def smoothness_from_errors(errors: torch.Tensor) -> float:
    """score = (255 - mean_k err_k) / 255; NaN with fewer than 3 frames (no pair)."""
    if errors.numel() == 0:
        return math.nan
    return float((255.0 - errors.double().mean()) / 255.0)


def motion_smoothness(frames: torch.Tensor, interpolate_fn: InterpolateFn) -> float:
    """VBench motion smoothness of uint8 frames [T, 3, H, W] with a midpoint interpolator."""
    return smoothness_from_errors(smoothness_errors(frames, interpolate_fn))
