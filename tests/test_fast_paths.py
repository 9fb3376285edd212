"""The faster computations of issue 24 compute what they replace: patchify convolutions as a
matmul, tanh-GELU through a sigmoid, RoPE as a complex product, the last block's skipped psi
update, the fused optimizer. Equal up to float rounding (tolerances far below a training step's
effect), and the module structure (state-dict keys) unchanged."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lightning_modules.networks.attention import attend, read_memory
from lightning_modules.networks.dit import DiTBlock
from lightning_modules.networks.frame_pack import PATCH_1X, PATCH_2X, PATCH_4X
from lightning_modules.networks.gelu import GELUTanh, gelu_tanh
from lightning_modules.networks.patch_embed import patch_embed
from lightning_modules.networks.rope import Rope3D, apply_rope, identity_rotation
from tests.helpers.tiny import perturb, tiny_dit, tiny_module, tiny_pack

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize("kernel", [PATCH_1X, PATCH_2X, PATCH_4X, (2, 2, 2)])
def test_patch_embed_is_the_convolution(kernel: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(12, 32, kernel, stride=kernel)
    x = torch.randn(2, 12, 8, 16, 8, requires_grad=True)
    want = rearrange(conv(x), "b d f h w -> b f h w d")
    got = patch_embed(conv, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(got.square().sum(), (x, conv.weight, conv.bias))
    wanted = torch.autograd.grad(want.square().sum(), (x, conv.weight, conv.bias))
    for g, w in zip(grads, wanted, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_patch_embed_refuses_what_is_not_a_patchify() -> None:
    with pytest.raises(ValueError, match="stride = kernel"):
        patch_embed(nn.Conv3d(4, 8, 3, padding=1), torch.randn(1, 4, 4, 4, 4))
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        patch_embed(nn.Conv3d(4, 8, PATCH_2X, stride=PATCH_2X), torch.randn(1, 4, 3, 8, 8))


def test_gelu_through_a_sigmoid_is_tanh_gelu() -> None:
    x = (torch.randn(4, 64, 96) * 4).requires_grad_()
    grad = torch.randn_like(x)
    want = F.gelu(x, approximate="tanh")
    got = gelu_tanh(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    (g_want,) = torch.autograd.grad(want, x, grad)
    (g_got,) = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=2e-5)
    assert isinstance(tiny_dit().blocks[0].mlp[1], GELUTanh)
    assert not any(True for _ in GELUTanh().parameters())  # state dicts keep their keys


def reference_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """The element-wise form: pair (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos)."""
    cos, sin = rotation[..., 0][:, None], rotation[..., 1][:, None]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def test_rope_as_a_complex_product_is_the_rotation() -> None:
    torch.manual_seed(0)
    rope = Rope3D(head_dim=16)
    table = rope(torch.randn(2, 5, 3) * 4)
    table[:, 0] *= 0.5  # a pooled FramePack table (mean of rotations) is not unit-norm
    qkv = torch.randn(2, 5, 3 * 2 * 16)  # q as the DiT takes it: a strided view of qkv
    q = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=2)[0]
    torch.testing.assert_close(apply_rope(q, table), reference_rope(q, table))
    assert apply_rope(q.to(torch.bfloat16), table).dtype == torch.bfloat16


def test_last_block_skips_only_the_unread_psi_update() -> None:
    torch.manual_seed(0)
    module = tiny_module(tiny_pack())
    perturb(module)
    block = module.dit.blocks[-1]
    x, c = torch.randn(2, 10 + 4, 32), torch.randn(2, 32)  # 10 tokens, then psi's 4
    rotation = torch.cat(
        (module.dit.rope(torch.randn(2, 10, 3)), module.dit.rope(torch.zeros(2, 4, 3))), 1
    )
    full = block(x, c, rotation, memory=4)
    last = block(x, c, rotation, memory=4, memory_out=False)
    assert full.shape == (2, 14, 32) and last.shape == (2, 10, 32)
    assert torch.equal(last, full[:, :10])


def test_last_block_updates_only_the_rows_the_head_reads() -> None:
    """`keep`: the last block queries only the noisy tokens (the sequence's tail before psi);
    their outputs and gradients are the full block's, with and without memory."""
    torch.manual_seed(0)
    module = tiny_module(tiny_pack())
    perturb(module, scale=0.2)
    block = module.dit.blocks[-1]
    x = torch.randn(2, 10 + 4, 32, requires_grad=True)  # 10 tokens, then psi's 4
    c = torch.randn(2, 32)
    rotation = torch.cat(
        (module.dit.rope(torch.randn(2, 10, 3) * 3), module.dit.rope(torch.zeros(2, 4, 3))), 1
    )
    for memory, rows in ((4, x), (0, x[:, :10])):
        full = block(rows, c, rotation[:, : rows.shape[1]], memory=memory)[:, 4:10]
        kept = block(rows, c, rotation[:, : rows.shape[1]], memory, memory_out=False, keep=6)
        assert kept.shape == (2, 6, 32)
        torch.testing.assert_close(kept, full, rtol=1e-6, atol=1e-6)
        weight = torch.randn_like(full)  # a loss on the kept rows reaches every input row
        grads = torch.autograd.grad((kept * weight).sum(), x)[0]
        wanted = torch.autograd.grad((full * weight).sum(), x)[0]
        assert grads[:, :4].abs().sum() > 0  # context rows feed the kept rows' keys and values
        torch.testing.assert_close(grads, wanted, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="only for the last block"):
        block(x, c, rotation, memory=4, keep=6)


def two_stream_block(
    block: DiTBlock, x: torch.Tensor, c: torch.Tensor, rotation: torch.Tensor, psi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block as it was before psi rode in the token tensor: psi as a second stream through
    the same weights, unrotated, read by the tokens through the gate, attending to everything."""
    shift1, scale1, gate1, shift2, scale2, gate2 = block.modulation(c)[:, None].chunk(6, dim=-1)
    norm1 = lambda y: block.norm1(y) * (1 + scale1) + shift1  # noqa: E731
    norm2 = lambda y: block.norm2(y) * (1 + scale2) + shift2  # noqa: E731
    attn, merge = block.attn, "b h n d -> b n (h d)"
    q, k, v = attn.heads_of(norm1(x))
    q, k = reference_rope(q, rotation), reference_rope(k, rotation)
    qm, km, vm = attn.heads_of(norm1(psi))
    out = read_memory(attend(q, k, v), q, km, vm, attn.memory_gate)
    mem = attend(qm, torch.cat((k, km), 2), torch.cat((v, vm), 2))
    x = x + gate1 * attn.proj(rearrange(out, merge))
    psi = psi + gate1 * attn.proj(rearrange(mem, merge))
    x = x + gate2 * block.mlp(norm2(x))
    return x, psi + gate2 * block.mlp(norm2(psi))


def test_psi_as_token_rows_is_the_two_stream_dit() -> None:
    """Open gates, two blocks: the second block's read of psi depends on the first's update.
    In float64 (RoPE still rotates in float32): the two forms sum in different orders, and in
    float32 their weight gradients differed by 3e-4 on an AVX-512 CPU, above the 1e-4 that
    passed on AVX2; in float64 they differ by 2e-5 there."""
    torch.manual_seed(0)
    module = tiny_module(tiny_pack())
    perturb(module, scale=0.2)
    module.double()
    blocks = module.dit.blocks
    assert len(blocks) == 2 and all(b.attn.memory_gate.abs().min() > 0 for b in blocks)
    x = torch.randn(2, 10, 32, dtype=torch.float64, requires_grad=True)
    psi = torch.randn(2, 4, 32, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 32, dtype=torch.float64)
    rotation = module.dit.rope(torch.randn(2, 10, 3, dtype=torch.float64) * 3)
    joint = torch.cat((rotation, identity_rotation(2, 4, rotation.shape[2], rotation)), 1)
    want, stream = x, psi
    for block in blocks:
        want, stream = two_stream_block(block, want, c, rotation, stream)
    got = torch.cat((x, psi), 1)
    for i, block in enumerate(blocks):
        got = block(got, c, joint, memory=4, memory_out=i < len(blocks) - 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # RoPE rotates in float32
    weight = blocks[0].mlp[0].weight
    grads = torch.autograd.grad(got.square().sum(), (x, psi, weight))
    wanted = torch.autograd.grad(want.square().sum(), (x, psi, weight))
    for g, w in zip(grads, wanted, strict=True):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_training_uses_fused_adamw() -> None:
    opt = tiny_module().configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]
