"""Learning works: a tiny model overfits one clip, in stage 1 (teacher forcing, whole network) and
in stage 2 (Direct Forcing, output head only). Breaking the update (no step, wrong target, gradients
that never reach the weights) leaves the loss where it started and fails these tests."""

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.synthetic import render_video
from datamodules.video_dataset import collate_videos
from lightning_modules.direct_forcing import DirectForcingModule
from lightning_modules.video_module import VideoModule
from tests.helpers.tiny import save_checkpoint, tiny_dit, tiny_pack, tiny_parts

SEGMENTS, FRAMES = 2, 4


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # conftest.py


def parts() -> dict[str, Any]:
    torch.manual_seed(0)
    # width 64 > the 48-d token (2x2 patches of 12 channels): the noise can pass through
    return {**tiny_parts(tiny_dit(width=64, qk_norm=False)), "semantic_pack": tiny_pack(width=64)}


def clip() -> dict[str, Any]:
    """One rendered synthetic clip (shapes over a textured background), 16 x 16, 2 segments."""
    frames, caption = render_video(seed=3, num_frames=SEGMENTS * FRAMES, size=(16, 16))
    video = (frames.float() / 127.5 - 1).reshape(SEGMENTS, FRAMES, 3, 16, 16)
    return {"video": video, "image": video[0, 0].clone(), "caption": caption,
            "num_segments": SEGMENTS, "name": "clip"}  # fmt: skip


@torch.no_grad()
def clip_loss(module: VideoModule, batch: dict[str, Any]) -> float:
    """Teacher-forced flow loss on the clip, averaged over 16 fixed (segment, t, eps) draws."""
    module.eval()
    losses = [
        module.teacher_forcing_loss(batch, generator=torch.Generator().manual_seed(seed))
        for seed in range(16)
    ]
    return float(torch.stack(losses).mean())


def fit(module: L.LightningModule, steps: int) -> None:
    loader = DataLoader([clip()] * steps, batch_size=1, collate_fn=collate_videos)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, loader)


@pytest.mark.parametrize("patch", [2, 1])
def test_stage1_overfits_one_clip(patch: int) -> None:
    torch.manual_seed(0)
    dit = tiny_dit(width=64, qk_norm=False, patch=patch)
    module = VideoModule(**{**parts(), "dit": dit}, lr=3e-3, warmup_steps=1, prompt_dropout=0.0)
    batch = collate_videos([clip()])
    before = clip_loss(module, batch)
    fit(module, steps=100)
    after = clip_loss(module, batch)
    # Measured: 2.42 -> 0.76. Broken learning (no step, zero gradients) stays at ~2.4.
    assert after < 0.4 * before, f"stage 1 loss on one clip went {before:.3f} -> {after:.3f}"


def test_stage2_head_relearns_one_clip(tmp_path: Path) -> None:
    """Stage 2 trains only the output head: zeroed, the head must learn the clip back from the
    frozen backbone's features, through Direct Forcing's per-video accumulated steps."""
    stage1 = VideoModule(**parts(), lr=3e-3, warmup_steps=1, prompt_dropout=0.0)
    fit(stage1, steps=100)  # a trained backbone, as stage 2 starts from
    ckpt = save_checkpoint(stage1, tmp_path / "stage1.ckpt")

    module = DirectForcingModule(
        init_checkpoint=str(ckpt), lr=1e-2, warmup_steps=1, prompt_dropout=0.0
    )
    batch = collate_videos([clip()])
    trained = clip_loss(module, batch)
    torch.nn.init.zeros_(module.dit.head.linear.weight)  # the head predicts v = 0 again
    torch.nn.init.zeros_(module.dit.head.linear.bias)
    frozen = {n: p.clone() for n, p in module.named_parameters() if not p.requires_grad}
    before = clip_loss(module, batch)
    fit(module, steps=60)  # 60 videos = 60 optimizer steps, 2 segments accumulated in each
    after = clip_loss(module, batch)
    # Measured: zeroed 2.42 -> 0.63 (the stage-1 head had 0.76); a stage 2 that never steps
    # (or whose gradients miss the head) stays at the zeroed level.
    assert after < 0.5 * before, f"stage 2 loss on one clip went {before:.3f} -> {after:.3f}"
    assert after < 1.5 * trained
    assert all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if n in frozen)


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_step() -> None:
    lrs: list[float] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    module = VideoModule(**parts(), lr=1e-3, warmup_steps=3, lr_schedule="cosine")
    loader = DataLoader([clip()] * 12, batch_size=1, collate_fn=collate_videos)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=12, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
    )  # fmt: skip
    trainer.fit(module, loader)
    # torch's LinearLR over the 3 warm-up steps, then CosineAnnealingLR over the other 9.
    assert lrs[:4] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])
    assert all(b < a for a, b in zip(lrs[3:], lrs[4:], strict=False))  # decays every step
    assert lrs[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 8 / 9)))
