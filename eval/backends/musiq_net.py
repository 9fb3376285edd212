"""MUSIQ (Ke et al. 2021, multi-scale image quality transformer) in plain torch, with the module and
parameter names of pyiqa's `MUSIQ` (`pyiqa/archs/musiq_arch.py`), so pyiqa's converted checkpoints
(`musiq_spaq_ckpt-358bb6af.pth`, the one VBench's imaging quality loads) load with `strict=True`.
Written from the paper and pyiqa's documented design, not copied:

- input: RGB in [0, 1], mapped to [-1, 1]; a multi-scale patch sequence of 32x32 patches (TF
  "SAME" padding) from the image resized (bicubic, aspect kept) to longer side 224 and 384
  (each padded / cut to ceil(L / 32)^2 patches, the padding masked out) and from the image at its
  own resolution (all patches). Each patch carries a hashed spatial position on a 10x10 grid
  (nearest-neighbour resampling of the grid to the patch counts) and its scale index 0, 1, 2.
- patch stem: weight-standardised 7x7 stride-2 conv, GroupNorm, ReLU, 3x3 stride-2 max pool
  ("SAME"), one bottleneck block (64 -> 256), flattened in TensorFlow's (h, w, c) order, linear to
  384 dims.
- encoder: + hash position embedding + scale embedding, a learned [CLS] token, 14 pre-norm
  blocks (6 heads, MLP 1152, GELU; padded tokens masked with -1000 before the softmax), final
  LayerNorm; a linear head on [CLS] gives the score (SPAQ: about 0..100).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MUSIQ", "multiscale_patches"]

PATCH = 32
GRID = 10
SCALES = (224, 384)


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" zero padding for a square kernel (extra pixel at the bottom / right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class StdConv(nn.Conv2d):
    """Conv2d with weight standardisation (per output channel, unbiased std + 1e-5), "SAME" pad."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(
            _same_pad(x, self.kernel_size[0], self.stride[0]), w, self.bias, self.stride
        )


