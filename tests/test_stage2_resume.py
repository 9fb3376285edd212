"""Stage 2 exact resume mid-curriculum: kill after step k, `fit --ckpt_path last` to step N.

The per-step `train/loss`, the batch's segment count and the logged curriculum maximum after the
resume must equal an uninterrupted run's. Tolerance: none on CPU (bitwise-equal floats): each
batch is reseeded from (seed, batch index, rank) and the curriculum sampler replays its schedule
to the restored batch count, so nothing depends on what the crashed process had prefetched. On
CUDA, non-deterministic kernels can break bitwise equality; compare with rtol ~1e-5 there.
"""

from pathlib import Path

import lightning as L
import pytest

from tests.helpers.callbacks import Crash
from train import main

pytestmark = pytest.mark.slow  # CLI runs / multi-process launches

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8  # 4 one-video batches per epoch: the step-5 checkpoint is mid-epoch 1
CRASH = 6  # and mid-curriculum: grow_every=3 admits 3-segment videos from batch 6 on


class StepRecorder(L.Callback):
    """(loss, segments, logged curriculum length, batch length) at each optimizer step."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[float, int, int, int]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        m = trainer.callback_metrics
        row = (float(m["train/loss"]), int(m["train/segments"]))
        drawn = int(batch["num_segments"].max())
        self.rows[trainer.global_step] = (*row, int(m["train/curriculum_max_segments"]), drawn)


def common(tmp: Path, name: str, tiny: str = "tiny.yaml") -> list[str]:
    return [
        "--config", str(ROOT / "tests/configs" / tiny),
        f"--data.init_args.data_dir={tmp / 'data'}",
        "--data.init_args.num_train_videos=6",  # lengths 2-4 here: several per pass
        "--data.init_args.max_segments=4",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp / name}",
        "--trainer.limit_val_batches=0",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp / name / 'ckpt'}",
        "--trainer.callbacks.save_last=true",
    ]  # fmt: skip


def stage2(tmp: Path, stage1: str, name: str, ckpt: Path | None, callbacks: list) -> None:
    cli = main(
        [
            "--config", str(ROOT / "configs/stage2_direct_forcing.yaml"),
            *common(tmp, name, "tiny_stage2.yaml"),  # the architecture: stage 1's checkpoint
            "--trainer.callbacks.every_n_train_steps=1",
            f"--model.init_args.init_checkpoint={stage1}",
            f"--trainer.max_steps={STEPS}",
            "--trainer.limit_train_batches=null",
            "--data.init_args.batch_size=1",
            "--data.init_args.curriculum.init_args.grow_every=3",
            "--model.init_args.warmup_steps=4",  # so the scheduler state matters too
            "--data.init_args.num_workers=1",  # its prefetch runs the batch sampler ahead
        ],
        run=False,
    )  # fmt: skip
    cli.trainer.callbacks[:0] = callbacks
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)


def test_stage2_kill_and_resume_mid_curriculum(tmp_path: Path) -> None:
    s1 = main(["fit", "--config", str(ROOT / "configs/stage1.yaml"), *common(tmp_path, "s1"),
               "--trainer.max_steps=1"])  # fmt: skip
    stage1 = s1.trainer.checkpoint_callback.last_model_path

    full = StepRecorder()
    stage2(tmp_path, stage1, "full", None, [full])
    assert sorted(full.rows) == list(range(1, STEPS + 1))
    caps = [full.rows[s][2] for s in sorted(full.rows)]
    # The logged length is the batch's own (the loader's worker ran the sampler ahead), and it
    # never runs ahead of the schedule (shortest video: 2 segments).
    assert caps == [full.rows[s][3] for s in sorted(full.rows)]
    assert all(c <= max(1 + k // 3, 2) for k, c in enumerate(caps))
    assert caps[CRASH - 2] < caps[-1], "the resume point must be mid-curriculum"

    first = StepRecorder()
    with pytest.raises(RuntimeError, match="simulated crash"):
        stage2(tmp_path, stage1, "crash", None, [first, Crash(at=CRASH)])
    last = tmp_path / "crash" / "ckpt" / "last.ckpt"
    resumed = StepRecorder()
    stage2(tmp_path, stage1, "crash", last, [resumed])
    assert min(resumed.rows) == CRASH  # the crashed step is redone from the previous checkpoint
    assert {**first.rows, **resumed.rows} == full.rows
