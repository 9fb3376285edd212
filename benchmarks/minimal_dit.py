"""The yardstick of `train_throughput.py`: a minimal DiT in plain PyTorch, nothing project-specific.

What a careful researcher would write in an afternoon (DiT's `models.py` with FLUX's RoPE):
patch tokens in, adaLN-Zero blocks (LayerNorm, `scaled_dot_product_attention` with rotary q and k,
tanh-GELU MLP), a final adaLN layer, a velocity MSE and `torch.optim.AdamW` with its defaults.
The RoPE table is computed once for a fixed token count (the yardstick has no variable positions),
so per step the model does only what any DiT must do. The benchmark builds it at the project's
width, depth, heads, MLP ratio and token count, so the two steps do (nearly) the same matmuls and
attention, and the ratio of their step times is the project's overhead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rope_table(tokens: int, head_dim: int, theta: float = 10000.0) -> Tensor:
    """Complex rotations [tokens, head_dim / 2] of 1D positions 0..tokens-1 (LLaMA's freqs_cis)."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(tokens, dtype=torch.float64), inv)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def rotate(x: Tensor, table: Tensor) -> Tensor:
    """Rotate channel pairs of x [b, h, n, d] by the complex table [n, d / 2]."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * table).flatten(-2).type_as(x)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, c: Tensor, table: Tensor) -> Tensor:
        b, n, d = x.shape
        mod = self.modulation(F.silu(c))[:, None]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(rotate(q, table), rotate(k, table), v)
        x = x + gate1 * self.proj(out.transpose(1, 2).reshape(b, n, d))
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class MinimalDiT(nn.Module):
    """Tokens [b, n, in_dim] at time t [b] -> velocity [b, n, in_dim]."""

    def __init__(
        self, in_dim: int, width: int, depth: int, heads: int, mlp_ratio: float, tokens: int
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.embed = nn.Linear(in_dim, width)
        self.t_mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(width, 2 * width)
        self.final = nn.Linear(width, in_dim)
        self.register_buffer("table", rope_table(tokens, width // heads), persistent=False)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        freqs = torch.exp(-math.log(10000) * torch.arange(128, device=t.device) / 128)
        angles = 1000 * t[:, None] * freqs[None]
        c = self.t_mlp(torch.cat((angles.cos(), angles.sin()), dim=-1))
        x = self.embed(x)
        for block in self.blocks:
            x = block(x, c, self.table)
        shift, scale = self.final_modulation(F.silu(c))[:, None].chunk(2, dim=-1)
        return self.final(self.final_norm(x) * (1 + scale) + shift)


def flow_loss(model: MinimalDiT, x: Tensor) -> Tensor:
    """Rectified-flow loss on data tokens x [b, n, in_dim]: noise, interpolate, regress velocity."""
    t = torch.rand(x.shape[0], device=x.device)
    eps = torch.randn_like(x)
    x_t = t[:, None, None] * x + (1 - t[:, None, None]) * eps
    return F.mse_loss(model(x_t, t).float(), (x - eps).float())
