"""The memory-recall loss (`memory_recall`, issue 19): what it asks psi for, and where its
gradient goes."""

from pathlib import Path

import pytest
import torch

from lightning_modules.networks.memory_recall import MemoryRecall
from lightning_modules.video_module import VideoModule
from tests.helpers.tiny import (
    CHANNELS,
    WIDTH,
    one_block_parts,
    perturb,
    save_checkpoint,
    tiny_batch,
    tiny_module,
    tiny_pack,
    tiny_stage2,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_recall_asks_for_a_segment_that_left_the_history_and_how_long_ago() -> None:
    """Each video recalls a segment j <= i_b - 1 - min_distance, at distance i_b - 1 - j, with its
    own patches as the target; j covers every such segment; videos with none add nothing."""
    recall = MemoryRecall(WIDTH, 2, (2, 2, 2), CHANNELS)
    # segment j of every video is the constant j: a zero prediction's error on it is j^2
    segments = torch.arange(6.0).view(1, 6, 1, 1, 1, 1).expand(3, 6, 4, CHANNELS, 8, 8)
    asked = []
    recall.forward = lambda psi, distance, grid: (
        asked.append(distance.clone()) or torch.zeros(len(psi), grid[0] * grid[1] * grid[2], 96)
    )
    psi = torch.zeros(3, 4, WIDTH)
    for min_distance, target, expect in ((0, [5, 0, 2], [{0, 1, 2, 3, 4}, {0, 1}]),
                                         (2, [5, 2, 4], [{0, 1, 2}, {0, 1}])):  # fmt: skip
        seen: list[set[int]] = [set(), set()]
        for seed in range(40):
            gen = torch.Generator().manual_seed(seed)
            loss = recall.loss(psi, segments, torch.tensor(target), min_distance, gen)
            j0 = target[0] - 1 - int(asked[-1][0])  # distance i - 1 - j
            j2 = target[2] - 1 - int(asked[-1][2])
            torch.testing.assert_close(loss, torch.tensor((j0**2 + j2**2) / 2))  # video 1: none
            seen[0].add(j0)
            seen[1].add(j2)
        assert seen == expect
    none = recall.loss(psi, segments, torch.tensor([2, 1, 0]), min_distance=2)
    assert none == 0


def test_recall_trains_the_update_that_saw_the_segment() -> None:
    """With gradient through the whole recurrence, recalling from psi_5 reaches Memorize's input
    of every segment that psi_5 holds (without min_distance, any of them can be asked for)."""
    pack = tiny_pack(memory_bptt=None, update="gated")
    recall = MemoryRecall(WIDTH, 2, pack.memorize.patch, CHANNELS)
    segments = torch.randn(1, 6, 4, CHANNELS, 8, 8, requires_grad=True)
    psi0 = pack.init(torch.randn(1, 5, 16), torch.randn(1, 1, CHANNELS, 8, 8))
    target = torch.tensor([5])
    psi = pack.teacher_forced(psi0, segments, target)
    for seed in range(20):
        segments.grad = None
        gen = torch.Generator().manual_seed(seed)
        recall.loss(psi, segments.detach(), target, generator=gen).backward(retain_graph=True)
        grad = segments.grad.flatten(2).abs().sum(-1)[0]
        assert grad[:5].gt(0).all() and grad[5] == 0
    assert recall.out.weight.grad.abs().sum() > 0


def test_memory_recall_adds_its_weighted_loss_to_stage_1() -> None:
    """memory_recall > 0 adds weight x recall to the flow loss and trains the head and
    SemanticPack through it; 0 builds no head; without SemanticPack it is an error."""
    batch = tiny_batch(s=6, lengths=(6, 6, 2))
    probe = tiny_module(tiny_pack())
    # FramePack (1, 2, 4) holds 7 latent frames, 2 segments of 4: a target at segment >= 3 has
    # one that left it. A draw in which some video does:
    seed = next(
        s
        for s in range(100)
        if probe.teacher_forcing_batch(batch, torch.Generator().manual_seed(s))[1].max() >= 3
    )
    inside = next(  # ... and one in which every segment seen is still in the history
        s
        for s in range(100)
        if 1 <= probe.teacher_forcing_batch(batch, torch.Generator().manual_seed(s))[1].max() < 3
    )
    losses, losses_inside = {}, {}
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        module = tiny_module(tiny_pack(memory_bptt=None), memory_recall=weight)
        perturb(module)
        losses[weight] = module.teacher_forcing_loss(
            batch, generator=torch.Generator().manual_seed(seed)
        )
        losses_inside[weight] = module.teacher_forcing_loss(
            batch, generator=torch.Generator().manual_seed(inside)
        )
    torch.testing.assert_close(losses_inside[2.0], losses_inside[0.0])
    assert tiny_module(tiny_pack()).memory_recall is None
    module.zero_grad()
    loss = module.teacher_forcing_loss(batch, generator=torch.Generator().manual_seed(seed))
    loss.backward()
    assert module.memory_recall.out.weight.grad.abs().sum() > 0
    assert losses[2.0] > losses[0.0]
    with pytest.raises(ValueError, match="memory_recall=1.0 needs a semantic_pack"):
        tiny_module(None, memory_recall=1.0)
    with pytest.raises(ValueError, match="memory_recall=-1"):
        tiny_module(tiny_pack(), memory_recall=-1.0)
    with pytest.raises(ValueError, match="FULL_HISTORY keeps every frame"):
        tiny_module(tiny_pack(), memory_recall=1.0, context="full_history")


def test_stage_2_starts_from_a_stage_1_trained_with_memory_recall(tmp_path: Path) -> None:
    """The recall head is stage 1's training aid: stage 2 loads everything else, unchanged."""
    stage1 = VideoModule(**one_block_parts(memory=True), memory_recall=1.0)
    perturb(stage1)
    stage2 = tiny_stage2(save_checkpoint(stage1, tmp_path / "s1.ckpt"))
    assert stage2.memory_recall is None
    own = stage2.state_dict()
    for name, value in stage1.state_dict().items():
        if not name.startswith("memory_recall."):
            assert torch.equal(own[name], value), name
