"""Patch embedding: a `Conv3d` whose stride equals its kernel, computed as one matmul.

Such a convolution cuts the input into non-overlapping (t, h, w) patches and projects each:
`Linear(c * kt * kh * kw -> d)` on the flattened patches, with the convolution's own weight
viewed as a matrix. The layers stay `nn.Conv3d` (parameter names and checkpoints unchanged); only
the computation differs. On CPU the oneDNN 3D convolution took about 1 ms forward and 3 ms
backward per call at the demo's sizes, the matmul a few hundredths of that (issue 24).
"""

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def patch_embed(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """`conv(x)` for x [b, c, f, h, w] as tokens [b, f', h', w', d] (channels last).

    f, h and w must be multiples of the kernel (callers pad first, as FramePack does).
    """
    kt, kh, kw = conv.kernel_size
    if (
        tuple(conv.stride) != (kt, kh, kw)
        or any(conv.padding)
        or tuple(conv.dilation) != (1, 1, 1)
        or conv.groups != 1
    ):
        raise ValueError(f"patch_embed needs a patchifying Conv3d (stride = kernel), got {conv}")
    f, h, w = x.shape[-3:]
    if f % kt or h % kh or w % kw:
        raise ValueError(
            f"input frames x grid {f}x{h}x{w} is not a multiple of the patch {kt}x{kh}x{kw}"
        )
    patches = rearrange(x, "b c (f kt) (h kh) (w kw) -> b f h w (c kt kh kw)", kt=kt, kh=kh, kw=kw)
    return F.linear(patches, conv.weight.flatten(1), conv.bias)
