"""Imaging-quality backends `niqe` and `niqe_synthetic`: NIQE (Mittal, Soundararajan & Bovik 2013).

NIQE is an opinion-unaware no-reference quality model. Each frame is normalised into MSCN
coefficients (Eq. 1: (I - mu) / (sigma + 1), mu and sigma from a 7x7 Gaussian window of sigma 7/6),
cut into blocks, and every block is described by 18 natural-scene-statistics features at two scales
(a GGD fit of the coefficients and AGGD fits of their products with the 4 neighbours, Eqs. 2-8).
The frame's blocks are fitted with a multivariate Gaussian (mu_d, S_d) and compared with a
"pristine" MVG (mu_p, S_p) (Eq. 10):

    NIQE = sqrt((mu_p - mu_d)^T ((S_p + S_d) / 2)^+ (mu_p - mu_d))          lower is better

and this backend reports `exp(-NIQE / 10)` per frame, a 0..1 score where higher is better (the
scale VBench's imaging quality uses; a frame without any textured block scores 0, as MATLAB's PIQE
scores a uniform image as the worst).

Pristine models:
- `niqe`: the published model of 125 natural images (LIVE). `params/niqe_live_pristine.npz` is
  byte-identical to `basicsr/metrics/niqe_pris_params.npz` of the PyPI sdist basicsr 1.4.2
  (Apache-2.0, XPixelGroup/BasicSR), which converted LIVE's `modelparameters.mat`; sha256
  2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296. For real footage.
- `niqe_synthetic`: the same algorithm with the pristine MVG fitted (NIQE's own recipe) on clean
  videos of the embedded renderer (`datamodules/synthetic.py`), at the resolution being scored.
  The metric validity suite (`benchmarks/metric_validity.py`) shows why: the flat-shaded synthetic
  frames are far from natural-image statistics, so against the LIVE model added noise, blur or JPEG
  make them look *more* natural and `niqe` rates them higher than the clean frames.

Deviation from the MATLAB reference: blocks are `block_size(H, W)` pixels (96 only from 384 px on)
because 32-64 px frames hold no 96-px block. Block features with no negative or no positive
coefficient (flat blocks) are left out of both mean and covariance.

Bounded memory: frames are processed one or a few at a time (at most 2 x 512 x 512 float64
pixels), and the 7x7 Gaussian of the MSCN step runs as two 1-D passes, so no im2col buffer of 49
copies of a video is ever built (the previous whole-video 2-D convolution asked for 43 GB on a 5-s
720p clip). Frames are scored at their own resolution up to `max_side` = 2048 (1080p unchanged;
4K is halved, antialiased): NIQE's statistics are scale-dependent, and capping at VBench's 512
(what MUSIQ uses) averaged noise and JPEG artefacts of 720p photographs away until `niqe` rated
them above the clean frames.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from eval.preprocess import check_frames, pixel_batches, resize_longer

__all__ = [
    "NiqeQuality",
    "block_size",
    "fit_pristine",
    "load_live_pristine",
    "niqe_distance",
    "patch_features",
]

LIVE_PARAMS = Path(__file__).with_name("params") / "niqe_live_pristine.npz"
# Quality = exp(-NIQE / _TEMPERATURE): NIQE 3 (pristine photo) -> 0.74, 10 -> 0.37, 20 -> 0.14.
_TEMPERATURE = 10.0
# Seeds of the renderer's videos that define the `niqe_synthetic` pristine model: far from the
# seeds the dataset and the validity suite render, so the model never saw the videos it scores.
_SYNTHETIC_SEEDS = range(1_000_000, 1_000_024)
_SYNTHETIC_FRAMES = 8
# Longer side NIQE sees (larger frames are resized) and pixels processed at once (float64).
MAX_SIDE = 2048
_BATCH_PIXELS = 2 * 512 * 512

# Shape grid of the (A)GGD moment-matching fit, as the reference code: 0.2, 0.201, ..., 10.
_GRID = torch.arange(0.2, 10.001, 0.001, dtype=torch.float64)
# r(g) = Gamma(2/g)^2 / (Gamma(1/g) Gamma(3/g)), increasing in g, matched to the sample ratio.
_R_GRID = torch.exp(2 * torch.lgamma(2 / _GRID) - torch.lgamma(1 / _GRID) - torch.lgamma(3 / _GRID))
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical, two diagonals


def _gaussian_taps() -> torch.Tensor:
    """1-D factor of the 7x7 Gaussian of sigma 7/6 (MATLAB fspecial('gaussian', 7, 7/6)), sum 1."""
    ax = torch.arange(-3, 4, dtype=torch.float64)
    g = torch.exp(-(ax**2) / (2 * (7 / 6) ** 2))
    return g / g.sum()


def _half_kernel() -> torch.Tensor:
    """MATLAB imresize(0.5, 'bicubic') with antialiasing: 8 taps of 0.5 * cubic(0.5 * d)."""
    d = torch.tensor([3.5, 2.5, 1.5, 0.5, -0.5, -1.5, -2.5, -3.5], dtype=torch.float64) * 0.5
    a = d.abs()
    cubic = torch.where(
        a <= 1, 1.5 * a**3 - 2.5 * a**2 + 1, -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    ) * (a < 2)
    return cubic / cubic.sum()


def block_size(height: int, width: int) -> int:
    """Even block side: min(H, W) / 4 clamped to 8..96 (96, the reference value, from 384 px on)."""
    side = min(height, width)
    if side < 16:
        raise ValueError(f"NIQE needs frames of at least 16x16 pixels, got {height}x{width}")
    return max(8, min(96, side // 4 // 2 * 2))


def _aggd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AGGD moment fit of each row of x [N, n] -> shape alpha, left / right scales beta_l, beta_r."""
    neg, pos = x < 0, x > 0
    left = torch.sqrt((x.square() * neg).sum(1) / neg.sum(1))  # NaN without negatives
    right = torch.sqrt((x.square() * pos).sum(1) / pos.sum(1))
    ratio = left / right
    r_hat = x.abs().mean(1).square() / x.square().mean(1)
    r_norm = r_hat * (ratio**3 + 1) * (ratio + 1) / (ratio**2 + 1) ** 2
    # Nearest grid point (the reference's argmin of the squared difference, on a sorted grid).
    hi = torch.searchsorted(_R_GRID, r_norm.nan_to_num(0.0).contiguous()).clamp(1, len(_GRID) - 1)
    lo = hi - 1
    idx = torch.where((r_norm - _R_GRID[lo]).abs() <= (_R_GRID[hi] - r_norm).abs(), lo, hi)
    alpha = torch.where(r_norm.isnan(), torch.nan, _GRID[idx])
    scale = torch.exp(0.5 * (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)))
    return alpha, left * scale, right * scale


