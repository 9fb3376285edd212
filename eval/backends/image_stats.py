"""Weight-free per-frame quality PROXIES (not MUSIQ, not LAION): `laplacian` and `colorfulness`.

They are cheap stand-ins so drift in sharpness / colour is visible without weights; their names are
carried into the metric names (`imaging_quality@laplacian`, `aesthetic_quality@colorfulness`) so they
are never read as VBench imaging / aesthetic numbers. Both are squashed to 0..1 like VBench's scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eval.preprocess import check_frames, pixel_batches

__all__ = ["Colorfulness", "LaplacianSharpness"]

# ITU-R BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)


class LaplacianSharpness:
    """Imaging proxy: tanh(std(Laplacian of luma in 0..255) / scale).

    Blur lowers the Laplacian response; heavy noise raises it, so this tracks blur / over-smoothing,
    the usual failure of drifting rollouts, but not noise (MUSIQ penalises both).
    """

    def __init__(self, scale: float = 50.0, name: str = "laplacian") -> None:
        if not scale > 0:
            raise ValueError(f"LaplacianSharpness: scale must be positive, got {scale!r}")
        self.scale = scale
        self.name = name

    def scores(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> [T] in [0, 1)."""
        check_frames(frames, "LaplacianSharpness.scores")
        out = []
        for batch in pixel_batches(frames.cpu()):
            x = batch.float()
            luma = (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
            kernel = x.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
            lap = F.conv2d(luma, kernel.view(1, 1, 3, 3))
            out.append(torch.tanh(lap.flatten(1).std(dim=1) / self.scale).double())
        return torch.cat(out)


class Colorfulness:
    """Aesthetic proxy: Hasler & Suesstrunk (2003) colourfulness M / scale, clipped to 1.

    M = std(rg, yb) norm + 0.3 * mean(rg, yb) norm with rg = R - G, yb = (R + G) / 2 - B (0..255).
    Tracks the colour saturation loss / shift typical of drifting rollouts; it is not an aesthetic
    model.
    """

    def __init__(self, scale: float = 100.0, name: str = "colorfulness") -> None:
        if not scale > 0:
            raise ValueError(f"Colorfulness: scale must be positive, got {scale!r}")
        self.scale = scale
        self.name = name

    def scores(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> [T] in [0, 1]."""
        check_frames(frames, "Colorfulness.scores")
        out = []
        for batch in pixel_batches(frames.cpu()):
            x = batch.double()
            r, g, b = x[:, 0], x[:, 1], x[:, 2]
            rg = (r - g).flatten(1)
            yb = ((r + g) / 2 - b).flatten(1)
            std = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
            mean = torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)
            out.append(((std + 0.3 * mean) / self.scale).clamp(max=1.0))
        return torch.cat(out)
