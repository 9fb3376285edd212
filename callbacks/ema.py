"""An exponential moving average (EMA) of the weights for sampling, evaluation and `last.ckpt`.

Lightning's `WeightAveraging` (the base of its `EMAWeightAveraging`) keeps the average in a
`torch.optim.swa_utils.AveragedModel`, updates it after every optimizer step, swaps it into the
module for validation, copies it into the module when training ends, and writes it as the
checkpoint's `state_dict` (the raw weights go to `current_model_state`, so `fit --ckpt_path`
resumes both). Every reader of `state_dict` (`--ckpt_path` for validate/test/predict,
`load_from_checkpoint`, stage 2's `init_checkpoint`, the benchmarks) thus gets the EMA weights.

Two changes to Lightning's callback:

- **Warm-up of the decay**: update n (n = 1, 2, ... after the first, which copies) uses
  `min(decay, (1 + n) / (10 + n))`, so the average follows the fast early changes instead of
  dragging the initial weights along (a fixed 0.999 lagged a 2000-step demo run badly).
- **The EMA weights stay in the module from the start of validation until training resumes**
  (Lightning swaps back at the end of the validation epoch), so the rollout callbacks that run at
  the end of validation (`RolloutEvalCallback`, `RolloutVideoLogger`) sample with the EMA weights
  whatever their order in the callback list; a checkpoint saved meanwhile (`ModelCheckpoint` at
  validation end, on SIGTERM) still stores the EMA as `state_dict` and the raw weights as
  `current_model_state`.

Sharded strategies (FSDP, FSDP2's ModelParallelStrategy, DeepSpeed) are not supported by
`WeightAveraging` (it keeps one unsharded copy and swaps parameters one by one): under them the
callback warns once and does nothing, so a strategy fragment can be added to a config that has it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

__all__ = ["EMA", "warmup_decay"]

SHARDED = (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy)


def warmup_decay(decay: float, updates: int) -> float:
    """The decay of the `updates`-th averaging update: min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + updates) / (10 + updates))


class EMA(WeightAveraging):
    """EMA of the weights with a warmed-up decay (see the module docstring).

    Args:
        decay: the decay the warm-up rises to (0.998 in configs/stage1.yaml); in (0, 1).
        warmup: ramp the decay as `min(decay, (1 + n) / (10 + n))`; False uses `decay` from the
            first update on (Lightning's `EMAWeightAveraging`).
        device: where the average lives (default: the module's device; "cpu" saves GPU memory).
    """

    def __init__(
        self, decay: float = 0.998, warmup: bool = True, device: str | None = None
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got decay={decay!r}")
        # Buffers (the fitted codec's, RoPE tables, a bool flag) are copied, not averaged.
        super().__init__(device=device, use_buffers=False, multi_avg_fn=self._average)
        self.decay = decay
        self.warmup = warmup
        self._swapped = False  # the module holds the EMA weights, the AveragedModel the raw ones
        self._disabled = False

    def decay_at(self, updates: int) -> float:
        """The decay of the `updates`-th update after the first (which copies the weights)."""
        return warmup_decay(self.decay, updates) if self.warmup else self.decay

    @torch.no_grad()
    def _average(self, ema: list[Tensor], current: list[Tensor], updates: Tensor) -> None:
        torch._foreach_lerp_(ema, current, 1.0 - self.decay_at(int(updates)))

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """After every optimizer step; never at epoch ends (that would count a step twice)."""
        return step_idx is not None

    @property
    def average_model(self) -> AveragedModel | None:
        """The AveragedModel (None before `fit`'s setup, or when disabled)."""
        return self._average_model

    # ----------------------------------------------------------------- when the swap happens
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and isinstance(trainer.strategy, SHARDED):
            rank_zero_warn(
                f"EMA is off under {type(trainer.strategy).__name__}: Lightning's WeightAveraging "
                "keeps an unsharded copy of the model. Samples and checkpoints use the raw weights."
            )
            self._disabled = True
            return
        if stage == "fit":  # Lightning's setup, without its warning about sharding
            pl_module.configure_model()  # idempotent: builds whatever the hook builds
            self._average_model = AveragedModel(
                model=pl_module, device=self._device or pl_module.device,
                use_buffers=self._use_buffers, **self._kwargs,
            )  # fmt: skip

    def _swap(self, pl_module: L.LightningModule) -> None:
        self._swap_models(pl_module)
        self._swapped = not self._swapped

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._swapped:  # training resumes after a validation: raw weights back
            self._swap(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        if self._average_model is not None:
            super().on_train_batch_end(trainer, pl_module, *args)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """No epoch-end update (`should_update` is step-based)."""

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None and not self._swapped:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The EMA stays in until training resumes (`on_train_batch_start`)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The module ends with the EMA weights (what test/predict after fit then sample)."""
        if self._average_model is not None and not self._swapped:
            self._swap(pl_module)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._average_model is None or not self._swapped:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            return
        # Swapped: `state_dict` (the module's) already holds the EMA; the raw weights are in the
        # AveragedModel's module.
        state = self._average_model.state_dict()
        checkpoint["current_model_state"] = {
            name[len("module.") :]: value
            for name, value in state.items()
            if name.startswith("module.")
        }
        checkpoint["averaging_state"] = {
            name: value for name, value in state.items() if not name.startswith("module.")
        }

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._disabled:
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        self._swapped = False  # Lightning reloaded the raw weights into the module