def _block_features(blocks: torch.Tensor) -> torch.Tensor:
    """18 features of each MSCN block [N, b, b]: GGD (alpha, mean scale), 4 x AGGD of products."""
    alpha, beta_l, beta_r = _aggd(blocks.flatten(1))
    feats = [alpha, (beta_l + beta_r) / 2]
    for shift in _SHIFTS:  # circular shift inside the block, as the reference implementation
        alpha, beta_l, beta_r = _aggd((blocks * torch.roll(blocks, shift, dims=(1, 2))).flatten(1))
        mean = (beta_r - beta_l) * torch.exp(torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha))
        feats += [alpha, mean, beta_l, beta_r]
    return torch.stack(feats, dim=1)


def _gaussian_filter(padded: torch.Tensor) -> torch.Tensor:
    """Separable 7x7 Gaussian of [B, 1, H + 6, W + 6] -> [B, 1, H, W] (valid), as 2 x 7 shifted
    multiply-adds: float64 convolutions on CPU are several times slower and build im2col buffers."""
    taps = _gaussian_taps().tolist()
    height, width = padded.shape[-2] - 6, padded.shape[-1] - 6
    rows = sum(t * padded[..., k : k + height, :] for k, t in enumerate(taps))
    return sum(t * rows[..., k : k + width] for k, t in enumerate(taps))


def _mscn(img: torch.Tensor) -> torch.Tensor:
    """MSCN coefficients of [B, 1, H, W] in 0..255 (replicate borders, C = 1)."""
    padded = F.pad(img, (3, 3, 3, 3), mode="replicate")
    mu = _gaussian_filter(padded)
    sigma = torch.sqrt((_gaussian_filter(padded.square()) - mu.square()).abs())
    return (img - mu) / (sigma + 1)


def _halve(img: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] (H, W even) -> [B, 1, H/2, W/2], MATLAB bicubic with symmetric borders."""
    kernel = _half_kernel()
    for dim in (2, 3):
        n = img.shape[dim]
        # Output i covers input 2i - 3 .. 2i + 4; mirror 3 before and 4 after (edge repeated).
        index = torch.arange(-3, n + 4)
        index = torch.where(
            index < 0, -index - 1, torch.where(index >= n, 2 * n - index - 1, index)
        )
        padded = img.index_select(dim, index).movedim(dim, -1)
        shape = padded.shape
        out = F.conv1d(padded.reshape(-1, 1, shape[-1]), kernel.view(1, 1, 8), stride=2)
        img = out.reshape(*shape[:-1], -1).movedim(-1, dim)
    return img


def _luma(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [T, 3, H, W] -> rounded BT.601 Y in 16..235 [T, H, W] (MATLAB rgb2ycbcr)."""
    weights = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64).view(1, 3, 1, 1)
    return ((frames.double() / 255 * weights).sum(1) + 16).round()


