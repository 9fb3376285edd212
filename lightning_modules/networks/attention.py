"""The one attention path: every attention in the project (the DiT's joint attention, SemanticPack's
Memorize / Squeeze / pooling, the FramePack-F1 adapter's blocks) is `attend`, and the zero-gated
read of SemanticPack's psi is `read_memory`, for both backbones.

Layout [b, heads, n, d]. `attend` is `F.scaled_dot_product_attention`, which picks the fused
kernel for the device (flash / memory-efficient on CUDA, a fused CPU kernel otherwise).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

MemoryRead = Literal["softmax", "off_by_one"]


def check_memory_read(read: str) -> None:
    """Raise unless `read` is a `MemoryRead` (both backbones check it when built)."""
    if read not in ("softmax", "off_by_one"):
        raise ValueError(f"unknown memory_read {read!r}; expected softmax or off_by_one")


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v for q [b, h, n_q, d], k, v [b, h, n_k, d]; `mask` (bool,
    broadcast to [b, h, n_q, n_k]) marks the keys each query may read."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def read_memory(
    out: Tensor,
    q: Tensor,
    k_psi: Tensor,
    v_psi: Tensor,
    gate: Tensor,
    read: MemoryRead = "softmax",
) -> Tensor:
    """Zero-gated memory read-in (LLaMA-Adapter's zero-init attention, Zhang et al., 2023):
    out + g * softmax(q K_psi^T) V_psi with one gate g per head [h], initialised to 0.

    The tokens attend among themselves as without memory (`out`) and read psi in a separate
    softmax over its m keys, so at g = 0 the output is bit-identical to the memory-free one while
    dL/dg = <dL/dout, read> is not zero: the gate opens during training.

    `read="softmax"` makes every token read a full convex mixture of psi's values: a token that
    needs nothing from memory still gets g times an average of them, so the per-head gate can
    only open or shut the read for all tokens at once. `"off_by_one"` adds one key with logit 0
    and a zero value (softmax off by one, Miller 2023: exp(s_j) / (1 + sum_i exp(s_i))), so each
    token decides how much it reads, down to nothing.
    """
    check_memory_read(read)
    if read == "off_by_one":
        null = k_psi.new_zeros(*k_psi.shape[:-2], 1, k_psi.shape[-1])
        k_psi, v_psi = torch.cat((null, k_psi), dim=-2), torch.cat((null, v_psi), dim=-2)
    return out + gate[:, None, None] * attend(q, k_psi, v_psi)
