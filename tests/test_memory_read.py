"""How tokens read SemanticPack's psi (`attention.read_memory`): `softmax` (a full mixture of
psi's values for every token) against `off_by_one` (a null key: a token may read nothing)."""

import math

import pytest
import torch
from helpers.tiny import perturb, tiny_dit, tiny_module, tiny_pack

from lightning_modules.networks.attention import attend, read_memory


def reference_read(q, k, v, gate, null: bool):
    """g * sum_j exp(s_j) v_j / (Z + sum_j exp(s_j)), s = q k^T / sqrt(d); Z = 1 with the null key."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    weights = s.exp() / (float(null) + s.exp().sum(-1, keepdim=True))
    return gate[:, None, None] * (weights @ v)


def test_off_by_one_is_the_softmax_with_one_zero_logit_and_zero_value() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    out, gate = torch.randn(2, 3, 5, 8), torch.rand(3)
    for read, null in (("softmax", False), ("off_by_one", True)):
        want = out + reference_read(q, k, v, gate, null)
        torch.testing.assert_close(read_memory(out, q, k, v, gate, read), want)
    with pytest.raises(ValueError, match="unknown memory_read 'sparse'"):
        read_memory(out, q, k, v, gate, "sparse")


def test_off_by_one_lets_a_token_read_nothing() -> None:
    """Keys far from a token's query: the softmax still hands it the mean of psi's values, the
    off-by-one read hands it (almost) nothing; a matching key is read alike by both."""
    q = torch.zeros(1, 1, 2, 8)
    q[..., 0, 0], q[..., 1, 0] = 1.0, -1.0
    k = torch.zeros(1, 1, 3, 8)
    k[..., 0] = 80.0  # token 0 matches every key, token 1 opposes them all
    v = torch.randn(1, 1, 3, 8)
    out, gate = torch.zeros(1, 1, 2, 8), torch.ones(1)
    soft = read_memory(out, q, k, v, gate, "softmax")
    null = read_memory(out, q, k, v, gate, "off_by_one")
    torch.testing.assert_close(soft[..., 1, :], v.mean(-2))  # read although nothing matches
    assert null[..., 1, :].abs().max() < 1e-6
    torch.testing.assert_close(null[..., 0, :], soft[..., 0, :], rtol=1e-5, atol=1e-5)


def test_the_dit_reads_psi_as_configured_in_every_block() -> None:
    """`memory_read` reaches every block; shut gates still leave the F1 output bit for bit."""
    torch.manual_seed(0)
    pack = tiny_pack()
    soft = tiny_module(pack, dit=tiny_dit())
    null = tiny_module(pack, dit=tiny_dit(memory_read="off_by_one"))
    null.load_state_dict(soft.state_dict())
    assert [b.attn.memory_read for b in null.dit.blocks] == ["off_by_one"] * 2
    b, frames = 2, 2
    g = torch.Generator().manual_seed(1)
    x = {
        "noisy": torch.randn(b, frames, 12, 8, 8, generator=g),
        "t": torch.rand(b, generator=g),
        "segment_index": torch.tensor([1, 2]),
        "history": torch.randn(b, 7, 12, 8, 8, generator=g),
        "image": torch.randn(b, 1, 12, 8, 8, generator=g),
        "text": torch.randn(b, 5, 16, generator=g),
        "text_mask": torch.ones(b, 5, dtype=torch.bool),
    }
    psi = torch.randn(b, 4, 32, generator=g)
    with torch.no_grad():
        plain = soft.dit(**x)
        assert torch.equal(null.dit(**x, memory=psi), plain)  # gates at 0: no read at all
        perturb(soft, scale=0.2)
        null.load_state_dict(soft.state_dict())
        assert all(blk.attn.memory_gate.abs().min() > 0 for blk in null.dit.blocks)
        assert not torch.allclose(null.dit(**x, memory=psi), soft.dit(**x, memory=psi))
        # ... and the two differ only in the read: without psi they are the same network.
        torch.testing.assert_close(null.dit(**x), soft.dit(**x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown memory_read 'hard'"):
        tiny_dit(memory_read="hard")


def test_attend_is_the_softmax_read_without_a_gate() -> None:
    """The plain read is the shared attention path (one softmax over psi's keys)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    out = read_memory(torch.zeros(1, 2, 3, 8), q, k, v, torch.ones(2), "softmax")
    torch.testing.assert_close(out, attend(q, k, v))
