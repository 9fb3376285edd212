"""A NaN loss stops the run with an error naming the step, before any weight sees it."""

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_modules.training.nonfinite import NonFiniteLossError
from train import main

ROOT = Path(__file__).resolve().parents[1]


class PoisonAt(L.Callback):
    """Makes the output head produce NaN from global step `at` on (a diverged model)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.head_before: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.at:
            self.head_before = pl_module.dit.head.linear.weight.detach().clone()
            pl_module.dit.head.linear.bias.data.fill_(float("nan"))


def test_nan_loss_stops_the_run_naming_the_step(tmp_path: Path) -> None:
    cli = main(
        [
            "--config", str(ROOT / "configs/stage1.yaml"),
            "--config", str(ROOT / "tests/configs/tiny.yaml"),
            f"--data.init_args.data_dir={tmp_path / 'data'}",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks=[]",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.limit_val_batches=0",
            "--trainer.max_steps=3",
            "--trainer.limit_train_batches=null",
        ],
        run=False,
    )  # fmt: skip
    poison = PoisonAt(at=1)
    cli.trainer.callbacks.append(poison)
    with pytest.raises(NonFiniteLossError, match="global_step=1"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1  # the NaN step never reached the optimizer
    torch.testing.assert_close(cli.model.dit.head.linear.weight, poison.head_before)
