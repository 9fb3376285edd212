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

__all__ = ["FLAT_STD", "MIN_FLOW_FRAMES", "degenerate_reason"]

MIN_FLOW_FRAMES = 3  # smallest T' with round(4 T' / 16) >= 1: the rule can then say "static"
# Spatial standard deviation (grey levels, 0..255) below which a frame counts as one colour: the
# mp4 codec's noise on a uniform frame stays well under 1 level.
FLAT_STD = 1.0


def degenerate_reason(frames: torch.Tensor, fps: float) -> str | None:
    """Why the uint8 video [T, 3, H, W] at `fps` cannot be scored, or None when it can."""
    check_frames(frames, "degenerate_reason")
    stride = dynamic_stride(fps)
    num = frames.shape[0]
    sampled = len(range(0, num, stride))
    if sampled < MIN_FLOW_FRAMES:
        return (
            f"too short: {num} frames ({sampled} at the flow stride {stride}; "
            f"dynamic degree needs {MIN_FLOW_FRAMES})"
        )
    spread = frames.double().flatten(2).std(dim=2).amax()  # max over frames and channels
    if float(spread) < FLAT_STD:
        return (
            f"flat: every frame one colour (spatial std {float(spread):.2f} < {FLAT_STD}), "
            "no motion possible"
        )
    return None