class Bottleneck(nn.Module):
    """1x1, 3x3, 1x1 StdConv + GroupNorm(32) bottleneck with a projected shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = StdConv(c_in, c_in, 1, bias=False)
        self.gn1 = nn.GroupNorm(32, c_in, eps=1e-4)
        self.conv2 = StdConv(c_in, c_in, 3, bias=False)
        self.gn2 = nn.GroupNorm(32, c_in, eps=1e-4)
        self.conv3 = StdConv(c_in, c_out, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, c_out, eps=1e-4)
        self.relu = nn.ReLU(True)
        self.needs_projection = c_in != c_out
        if self.needs_projection:
            self.conv_proj = StdConv(c_in, c_out, 1, bias=False)
            self.gn_proj = nn.GroupNorm(32, c_out, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.gn_proj(self.conv_proj(x)) if self.needs_projection else x
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        return self.relu(self.gn3(self.conv3(y)) + shortcut)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MultiHeadAttention(nn.Module):
    """Self-attention with separate q / k / v projections and a token mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        pair = mask.view(b, 1, n, 1) * mask.view(b, 1, 1, n)
        attn = attn.masked_fill(pair == 0, -1e3).softmax(dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class AddHashSpatialPositionEmbs(nn.Module):
    def __init__(self, grid: int, dim: int) -> None:
        super().__init__()
        self.position_emb = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + self.position_emb[0][positions.long()]


class AddScaleEmbs(nn.Module):
    def __init__(self, scales: int, dim: int) -> None:
        super().__init__()
        self.scale_emb = nn.Parameter(torch.randn(scales, dim) * 0.02)

    def forward(self, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return x + self.scale_emb[scales.long()]


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, heads: int, layers: int, scales: int) -> None:
        super().__init__()
        self.posembed_input = AddHashSpatialPositionEmbs(GRID, dim)
        self.scaleembed_input = AddScaleEmbs(scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.transformer = nn.ModuleDict(
            {f"encoderblock_{i}": TransformerBlock(dim, mlp_dim, heads) for i in range(layers)}
        )

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, scales: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        x = self.scaleembed_input(self.posembed_input(x, positions), scales)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        for block in self.transformer.values():
            x = block(x, mask)
        return self.encoder_norm(x)


def _hashed_positions(count_h: int, count_w: int) -> torch.Tensor:
    """[count_h * count_w] row-major indices into the GRID x GRID position table."""
    grid = torch.arange(GRID, dtype=torch.float32).view(1, 1, GRID)
    cols = F.interpolate(grid, size=count_w, mode="nearest")[0, 0]
    rows = F.interpolate(grid, size=count_h, mode="nearest")[0, 0]
    return (rows.view(-1, 1) * GRID + cols.view(1, -1)).reshape(-1)


def _scale_patches(image: torch.Tensor, scale_id: int, max_len: int | None) -> torch.Tensor:
    """[B, L, 3 * 32 * 32 + 3]: patches, hashed position, scale id, mask (padded / cut to max_len)."""
    b, c, h, w = image.shape
    patches = F.unfold(_same_pad(image, PATCH, PATCH), PATCH, stride=PATCH)  # [B, c*32*32, L]
    count = patches.shape[-1]
    positions = _hashed_positions(math.ceil(h / PATCH), math.ceil(w / PATCH)).to(patches)
    extra = torch.stack(
        [positions, torch.full_like(positions, scale_id), torch.ones_like(positions)]
    )
    out = torch.cat([patches, extra.expand(b, -1, -1)], dim=1)
    if max_len is not None:
        out = F.pad(out, (0, max(0, max_len - count)))[..., :max_len]  # padding: mask 0
    return out.transpose(1, 2)


def multiscale_patches(images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> the MUSIQ input sequence [B, L, 3075]."""
    h, w = images.shape[-2:]
    parts = []
    for scale_id, longer in enumerate(SCALES):
        ratio = longer / max(h, w)
        size = (round(h * ratio), round(w * ratio))
        resized = F.interpolate(images, size=size, mode="bicubic", align_corners=False)
        parts.append(_scale_patches(resized, scale_id, math.ceil(longer / PATCH) ** 2))
    parts.append(_scale_patches(images, len(SCALES), None))  # native resolution, every patch
    return torch.cat(parts, dim=1)


class MUSIQ(nn.Module):
    """MUSIQ with pyiqa's names; `forward` takes RGB in [0, 1] and returns scores [B, num_class]."""

    def __init__(
        self,
        num_class: int = 1,
        dim: int = 384,
        mlp_dim: int = 1152,
        heads: int = 6,
        layers: int = 14,
    ) -> None:
        super().__init__()
        self.conv_root = StdConv(3, 64, 7, 2, bias=False)
        self.gn_root = nn.GroupNorm(32, 64, eps=1e-6)
        self.block1 = Bottleneck(64, 256)
        self.embedding = nn.Linear(256 * (PATCH // 4) ** 2, dim)
        self.transformer_encoder = TransformerEncoder(dim, mlp_dim, heads, layers, len(SCALES) + 1)
        head = nn.Linear(dim, num_class)
        self.head: nn.Module = head if num_class == 1 else nn.Sequential(head, nn.Softmax(dim=-1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        seq = multiscale_patches((images - 0.5) * 2)
        b, n, _ = seq.shape
        positions, scales, mask = seq[..., -3], seq[..., -2], seq[..., -1].bool()
        x = seq[..., :-3].reshape(-1, 3, PATCH, PATCH)
        x = F.relu(self.gn_root(self.conv_root(x)))
        x = F.max_pool2d(_same_pad(x, 3, 2), 3, 2)
        x = self.block1(x).permute(0, 2, 3, 1).reshape(b, n, -1)  # TF (h, w, c) order
        x = self.transformer_encoder(self.embedding(x), positions, scales, mask)
        q = self.head(x[:, 0])
        if q.shape[-1] == 1:
            return q
        return (q * torch.arange(1, q.shape[-1] + 1, device=q.device)).sum(-1, keepdim=True)
