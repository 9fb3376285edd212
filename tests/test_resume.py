"""Exact resume: a run killed mid-epoch and resumed with `fit --ckpt_path` logs the same losses.

Tolerance: none on CPU (bitwise-equal losses). Each batch's randomness is reseeded from (seed,
batch, rank) and the sampler skips the consumed part of the epoch, so nothing depends on the
process's history. On CUDA, non-deterministic kernels can break bitwise equality; compare with
a relative tolerance of ~1e-5 there.
"""

from pathlib import Path

import lightning as L
import pytest

from tests.helpers.callbacks import Crash
from train import main

pytestmark = pytest.mark.slow  # CLI runs / multi-process launches

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6  # 2 batches per epoch (4 videos, batch 2): the step-3 checkpoint is mid-epoch 1


class LossRecorder(L.Callback):
    """Keeps (global_step, loss) for every optimizer step of this process."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses[trainer.global_step] = float(outputs["loss"])


def run(tmp: Path, name: str, ckpt: Path | None, callbacks: list[L.Callback]) -> None:
    cli = main(
        [
            "--config", str(ROOT / "configs/stage1.yaml"),
            "--config", str(ROOT / "tests/configs/tiny.yaml"),
            f"--data.init_args.data_dir={tmp / 'data'}",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp / name}",
            "--trainer.limit_val_batches=0",
            "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={tmp / name / 'ckpt'}",
            "--trainer.callbacks.every_n_train_steps=1",
            "--trainer.callbacks.save_last=true",
            f"--trainer.max_steps={STEPS}",
            "--trainer.limit_train_batches=null",
            "--model.init_args.warmup_steps=3",  # so the scheduler state matters too
        ],
        run=False,
    )  # fmt: skip
    cli.trainer.callbacks[:0] = callbacks
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)


def test_kill_and_resume_gives_the_same_losses(tmp_path: Path) -> None:
    full = LossRecorder()
    run(tmp_path, "full", None, [full])
    assert sorted(full.losses) == list(range(1, STEPS + 1))

    first = LossRecorder()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, "crash", None, [first, Crash(at=4)])
    last = tmp_path / "crash" / "ckpt" / "last.ckpt"
    assert last.is_file()
    resumed = LossRecorder()
    run(tmp_path, "crash", last, [resumed])
    assert min(resumed.losses) == 4  # the crashed step 4 is redone from the step-3 checkpoint
    merged = {**first.losses, **resumed.losses}
    assert merged == full.losses
