"""Videos the metrics cannot score, named instead of scored.

Two kinds give confident wrong numbers rather than NaN:
- **too short**: with fewer than 3 frames at the flow stride, VBench's dynamic-degree rule needs
  `round(4 T' / 16) = 0` moving pairs, so any such clip is "dynamic" (a 2-frame still scores 100%);
  motion smoothness needs 3 frames too.
- **flat**: every frame one uniform colour. No texture means no motion can be seen and the
  features are degenerate (the pixel background backend scores a flat still 0% consistent).

A static but textured clip is not degenerate: dynamic degree 0% and consistency 100% are right.
"""

from __future__ import annotations

import torch

from eval.formulas import dynamic_stride
from eval.preprocess import check_frames

__all__ = ["FLAT_STD", "MIN_FLOW_FRAMES", "degenerate_reason", "reason_for", "spatial_std"]

MIN_FLOW_FRAMES = 3  # smallest T' with round(4 T' / 16) >= 1: the rule can then say "static"
# Spatial standard deviation (grey levels, 0..255) below which a frame counts as one colour: the
# mp4 codec's noise on a uniform frame stays well under 1 level.
FLAT_STD = 1.0


def spatial_std(frames: torch.Tensor) -> float:
    """Largest spatial standard deviation over the frames and channels of uint8 [T, 3, H, W]
    (a chunk of a stream: the video's is the max over its chunks)."""
    return float(frames.double().flatten(2).std(dim=2).amax())


def reason_for(num_frames: int, spread: float, fps: float) -> str | None:
    """Why a video of `num_frames` at `fps` whose largest `spatial_std` is `spread` cannot be
    scored, or None when it can."""
    stride = dynamic_stride(fps)
    sampled = len(range(0, num_frames, stride))
    if sampled < MIN_FLOW_FRAMES:
        return (
            f"too short: {num_frames} frames ({sampled} at the flow stride {stride}; "
            f"dynamic degree needs {MIN_FLOW_FRAMES})"
        )
    if spread < FLAT_STD:
        return (
            f"flat: every frame one colour (spatial std {spread:.2f} < {FLAT_STD}), "
            "no motion possible"
        )
    return None


def degenerate_reason(frames: torch.Tensor, fps: float) -> str | None:
    """Why the uint8 video [T, 3, H, W] at `fps` cannot be scored, or None when it can."""
    check_frames(frames, "degenerate_reason")
    return reason_for(frames.shape[0], spatial_std(frames), fps)
