"""Real backend `dino_vitb16`: DINO ViT-B/16 from a local `dino_vitbase16_pretrain.pth`.

Plain-torch ViT with the parameter names of facebookresearch/dino `vision_transformer.py`, so the
official backbone state dict loads strictly. Output: the 768-d CLS token after the final LayerNorm,
as VBench's subject consistency uses (METRICS.md: shorter side 224 bilinear, no crop, ImageNet norm).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eval.backends.base import TorchBackend
from eval.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_frames,
    normalize,
    resize_shorter,
    to_unit_float,
)

__all__ = ["DinoFeatures", "DinoViT", "load_dino_vitb16"]


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """DINO's VisionTransformer (head = Identity, so no head parameters); defaults are ViT-B/16."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = _PatchEmbed(patch_size, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def _interpolate_pos(self, h: int, w: int) -> torch.Tensor:
        # As DINO's interpolate_pos_encoding: bicubic with the +0.1 scale-factor offset.
        n = self.pos_embed.shape[1] - 1
        h0, w0 = h // self.patch_size, w // self.patch_size
        if h0 * w0 == n and h0 == w0:
            return self.pos_embed
        side = int(math.sqrt(n))
        grid = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, scale_factor=((h0 + 0.1) / side, (w0 + 0.1) / side), mode="bicubic"
        )
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, H, W] -> CLS token after the final norm [B, embed_dim]."""
        h, w = x.shape[-2:]
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = tokens + self._interpolate_pos(h, w)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def load_dino_vitb16(path: str | Path, **arch: int) -> DinoViT:
    """Build DINO ViT-B/16 (or `arch` overrides, for tests) and strictly load a local state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dino_vitb16: checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Training checkpoints wrap the backbone; the released *_pretrain.pth is the bare state dict.
    for key in ("teacher", "state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    with torch.device("meta"):  # no random init of 86M parameters that are overwritten anyway
        net = DinoViT(**arch)
    net.load_state_dict(state, strict=True, assign=True)
    return net


class DinoFeatures(TorchBackend):
    """Subject-consistency features of VBench: DINO CLS tokens of every frame."""

    def __init__(
        self,
        checkpoint: str | Path,
        device: str | torch.device | None = None,
        size: int = 224,
        name: str = "dino_vitb16",
        **arch: int,
    ) -> None:
        super().__init__(load_dino_vitb16(checkpoint, **arch), device)
        self.size, self.name = size, name

    @torch.no_grad()
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> [T, 768] on CPU."""
        check_frames(frames, "DinoFeatures.features")
        out = []
        for chunk in self._chunks(frames):
            x = resize_shorter(to_unit_float(chunk.to(self.device)), self.size, "bilinear")
            # Patchify drops remainders, as DINO's conv stem does.
            out.append(self.module(normalize(x, IMAGENET_MEAN, IMAGENET_STD)).float().cpu())
        return torch.cat(out)
