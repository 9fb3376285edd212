"""FramePack-F1 short-term context (Sec. 3.1, "FramePack"; Zhang & Agrawala, 2025).

The latent frames just before the current segment are packed at fixed compression ratios: the
newest at 1x (patch 1x2x2), the next at 2x (2x4x4), older ones at 4x (4x8x8). Missing history
(early segments) is zero-padded, so the context costs the same number of tokens for every segment
of every video: the constant budget that makes autoregressive rollout O(1) per segment.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from lightning_modules.networks.patch_embed import patch_embed
from lightning_modules.networks.rope import Rope3D, grid_positions


def pack_kernels(patch: int = 2) -> dict[int, tuple[int, int, int]]:
    """The (t, h, w) kernels at 1x, 2x and 4x for a 1x patch of `patch` x `patch` latents
    (FramePack's 1x2x2 / 2x4x4 / 4x8x8 at patch 2)."""
    if patch < 1:
        raise ValueError(f"patch must be >= 1 latent, got {patch}")
    return {1: (1, patch, patch), 2: (2, 2 * patch, 2 * patch), 4: (4, 4 * patch, 4 * patch)}


PATCH_1X, PATCH_2X, PATCH_4X = pack_kernels(2).values()  # FramePack's own


def gather_history(latents: Tensor, start: Tensor, frames: int) -> Tensor:
    """The `frames` latent frames before index `start` [b], oldest first, zero-padded in front.

    latents: [b, f, c, h, w] (a whole video); returns [b, frames, c, h, w].
    """
    b = latents.shape[0]
    padded = F.pad(latents, (0, 0, 0, 0, 0, 0, frames, 0))  # `frames` zero frames in front
    idx = start.long()[:, None] + torch.arange(frames, device=latents.device)  # shifted by pad
    return padded[torch.arange(b, device=latents.device)[:, None], idx]


def check_frame_pack(counts: tuple[int, int, int]) -> tuple[int, int, int]:
    """History latent frames at (1x, 2x, 4x), validated: each >= 0, and whole 2x / 4x groups."""
    n1, n2, n4 = counts
    if min(counts) < 0 or n2 % PATCH_2X[0] or n4 % PATCH_4X[0]:
        raise ValueError(
            f"frame_pack counts (1x, 2x, 4x) = {tuple(counts)} must be >= 0 with the 2x count a "
            f"multiple of {PATCH_2X[0]} and the 4x count a multiple of {PATCH_4X[0]}"
        )
    return n1, n2, n4


class FramePackContext(nn.Module):
    """Packs history latents [b, K, c, h, w] into a fixed number of context tokens."""

    def __init__(
        self,
        latent_channels: int,
        width: int,
        counts: tuple[int, int, int] = (1, 2, 16),
        patch: int = 2,
    ) -> None:
        super().__init__()
        self.counts = check_frame_pack(counts)
        self.patch = patch
        self.kernels = pack_kernels(patch)
        k1, k2, k4 = self.kernels[1], self.kernels[2], self.kernels[4]
        self.proj_1x = nn.Conv3d(latent_channels, width, k1, stride=k1)
        self.proj_2x = nn.Conv3d(latent_channels, width, k2, stride=k2)
        self.proj_4x = nn.Conv3d(latent_channels, width, k4, stride=k4)
        self.reset_compressed_from_1x()

    @torch.no_grad()
    def reset_compressed_from_1x(self) -> None:
        """FramePack's init: 2x/4x kernels are the 1x kernel tiled and divided by 8 and 64, so at
        init a compressed token is the average of the 1x tokens it covers."""
        for proj, kernel in ((self.proj_2x, self.kernels[2]), (self.proj_4x, self.kernels[4])):
            reps = [k // p for k, p in zip(kernel, self.kernels[1], strict=True)]
            tiled = self.proj_1x.weight.repeat(1, 1, *reps)
            proj.weight.copy_(tiled / (reps[0] * reps[1] * reps[2]))
            proj.bias.copy_(self.proj_1x.bias)

    @property
    def history_frames(self) -> int:
        return sum(self.counts)

    def num_tokens(self, h: int, w: int) -> int:
        """Context tokens for a latent grid h x w (same for every segment: the F1 budget)."""
        total = 0
        for n, (kt, kh, kw) in zip(self.counts, self.kernels.values(), strict=True):
            total += (n // kt) * -(-h // kh) * -(-w // kw)
        return total

    def embed(self, x: Tensor, t_index: Tensor, scale: int, rope: Rope3D) -> tuple[Tensor, Tensor]:
        """Patchify x [b, f, c, h, w] at ratio `scale` (1, 2 or 4) at temporal indices [b, f].

        Returns tokens [b, n, d] and their RoPE tables [b, n, d_head/2, 2]. As in FramePack, a
        compressed token's table is the mean of the (cos, sin) tables of the 1x positions it
        covers, replicate-padded like the latents (the table is pooled exactly like the content).
        """
        proj = {1: self.proj_1x, 2: self.proj_2x, 4: self.proj_4x}[scale]
        p, (kt, kh, kw) = self.patch, self.kernels[scale]
        b, f, _, h, w = x.shape
        if h % p or w % p:
            raise ValueError(f"latent grid {h}x{w} must be a multiple of the 1x patch {p}")
        pad_h, pad_w = -h % kh, -w % kw
        x = rearrange(x, "b f c h w -> b c f h w")
        pos = grid_positions(t_index, h // p, w // p)  # [b, 3, f, h/p, w/p] in 1x-patch units
        table = rope(rearrange(pos, "b three f h w -> b f h w three"))
        table = rearrange(table, "b f h w d two -> b (d two) f h w")
        if pad_h or pad_w:  # FramePack replicate-pads history to multiples of the kernel
            x = F.pad(x, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")
            table = F.pad(table, (0, pad_w // p, 0, pad_h // p, 0, 0), mode="replicate")
        tokens = rearrange(patch_embed(proj, x), "b f h w d -> b (f h w) d")
        if scale > 1:
            table = F.avg_pool3d(table, (kt, kh // p, kw // p))
        return tokens, rearrange(table, "b (d two) f h w -> b (f h w) d two", two=2)

    def forward(self, history: Tensor, t_index: Tensor, rope: Rope3D) -> tuple[Tensor, Tensor]:
        """history [b, K, c, h, w] oldest first with temporal indices [b, K] -> (tokens, tables)."""
        n1, n2, n4 = self.counts
        if history.shape[1] != n1 + n2 + n4:
            raise ValueError(f"expected {n1 + n2 + n4} history frames, got {history.shape[1]}")
        parts = [(4, slice(0, n4)), (2, slice(n4, n4 + n2)), (1, slice(n4 + n2, None))]
        tokens, tables = [], []
        for scale, sl in parts:
            if sl.stop == sl.start or (sl.stop is None and n1 == 0):
                continue
            tok, table = self.embed(history[:, sl], t_index[:, sl], scale, rope)
            tokens.append(tok)
            tables.append(table)
        return torch.cat(tokens, dim=1), torch.cat(tables, dim=1)
