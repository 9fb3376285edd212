import math

import pytest
import torch

from lightning_modules.networks.frame_pack import FramePackContext, gather_history
from lightning_modules.networks.rope import Rope3D, apply_rope, frame_indices, split_head_dim
from tests.helpers.tiny import tiny_dit


def _context_for_segment(pack: FramePackContext, k: int, frames: int = 8) -> torch.Tensor:
    latents = torch.randn(1, (k + 1) * frames, 4, 8, 8)
    hist = gather_history(latents, torch.tensor([k * frames]), pack.history_frames)
    hist_t, _ = frame_indices(torch.tensor([k]), frames, pack.history_frames, "absolute")
    tokens, rotation = pack(hist, hist_t, Rope3D(head_dim=8))
    assert rotation.shape == (*tokens.shape[:2], 4, 2)
    return tokens


def test_context_token_count_constant_over_video_length() -> None:
    pack = FramePackContext(latent_channels=4, width=16, counts=(1, 2, 16))
    counts = {k: _context_for_segment(pack, k).shape[1] for k in (0, 1, 5, 50)}
    assert len(set(counts.values())) == 1, counts
    # 1x: 1 frame of 4x4 patches, 2x: 1 group of 2x2, 4x: 4 groups of 1x1.
    assert counts[0] == pack.num_tokens(8, 8) == 16 + 4 + 4


def test_gather_history_zero_pads_and_keeps_order() -> None:
    latents = torch.arange(1, 11).float()[None, :, None, None, None].expand(1, 10, 1, 2, 2)
    hist = gather_history(latents, torch.tensor([3]), 5)
    assert hist[0, :, 0, 0, 0].tolist() == [0, 0, 1, 2, 3]
    hist = gather_history(latents, torch.tensor([10]), 4)
    assert hist[0, :, 0, 0, 0].tolist() == [7, 8, 9, 10]


def test_compressed_patchifiers_start_as_averages_of_1x() -> None:
    pack = FramePackContext(latent_channels=3, width=8, counts=(1, 2, 4))
    x = torch.randn(1, 2, 3, 4, 4)
    t = torch.zeros(1, 2)
    rope = Rope3D(head_dim=8)
    tok1, rot1 = pack.embed(x, t, 1, rope)  # 2 frames x 2x2 patches
    tok2, rot2 = pack.embed(x, t, 2, rope)  # 1 token covering all of them
    torch.testing.assert_close(tok2[0, 0], tok1[0].mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rot2[0, 0], rot1[0].mean(0))  # the table is pooled the same way


def hand_table(theta: float, axes: list[tuple[int, list[float]]]) -> torch.Tensor:
    """Mean (cos, sin) per rotary pair, by hand: for each axis (rotary dims, the coordinates the
    group covers along it, repeats included), cos/sin of frequency theta^(-i/dim) averaged."""
    rows = []
    for dim, coords in axes:
        for i in range(0, dim, 2):
            f = theta ** (-i / dim)
            rows.append([sum(math.cos(f * c) for c in coords) / len(coords),
                         sum(math.sin(f * c) for c in coords) / len(coords)])  # fmt: skip
    return torch.tensor(rows)


