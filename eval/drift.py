"""Start/end drift of a metric (paper Eq. 8; FramePack Eq. 7; METRICS.md "Drift").

Delta^M = |M(first n frames) - M(last n frames)| with n = max(1, floor(0.15 T)). M is evaluated on a
slice of per-frame outputs computed once for the whole video, as if the slice were a whole video
(the consistency anchor restarts at the slice's first frame), so the drift costs no network calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DriftValues", "drift_of", "drift_segments", "drift_window"]

# Paper Sec. 4.2: V_start / V_end are the first / last 15% of frames.
DRIFT_FRACTION = 0.15


def drift_window(num_frames: int) -> int:
    """n = max(1, floor(0.15 T)): frames in each drift segment (T = 6 -> 1, 7 -> 1, 100 -> 15)."""
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"drift_window: num_frames must be a positive int, got {num_frames!r}")
    # Integer arithmetic so floor(0.15 T) can never be hit by float rounding.
    return max(1, (15 * num_frames) // 100)


def drift_segments(num_frames: int) -> tuple[slice, slice]:
    """Frame slices (V_start, V_end) of a T-frame video."""
    n = drift_window(num_frames)
    return slice(0, n), slice(num_frames - n, num_frames)


@dataclass(frozen=True)
class DriftValues:
    """M on the start segment, on the end segment, and their absolute difference (Eq. 8)."""

    start: float
    end: float
    drift: float


def drift_of(metric_on_slice: Callable[[slice], float], num_frames: int) -> DriftValues:
    """Eq. 8 for a metric given as a function of a frame slice of the precomputed outputs.

    NaN propagates: a segment too short for the metric (e.g. consistency on one frame) gives NaN.
    """
    first, last = drift_segments(num_frames)
    start, end = metric_on_slice(first), metric_on_slice(last)
    drift = abs(start - end) if not (math.isnan(start) or math.isnan(end)) else math.nan
    return DriftValues(start=start, end=end, drift=drift)