def patch_features(luma: torch.Tensor, block: int) -> torch.Tensor:
    """Luma [T, H, W] (0..255) -> features [T, N, 36] of its N = (H // b) (W // b) blocks."""
    num, height, width = luma.shape
    rows, cols = height // block, width // block
    img = luma[:, : rows * block, : cols * block].unsqueeze(1).double()
    per_scale = []
    for scale in (1, 2):
        mscn = _mscn(img)[:, 0]
        b = block // scale
        blocks = mscn.reshape(num, rows, b, cols, b).permute(0, 3, 1, 2, 4).reshape(-1, b, b)
        per_scale.append(_block_features(blocks).reshape(num, rows * cols, 18))
        if scale == 1:
            img = _halve(img)
    return torch.cat(per_scale, dim=-1)


def niqe_distance(features: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Eq. 10 per frame from block features [T, N, 36]; NaN for a frame without usable blocks."""
    out = []
    for frame in features:
        usable = frame[~frame.isnan().any(dim=1)]
        if len(usable) == 0:
            out.append(torch.tensor(math.nan, dtype=torch.float64))
            continue
        cov_d = torch.cov(usable.T) if len(usable) > 1 else torch.zeros_like(cov)
        diff = mu - usable.mean(0)
        out.append(torch.sqrt(diff @ torch.linalg.pinv((cov + cov_d) / 2) @ diff))
    return torch.stack(out)


def fit_pristine(videos: list[torch.Tensor], block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pristine MVG (mu [36], cov [36, 36]) of the usable blocks of uint8 videos [T, 3, H, W]."""
    feats = torch.cat([patch_features(_luma(v), block).reshape(-1, 36) for v in videos])
    usable = feats[~feats.isnan().any(dim=1)]
    if len(usable) < 37:
        raise ValueError(f"fit_pristine: {len(usable)} usable blocks, need > 36 for a covariance")
    return usable.mean(0), torch.cov(usable.T)


def load_live_pristine(path: str | Path = LIVE_PARAMS) -> tuple[torch.Tensor, torch.Tensor]:
    """The published natural-image model (mu [36], cov [36, 36]) from the vendored npz."""
    with np.load(path) as params:
        mu = torch.from_numpy(params["mu_pris_param"]).reshape(36)
        cov = torch.from_numpy(params["cov_pris_param"]).reshape(36, 36)
    return mu.double(), cov.double()


def _fit_size(frames: torch.Tensor, max_side: int) -> torch.Tensor:
    """uint8 [T, 3, H, W] resized (antialiased, rounded) so the longer side is <= max_side."""
    if max(frames.shape[-2:]) <= max_side:
        return frames
    resized = resize_longer(frames.float(), max_side, mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


class NiqeQuality:
    """Per-frame imaging quality exp(-NIQE / 10) against the LIVE or the synthetic pristine model.

    Valid domains (`benchmarks/metric_validity.py`): `niqe` on real footage (photographs, recorded
    clips), `niqe_synthetic` on the embedded renderer's videos only.
    """

    def __init__(
        self, model: Literal["live", "synthetic"] = "live", max_side: int = MAX_SIDE
    ) -> None:
        if model not in ("live", "synthetic"):
            raise ValueError(f"NiqeQuality: model must be 'live' or 'synthetic', got {model!r}")
        if max_side < 16:
            raise ValueError(f"NiqeQuality: max_side must be >= 16, got {max_side!r}")
        self.model = model
        self.max_side = max_side
        self.name = "niqe" if model == "live" else "niqe_synthetic"
        self._pristine: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def pristine(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, cov) used for frames of this size (the synthetic model is fitted once per size)."""
        key = (height, width) if self.model == "synthetic" else (0, 0)
        if key not in self._pristine:
            if self.model == "live":
                self._pristine[key] = load_live_pristine()
            else:
                from datamodules.synthetic import render_video

                videos = [
                    render_video(seed, _SYNTHETIC_FRAMES, (height, width))[0]
                    for seed in _SYNTHETIC_SEEDS
                ]
                self._pristine[key] = fit_pristine(videos, block_size(height, width))
        return self._pristine[key]

    def distances(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> NIQE per frame [T] (lower is better; NaN: no textured block)."""
        check_frames(frames, f"{self.name}.distances")
        out = []
        for batch in pixel_batches(frames.cpu(), _BATCH_PIXELS * 4):
            batch = _fit_size(batch, self.max_side)
            height, width = batch.shape[-2:]
            mu, cov = self.pristine(height, width)
            block = block_size(height, width)
            for part in pixel_batches(batch, _BATCH_PIXELS):
                out.append(niqe_distance(patch_features(_luma(part), block), mu, cov))
        return torch.cat(out)

    def scores(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> [T] in [0, 1], higher is better (0 for a frame with no texture)."""
        return torch.exp(-self.distances(frames) / _TEMPERATURE).nan_to_num(0.0)