def test_compressed_group_rotation_averages_the_1x_tables() -> None:
    """FramePack's RoPE for a compressed group: the cos and sin tables of the 1x positions it
    covers, averaged (replicate-padded like the latents), not the table of their mean position."""
    rope = Rope3D(head_dim=16)  # rotary dims (t, h, w) = (4, 6, 6)
    assert rope.axes_dims == (4, 6, 6)
    pack = FramePackContext(latent_channels=3, width=8, counts=(1, 2, 4))
    # 2x: frames at t = 5, 6 of a 4 x 4 latent (2 x 2 1x patches) -> one token.
    _, rot = pack.embed(torch.randn(1, 2, 3, 4, 4), torch.tensor([[5.0, 6.0]]), 2, rope)
    expected = hand_table(10000.0, [(4, [5, 6]), (6, [0, 1]), (6, [0, 1])])
    assert rot.shape == (1, 1, 8, 2)
    torch.testing.assert_close(rot[0, 0], expected)
    at_mean = hand_table(10000.0, [(4, [5.5]), (6, [0.5]), (6, [0.5])])
    assert not torch.allclose(expected, at_mean, atol=1e-3)  # the two rules differ
    # 4x on a 6 x 6 latent: the 3 x 3 grid is replicate-padded to 4 x 4 (row/column 2 twice).
    t4 = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    _, rot = pack.embed(torch.randn(1, 4, 3, 6, 6), t4, 4, rope)
    expected = hand_table(10000.0, [(4, [1, 2, 3, 4]), (6, [0, 1, 2, 2]), (6, [0, 1, 2, 2])])
    torch.testing.assert_close(rot[0, 0], expected)
    _, rot1 = pack.embed(torch.randn(1, 1, 3, 4, 4), torch.tensor([[3.0]]), 1, rope)
    pos = torch.tensor([[[3.0, h, w] for h in range(2) for w in range(2)]])
    torch.testing.assert_close(rot1, rope(pos))  # 1x tokens: their own table


def test_bad_counts_raise() -> None:
    with pytest.raises(ValueError, match="counts"):
        FramePackContext(4, 8, counts=(1, 3, 16))


def test_image_at_zero_and_segments_at_absolute_positions() -> None:
    hist_t, noisy_t = frame_indices(torch.tensor([0, 3]), frames=8, history=19, layout="absolute")
    assert noisy_t[0].tolist() == list(range(1, 9))  # image is 0, video frame j is 1 + j
    assert noisy_t[1].tolist() == list(range(1 + 24, 1 + 32))
    assert hist_t[1].tolist() == list(range(25 - 19, 25))  # right before the segment
    rel_h, rel_n = frame_indices(torch.tensor([0, 3]), frames=8, history=19, layout="relative")
    assert rel_h[0].tolist() == rel_h[1].tolist() == list(range(1, 20))  # FramePack-F1 layout
    assert rel_n[1].tolist() == list(range(20, 28))


def test_image_tokens_sit_at_temporal_index_zero_in_the_dit() -> None:
    dit = tiny_dit(latent_channels=4, text_dim=8, depth=1, frame_pack=(1, 2, 16))
    seen: list[torch.Tensor] = []  # positions of each RoPE lookup: image, context..., noisy
    orig = dit.rope.forward
    dit.rope.forward = lambda pos: seen.append(pos.reshape(1, -1, 3)) or orig(pos)  # type: ignore[method-assign]
    dit(
        torch.randn(1, 2, 4, 4, 4), torch.rand(1), torch.tensor([5]),
        torch.randn(1, 19, 4, 4, 4), torch.randn(1, 1, 4, 4, 4),
        torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool),
    )  # fmt: skip
    image, noisy = seen[0][0], seen[-1][0]
    assert image.shape[0] == 4 and image[:, 0].eq(0).all()  # 2x2 patches of the 4x4 latent
    assert noisy[:, 0].tolist() == [11.0] * 4 + [12.0] * 4  # segment 5 of 2 frames: 1 + 10, 1 + 11


def test_rope_is_relative() -> None:
    """Eq. 2: <R(m) q, R(n) k> depends only on n - m."""
    rope = Rope3D(head_dim=16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def dot(m: float, n: float) -> torch.Tensor:
        a = apply_rope(q, rope(torch.tensor([[[m, 1.0, 2.0]]])))
        b = apply_rope(k, rope(torch.tensor([[[n, 1.0, 2.0]]])))
        return (a * b).sum()

    torch.testing.assert_close(dot(3, 7), dot(10, 14), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(dot(3, 7), dot(3, 8))
    assert sum(split_head_dim(32)) == 32
