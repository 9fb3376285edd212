"""Does a generated video move like its ground truth, and is it free of token-grid seams?

Three per-video figures, each compared with the same figure of the true video (issue "A generator
that moves"):

- `flow_share`: the fraction of pixels whose optical flow between consecutive frames is verified
  (forward-backward consistent and explaining the second frame, `OpenCVFlow(verified=True)`) and
  longer than `min_flow` pixels. A model that repeats its last frame scores 0; one that redraws
  noise scores near 0 too (noise fails the verification), so only coherent motion counts.
- `dynamic_fraction`: VBench's dynamic degree made continuous (`eval.formulas.dynamic_fraction`):
  the share of frame pairs whose top-5% verified flow exceeds 6 min(H, W) / 256 pixels.
- `grid_edge`: energy of the pixel differences across the DiT's token boundaries (every `grid`
  pixels: the codec's spatial factor times the DiT's patch) over the energy across every other
  pixel boundary. A natural video has no grid, so it scores about 1; seams between independently
  predicted token patches push it up.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from eval.backends.opencv_flow import OpenCVFlow
from eval.formulas import dynamic_fraction, dynamic_threshold, top5_mean

__all__ = ["MOTION_KEYS", "grid_edge", "motion_scores", "pair_motion"]

MOTION_KEYS = ("flow_share", "dynamic_fraction", "grid_edge")


def grid_edge(frames: Tensor, grid: int) -> float:
    """Token-grid edge energy of uint8 frames [T, 3, H, W]: the mean squared difference across
    the boundaries at multiples of `grid` pixels over that across all other pixel boundaries."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"grid_edge: expected frames [T, 3, H, W], got {tuple(frames.shape)}")
    h, w = frames.shape[-2:]
    if grid < 2 or grid >= min(h, w):
        raise ValueError(f"grid_edge: grid {grid} must be in [2, {min(h, w) - 1}] for {h}x{w}")
    x = frames.double()
    dx = (x[..., 1:] - x[..., :-1]).square().mean((0, 1, 2))  # [W-1]: boundary j | j+1
    dy = (x[..., 1:, :] - x[..., :-1, :]).square().mean((0, 1, 3))  # [H-1]
    on_x = torch.arange(1, w) % grid == 0  # the boundary left of column j, j = 1..W-1
    on_y = torch.arange(1, h) % grid == 0
    on = torch.cat((dx[on_x], dy[on_y])).mean()
    off = torch.cat((dx[~on_x], dy[~on_y])).mean()
    return float(on / off.clamp(min=1e-12))


def pair_motion(
    frames: Tensor, flow: OpenCVFlow | None = None, min_flow: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Per consecutive pair of uint8 frames [T, 3, H, W]: the share of pixels with verified flow
    longer than `min_flow` pixels, and the top-5% mean verified flow (both [T - 1])."""
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"pair_motion needs >= 2 frames [T, 3, H, W], got {tuple(frames.shape)}")
    flow = flow or OpenCVFlow("dis", verified=True)
    rgb = frames.permute(0, 2, 3, 1).contiguous().numpy()
    share, top = [], []
    for a, b in zip(rgb[:-1], rgb[1:], strict=True):
        magnitude = flow.flow_magnitude(a, b)
        share.append(float((magnitude > min_flow).mean()))
        top.append(top5_mean(magnitude))
    return np.asarray(share), np.asarray(top)


def motion_scores(
    frames: Tensor, grid: int, flow: OpenCVFlow | None = None, min_flow: float = 0.5
) -> dict[str, float]:
    """`flow_share`, `dynamic_fraction` and `grid_edge` of uint8 frames [T, 3, H, W], T >= 2."""
    share, top = pair_motion(frames, flow, min_flow)
    threshold = dynamic_threshold(*frames.shape[-2:])
    return {
        "flow_share": float(share.mean()),
        "dynamic_fraction": dynamic_fraction(torch.from_numpy(top), threshold),
        "grid_edge": grid_edge(frames, grid),
    }
