"""Memory recall: an auxiliary loss that asks psi to give back a segment it has seen.

Not in the paper; an option for issue 19's memory recipe. SemanticPack learns what to keep only
from the denoising loss of the rare targets that need it, through a DiT read-in that is itself
learning, so early on nothing tells Memorize and the write gate that a landmark is worth keeping.
The Compressive Transformer (Rae et al., 2020, Sec. 3.2) faced the same problem with its
compressed memory and trained the compression with an auxiliary reconstruction loss. Here:

    loss = || Recall(psi_i, i - 1 - j) - patches(x^j) ||^2,    j ~ U{0, ..., i - 1 - k}

psi_i is the memory the DiT reads for segment i (after segments 0..i-1), x^j one of the segments
it has memorized, `i - 1 - j` how many updates ago. k is the number of segments FramePack's
history holds in full: psi is asked only for segments that have left it, what only the long-term
memory can give back (asking for every segment, k = 0, measured worse: README, issue 19). The target is x^j's latent cut into Memorize's
(t, h, w) patches, so the decoder answers at the resolution Memorize sees. With gradient through
the whole recurrence (`memory_bptt: null`), the loss reaches the update that wrote x^j across the
updates since, so it trains retention as well as encoding.

The decoder is small on purpose (one cross-attention from per-patch queries to psi, then a linear
read-out): what it can give back must already be in psi.
"""

import torch
from einops import rearrange
from torch import Tensor, nn

from lightning_modules.networks.semantic_pack import MultiHeadAttention, pad_to_patch


class MemoryRecall(nn.Module):
    """Reconstructs a memorized segment's latent patches from psi [b, n_psi, width].

    Args:
        width: psi's width.
        heads: attention heads of the cross-attention.
        patch: Memorize's (t, h, w) latent patch; targets are cut into these.
        latent_channels: the codec's latent channels.
        max_grid: the largest (f', h', w') patch grid of a segment: each query is the sum of
            one learned embedding per axis, so any grid up to this size works.
        max_distance: the largest `i - 1 - j` with its own embedding (larger ones share the last).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        patch: tuple[int, int, int],
        latent_channels: int,
        max_grid: tuple[int, int, int] = (8, 32, 32),
        max_distance: int = 16,
    ) -> None:
        super().__init__()
        self.patch = tuple(patch)
        self.max_grid = tuple(max_grid)
        self.max_distance = max_distance
        self.axes = nn.ParameterList(
            nn.Parameter(torch.randn(n, width) * width**-0.5) for n in max_grid
        )
        self.distance = nn.Embedding(max_distance + 1, width)
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)
        self.out = nn.Linear(width, latent_channels * patch[0] * patch[1] * patch[2])

    def targets(self, segment: Tensor) -> Tensor:
        """A segment's latents [b, T, c, h, w] as Memorize patches [b, f', h', w', c pt ph pw]."""
        pt, ph, pw = self.patch
        patches = rearrange(
            pad_to_patch(segment, self.patch),
            "b c (f pt) (h ph) (w pw) -> b f h w (c pt ph pw)",
            pt=pt,
            ph=ph,
            pw=pw,
        )
        if any(n > m for n, m in zip(patches.shape[1:4], self.max_grid, strict=True)):
            raise ValueError(
                f"a segment of {tuple(segment.shape[1:])} latents gives a patch grid "
                f"{tuple(patches.shape[1:4])} larger than MemoryRecall's max_grid {self.max_grid}"
            )
        return patches

    def forward(self, psi: Tensor, distance: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """Predicted patches [b, f' h' w', c pt ph pw] of the segment `distance` [b] updates ago,
        on a (f', h', w') patch grid."""
        f, h, w = grid
        pos = (
            self.axes[0][:f, None, None]
            + self.axes[1][None, :h, None]
            + self.axes[2][None, None, :w]
        )
        d = self.distance(distance.clamp(0, self.max_distance))
        q = self.norm_q(rearrange(pos, "f h w d -> (f h w) d")[None] + d[:, None])
        return self.out(self.attn(q, self.norm_kv(psi)))

    def loss(
        self,
        psi: Tensor,
        segments: Tensor,
        target: Tensor,
        min_distance: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Mean recall error over the videos with a segment at least `min_distance` updates old.

        psi [b, n, d] is psi_{i_b}; segments [b, s, T, c, h, w] the true segments (s >= max i_b).
        The recalled j is uniform over 0..i_b - 1 - min_distance: with `min_distance` the
        segments FramePack's history still holds, psi is asked only for what left the view.
        """
        count = target - min_distance  # how many segments qualify
        has = count >= 1
        u = torch.rand(target.shape, generator=generator, device="cpu").to(target.device)
        j = torch.minimum((u * count).long(), count - 1).clamp(min=0)
        rows = torch.arange(len(target), device=target.device)
        want = self.targets(segments[rows, j])
        got = self(psi, (target - 1 - j).clamp(min=0), tuple(want.shape[1:4]))
        want = rearrange(want, "b f h w p -> b (f h w) p")
        per_video = (got.float() - want.float()).pow(2).mean(dim=(1, 2))
        # Rows without a qualifying segment still run (weight 0): every parameter takes part in
        # every step, as data-parallel ranks need.
        return (per_video * has).sum() / has.sum().clamp(min=1)
