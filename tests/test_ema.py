"""EMA of the weights (callbacks/ema.py): Lightning's WeightAveraging with a warmed-up decay, the
EMA in the module from validation start until training resumes, in `state_dict` of checkpoints."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import FSDPStrategy

from callbacks.checkpointing import ResumableCheckpoint
from callbacks.ema import EMA, warmup_decay
from tests.helpers.linear import Linear, loader, trainer


class Weights(L.Callback):
    """Records the layer's weight after every optimizer step (raw) and at the end of validation
    (what a rollout callback there samples with)."""

    def __init__(self) -> None:
        self.raw: list[torch.Tensor] = []
        self.at_validation_end: list[torch.Tensor] = []
        self.at_train_batch_start: list[torch.Tensor] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *a: Any
    ) -> None:
        self.at_train_batch_start.append(pl_module.layer.weight.detach().clone())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *a: Any) -> None:
        self.raw.append(pl_module.layer.weight.detach().clone())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.at_validation_end.append(pl_module.layer.weight.detach().clone())


def expected_ema(raw: list[torch.Tensor], decay: float) -> list[torch.Tensor]:
    """The EMA after each step: a copy, then lerp with min(decay, (1 + n) / (10 + n))."""
    out = [raw[0].clone()]
    for n, weight in enumerate(raw[1:], start=1):
        out.append(torch.lerp(out[-1], weight, 1 - warmup_decay(decay, n)))
    return out


def test_decay_warms_up_to_its_value() -> None:
    assert warmup_decay(0.998, 1) == pytest.approx(2 / 11)
    assert warmup_decay(0.998, 100) == pytest.approx(101 / 110)
    assert warmup_decay(0.998, 10**5) == 0.998
    assert isinstance(EMA(), WeightAveraging)  # Lightning's callback, not a hand-rolled one
    with pytest.raises(ValueError, match="decay=1.5"):
        EMA(decay=1.5)


def test_validation_and_checkpoints_use_the_ema_and_training_the_raw_weights(
    tmp_path: Path,
) -> None:
    """Validation after steps 2 and 4 (val_check_interval=2): a callback at validation end sees
    the EMA; the next training step starts from the raw weights; last.ckpt holds the EMA as
    `state_dict` (what every reader loads) and the raw weights as `current_model_state`."""
    ema, seen = EMA(decay=0.9), Weights()
    ckpt = ResumableCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=100)
    run = trainer(tmp_path, [ema, seen, ckpt], max_steps=4, val_check_interval=2,
                  limit_val_batches=1)  # fmt: skip
    run.fit(Linear(), loader(), loader(1))
    want = expected_ema(seen.raw, 0.9)
    assert not torch.allclose(want[1], seen.raw[1])  # the average differs from the raw weights
    torch.testing.assert_close(seen.at_validation_end[0], want[1])  # after step 2
    torch.testing.assert_close(seen.at_train_batch_start[2], seen.raw[1])  # step 3 trains raw
    torch.testing.assert_close(seen.at_validation_end[1], want[3])
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    torch.testing.assert_close(saved["state_dict"]["layer.weight"], want[3])
    torch.testing.assert_close(saved["current_model_state"]["layer.weight"], seen.raw[3])
    loaded = Linear.load_from_checkpoint(tmp_path / "last.ckpt")
    torch.testing.assert_close(loaded.layer.weight.detach(), want[3])
    # After fit the module holds the EMA (as Lightning's callback leaves it); a checkpoint saved
    # then (experiments/reproduce.py does) still keeps the raw weights apart.
    torch.testing.assert_close(run.lightning_module.layer.weight.detach(), want[3])
    run.save_checkpoint(tmp_path / "after.ckpt")
    after = torch.load(tmp_path / "after.ckpt", weights_only=False)
    torch.testing.assert_close(after["state_dict"]["layer.weight"], want[3])
    torch.testing.assert_close(after["current_model_state"]["layer.weight"], seen.raw[3])


def test_resumed_run_continues_both_weights_exactly(tmp_path: Path) -> None:
    """Stopped after step 2 (the end of epoch 0) and resumed to step 4: the same raw and EMA
    weights as one run."""

    def fit(name: str, steps: int, ckpt_path: Path | None = None) -> dict[str, Any]:
        callbacks = [EMA(decay=0.9), ResumableCheckpoint(dirpath=tmp_path / name)]
        trainer(tmp_path, callbacks, max_steps=steps, max_epochs=2).fit(
            Linear(), loader(2), ckpt_path=ckpt_path
        )
        return torch.load(next((tmp_path / name).glob("*.ckpt")), weights_only=False)

    full = fit("full", 4)
    fit("first", 2)
    resumed = fit("resumed", 4, next((tmp_path / "first").glob("*.ckpt")))
    for key in ("state_dict", "current_model_state"):
        for name, value in full[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=0, atol=0)


def test_sharded_strategies_turn_it_off_with_a_warning() -> None:
    ema = EMA()
    sharded = SimpleNamespace(strategy=FSDPStrategy.__new__(FSDPStrategy))
    with pytest.warns(UserWarning, match="EMA is off under FSDPStrategy"):
        ema.setup(sharded, Linear(), "fit")  # type: ignore[arg-type]
    assert ema.average_model is None
