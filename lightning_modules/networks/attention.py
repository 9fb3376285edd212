"""The one attention path: every attention in the project (the DiT's joint attention, SemanticPack's
Memorize / Squeeze / pooling, the FramePack-F1 adapter's blocks) is `attend`, and the zero-gated
read of SemanticPack's psi is `read_memory`, for both backbones.

Layout [b, heads, n, d]. `attend` is `F.scaled_dot_product_attention`, which picks the fused
kernel for the device (flash / memory-efficient on CUDA, a fused CPU kernel otherwise).
"""

import torch.nn.functional as F
from torch import Tensor


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v for q [b, h, n_q, d], k, v [b, h, n_k, d]; `mask` (bool,
    broadcast to [b, h, n_q, n_k]) marks the keys each query may read."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def read_memory(out: Tensor, q: Tensor, k_psi: Tensor, v_psi: Tensor, gate: Tensor) -> Tensor:
    """Zero-gated memory read-in (LLaMA-Adapter's zero-init attention, Zhang et al., 2023):
    out + g * softmax(q K_psi^T) V_psi with one gate g per head [h], initialised to 0.

    The tokens attend among themselves as without memory (`out`) and read psi in a separate
    softmax over its m keys, so at g = 0 the output is bit-identical to the memory-free one while
    dL/dg = <dL/dout, read> is not zero: the gate opens during training.
    """
    return out + gate[:, None, None] * attend(q, k_psi, v_psi)
