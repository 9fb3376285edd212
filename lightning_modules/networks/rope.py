"""3D rotary position embedding over (t, h, w) with RoPE consistency (Sec. 3.1, Eq. 2).

Every visual token has a position (t, h, w): t is the latent frame index in the WHOLE video with
the reference image at index 0 (the paper treats the image as a CLS-like token at the start of the
video), h and w are 1x-patch grid coordinates. A position becomes a rotation table: (cos, sin) of
each rotary pair's angle. A compressed FramePack group gets the MEAN of the tables of the 1x
positions it covers, as FramePack does (its RoPE frequencies are average-pooled with the group's
kernel), which rotates and also shrinks the pair, unlike the table of the mean position. Text and
memory tokens are not rotated (identity table): they have no place in space-time.
"""

from typing import Literal

import torch
from einops import repeat
from torch import Tensor

RopeLayout = Literal["absolute", "relative"]


def split_head_dim(head_dim: int) -> tuple[int, int, int]:
    """Rotary dims for (t, h, w): a quarter for time, the rest shared by h and w, all even."""
    if head_dim % 4 != 0:
        raise ValueError(f"head_dim must be a multiple of 4 for 3D RoPE, got {head_dim}")
    dt = 2 * max(1, head_dim // 8)
    dh = 2 * ((head_dim - dt) // 4)
    return dt, dh, head_dim - dt - dh


class Rope3D(torch.nn.Module):
    """Maps positions [b, n, 3] to rotation tables [b, n, head_dim / 2, 2] = (cos, sin)."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.axes_dims = split_head_dim(head_dim)
        for name, dim in zip(("t", "h", "w"), self.axes_dims, strict=True):
            inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
            self.register_buffer(f"inv_freq_{name}", inv.float(), persistent=False)

    def angles(self, pos: Tensor) -> Tensor:
        """Rotation angle of each rotary pair [..., head_dim / 2] at positions [..., 3]."""
        freqs = (self.inv_freq_t, self.inv_freq_h, self.inv_freq_w)
        angles = [pos[..., i, None].float() * f for i, f in enumerate(freqs)]
        return torch.cat(angles, dim=-1)

    def forward(self, pos: Tensor) -> Tensor:
        angles = self.angles(pos)
        return torch.stack((angles.cos(), angles.sin()), dim=-1)


def identity_rotation(b: int, n: int, pairs: int, like: Tensor) -> Tensor:
    """The table of unrotated tokens [b, n, pairs, 2]: cos 1, sin 0."""
    return torch.stack((like.new_ones(b, n, pairs), like.new_zeros(b, n, pairs)), dim=-1)


def apply_rope(x: Tensor, rotation: Tensor) -> Tensor:
    """Rotate pairs of channels of x [b, heads, n, d] by the table [b, n, d/2, 2] (cos, sin).

    Pair (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos) is the complex product
    (x1 + i x2)(cos + i sin): one kernel forward and one backward on views of x and the table,
    instead of a dozen element-wise ops and a stack (issue 24). The product is computed in
    float32 (the table's precision) and returned in x's dtype.
    """
    if torch.compiler.is_compiling():  # inductor generates no code for complex tensors
        cos, sin = rotation[:, None].to(x.dtype).unbind(-1)
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)
    table = torch.view_as_complex(rotation.float().contiguous())[:, None]
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * table).flatten(-2).to(x.dtype)


def grid_positions(t_index: Tensor, h: int, w: int) -> Tensor:
    """Positions [b, 3, f, h, w] of a 1x-patch grid for frames at temporal indices t_index [b, f]."""
    b, f = t_index.shape
    hh = torch.arange(h, device=t_index.device, dtype=torch.float32)
    ww = torch.arange(w, device=t_index.device, dtype=torch.float32)
    return torch.stack(
        (
            repeat(t_index.float(), "b f -> b f h w", h=h, w=w),
            repeat(hh, "h -> b f h w", b=b, f=f, w=w),
            repeat(ww, "w -> b f h w", b=b, f=f, h=h),
        ),
        dim=1,
    )


def frame_indices(
    segment_index: Tensor, frames: int, history: int, layout: RopeLayout
) -> tuple[Tensor, Tensor]:
    """Temporal RoPE indices of (history slots [b, K], noisy segment frames [b, T]).

    `absolute` (the paper's RoPE consistency): latent frame j of the video sits at 1 + j, so
    segment k's frames are 1 + k*T + [0, T) and its K history slots are the K indices before
    that (negative for zero-padded slots early in the video). `relative` is FramePack-F1's
    per-window layout: history at 1..K and the target right after, the same for every segment.
    The image is at 0 in both layouts.
    """
    device = segment_index.device
    if layout == "absolute":
        start = 1 + segment_index.long() * frames
    elif layout == "relative":
        start = torch.full_like(segment_index.long(), 1 + history)
    else:
        raise ValueError(f"unknown rope layout {layout!r}; expected 'absolute' or 'relative'")
    hist = start[:, None] - history + torch.arange(history, device=device)
    noisy = start[:, None] + torch.arange(frames, device=device)
    return hist, noisy
