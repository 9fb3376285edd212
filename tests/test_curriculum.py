"""Stage 2's length curriculum (A.2): sorted admission, sharding, the logged length, resume."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.curriculum import CurriculumBatchSampler, LengthCurriculum
from datamodules.video_datamodule import VideoDataModule
from datamodules.video_dataset import collate_videos
from lightning_modules.direct_forcing import DirectForcingModule
from tests.helpers.tiny import one_block_parts, stage1_checkpoint, tiny_stage2, video_items


def test_curriculum_admits_longer_videos_in_sorted_order() -> None:
    lengths = [3, 1, 2, 1, 4, 2, 1, 3]
    cur = LengthCurriculum(start_segments=1, grow_every=2, seed=0)
    sampler = CurriculumBatchSampler(lengths, batch_size=2, curriculum=cur)
    seen = [[lengths[i] for i in batch] for epoch in range(3) for batch in sampler]
    assert all(len(set(b)) == 1 for b in seen)  # a batch never mixes lengths
    per_batch = [b[0] for b in seen]
    assert per_batch[:2] == [1, 1] and max(per_batch) == 4
    assert all(n <= 1 + k // 2 for k, n in enumerate(per_batch))  # never ahead of the schedule
    assert cur.batches_seen == len(seen) and cur.max_segments(4) == 4
    everything = LengthCurriculum(start_segments=4, grow_every=1)  # one pass over all, sorted
    sampler = CurriculumBatchSampler(lengths, 2, everything)
    flat = [lengths[i] for _ in range(2) for batch in sampler for i in batch]
    assert flat[: len(lengths)] == sorted(lengths)
    short_free = CurriculumBatchSampler([3, 2, 3], 1, LengthCurriculum(grow_every=10))
    assert [b for b in short_free] == [[1], [1], [1]]  # no 1-segment video: start at the shortest


def test_pass_size_climbs_to_the_longest_length_every_pass() -> None:
    """pass_size=N: each pass is N random admitted videos in ascending length, so the longest
    admitted length comes back every N steps instead of after a pass over the whole set."""
    lengths = [1] * 40 + [2] * 40 + [3] * 40 + [4] * 40
    full = CurriculumBatchSampler(lengths, 1, LengthCurriculum(4, grow_every=1, seed=0))
    short = CurriculumBatchSampler(lengths, 1, LengthCurriculum(4, 1, seed=0, pass_size=8))
    drawn_full = [lengths[b[0]] for b in full][:40]
    drawn = [lengths[b[0]] for b in short][:40]
    assert drawn_full == [1] * 40  # the whole-set pass is still on its 1-segment videos
    passes = [drawn[k : k + 8] for k in range(0, 40, 8)]
    assert all(p == sorted(p) for p in passes) and all(p[-1] > 1 for p in passes)
    assert drawn.count(4) >= 4 and len({tuple(p) for p in passes}) > 1  # random subsets
    with pytest.raises(ValueError, match="pass_size must be >= 1 or None, got 0"):
        LengthCurriculum(pass_size=0)


def test_curriculum_shards_equal_length_batches_across_ranks() -> None:
    lengths = [1, 1, 1, 2, 2, 2, 2, 3]
    ranks = [
        list(CurriculumBatchSampler(lengths, 1, LengthCurriculum(4), num_replicas=2, rank=r))
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 4
    for b0, b1 in zip(*ranks, strict=True):
        assert lengths[b0[0]] == lengths[b1[0]]  # same segment count on every rank
    assert [lengths[b[0]] for b in ranks[0]] == [1, 1, 2, 2]
    assert ranks[0][:2] != ranks[1][:2]  # different videos where there are enough


class CapRecorder(L.Callback):
    def __init__(self) -> None:
        self.caps: list[tuple[int, int]] = []  # (curriculum max length, batch length)

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: dict, *a: Any) -> None:
        cap = trainer.datamodule.curriculum_max_segments
        self.caps.append((cap, int(batch["num_segments"].max())))


class CurriculumData(L.LightningDataModule):
    """In-memory videos behind the curriculum sampler, with VideoDataModule's schedule property."""

    curriculum_max_segments = VideoDataModule.curriculum_max_segments

    def __init__(self, lengths: list[int], curriculum: LengthCurriculum) -> None:
        super().__init__()
        self.curriculum = curriculum
        self.train_set = SimpleNamespace(items=video_items(lengths), lengths=lengths)

    def train_dataloader(self) -> DataLoader:
        sampler = CurriculumBatchSampler(self.train_set.lengths, 1, self.curriculum)
        items = self.train_set.items
        return DataLoader(items, batch_sampler=sampler, collate_fn=collate_videos)


class DrawnRecorder(L.Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[float, int]] = []  # (logged curriculum length, batch length)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, out: Any, batch: dict, *a: Any
    ) -> None:
        logged = float(trainer.callback_metrics["train/curriculum_max_segments"])
        self.rows.append((logged, int(batch["num_segments"].max())))


def test_logged_curriculum_length_is_the_batch_drawn(stage1_ckpt: Path) -> None:
    """The pass walks three 1-segment videos before the 2-segment one although the schedule
    admits 2 segments from batch 1 on: the log must show what was trained, not the schedule."""
    lengths = [1, 1, 1, 2]
    data = CurriculumData(lengths, LengthCurriculum(start_segments=1, grow_every=1))
    rec = DrawnRecorder()
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=4, callbacks=[rec],
    )  # fmt: skip
    trainer.fit(tiny_stage2(stage1_ckpt), data)
    assert [drawn for _, drawn in rec.rows] == [1, 1, 1, 2]  # the schedule's cap: 1, 2, 2, 2
    assert [logged for logged, _ in rec.rows] == [1.0, 1.0, 1.0, 2.0]


def test_resume_mid_curriculum_continues_at_saved_length(tmp_path: Path) -> None:
    ckpt1 = stage1_checkpoint(tmp_path / "s1.ckpt", patch=4, channels=48)

    def run(max_steps: int, resume: str | None) -> tuple[L.Trainer, CapRecorder]:
        dm = VideoDataModule(
            data_dir=str(tmp_path / "data"), resolution=(16, 16), segment_frames=2, batch_size=1,
            num_train_videos=8, num_val_videos=1, max_segments=3,
            curriculum=LengthCurriculum(start_segments=1, grow_every=2),
        )  # fmt: skip
        model = DirectForcingModule(
            init_checkpoint=str(ckpt1), **one_block_parts(patch=4, channels=48)
        )
        rec = CapRecorder()
        trainer = L.Trainer(
            accelerator="cpu", logger=False, max_steps=max_steps, limit_val_batches=0,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[rec],
            default_root_dir=tmp_path, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(model, dm, ckpt_path=resume, weights_only=False)
        return trainer, rec

    first, rec1 = run(4, None)
    shortest = min(first.datamodule.train_set.lengths)
    assert rec1.caps[0] == (shortest, shortest)  # a fresh run starts on the shortest videos
    path = first.checkpoint_callback.best_model_path
    saved = torch.load(path, weights_only=False)["VideoDataModule"]["curriculum"]
    assert saved["batches_seen"] >= 3
    saved_cap = min(max(1 + saved["batches_seen"] // 2, shortest), 3)
    assert saved_cap > shortest
    lengths = first.datamodule.train_set.lengths
    _, rec = run(5, path)
    assert rec.caps, "resumed run trained no batch"
    assert rec.caps[0][0] >= saved_cap  # a fresh curriculum would be back at 1
    if saved["queue"]:  # and it picks up the saved pass where it stopped
        assert rec.caps[0][1] == lengths[saved["queue"][0]]
