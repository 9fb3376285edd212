"""Weight-free feature backend `pixel`: zero-mean thumbnails, so cosine = Pearson correlation.

A proxy for DINO / CLIP features in consistency: identical frames give 1, unrelated frames (noise)
about 0. Raw positive pixels would not work: all-positive vectors have cosine near 1 whatever the
content.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eval.preprocess import check_frames, pixel_batches, to_unit_float

__all__ = ["PixelFeatures"]


class PixelFeatures:
    """Downsample to `size` x `size` (area), subtract each frame's per-channel mean, flatten."""

    def __init__(self, size: int = 32, name: str = "pixel") -> None:
        if size < 2:
            raise ValueError(f"PixelFeatures: size must be >= 2, got {size!r}")
        self.size = size
        self.name = name

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> float [T, 3 * size * size]."""
        check_frames(frames, "PixelFeatures.features")
        out = []
        for batch in pixel_batches(frames.cpu()):
            x = F.adaptive_avg_pool2d(to_unit_float(batch), self.size)
            x = x - x.mean(dim=(-2, -1), keepdim=True)
            out.append(x.flatten(1))
        return torch.cat(out)
