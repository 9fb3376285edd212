"""Checkpoints a run can be resumed from whenever it stops: every N steps, at the end, on SIGTERM,
and never half-written.

`ResumableCheckpoint` is Lightning's `ModelCheckpoint` with:

- **Atomic writes**: each checkpoint is written under a temporary name in the same directory and
  renamed into place (`os.replace`), so a full disk or a kill mid-save leaves the previous file
  intact and no partial file under the final name. A sharded (FSDP2) checkpoint directory is
  written aside and swapped in the same way (two renames).
- **A checkpoint on SIGTERM** (pre-emption, `kill`, a scheduler's time limit): Lightning turns
  the signal into a `SIGTERMException` at the next batch boundary, where the loop state is
  consistent; the callback then writes a checkpoint and `last.ckpt` before the process exits.
  Other exceptions (a crash mid-step, NaN: `NonFiniteLossError`) save nothing: their state may be
  half a step.
- **The last step is always saved** with `every_n_train_steps` (Lightning saves `last.ckpt` at
  the end only if nothing was saved before, so a run of 2880 steps saved every 500 would end at
  step 2500), at the end of its last batch, so that a longer run can continue from it mid-epoch;
  the step schedule also holds under manual optimization (stage 2).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["ResumableCheckpoint", "replace_atomically"]


def temporary_path(path: str | Path) -> Path:
    """Where `path` is written before it is renamed into place (same directory, hidden)."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def replace_atomically(tmp: Path, path: Path) -> None:
    """Move the finished `tmp` (a file or a sharded checkpoint directory) to `path`."""
    if tmp.is_dir():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    else:
        os.replace(tmp, path)


class ResumableCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (same arguments) with atomic writes, a checkpoint on SIGTERM and the last
    step always saved (see the module docstring).

    Args:
        save_on_sigterm: write a checkpoint (and `last.ckpt`) when the run receives SIGTERM.
        **kwargs: `ModelCheckpoint`'s (`dirpath`, `every_n_train_steps`, `save_last`, ...).
    """

    def __init__(self, save_on_sigterm: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_on_sigterm = save_on_sigterm

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        tmp = temporary_path(filepath)
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)  # ends with a barrier
            if trainer.is_global_zero:
                replace_atomically(tmp, Path(filepath))
        except BaseException:
            if trainer.is_global_zero and tmp.is_file():
                tmp.unlink()
            raise
        trainer.strategy.barrier("ResumableCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if pl_module.automatic_optimization or self.monitor is not None:
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        elif self._crossed_step_multiple(trainer):
            # Manual optimization may step several times per batch: save when a multiple of
            # every_n_train_steps was crossed (Lightning's branch also warns on every save).
            self._save_now(trainer)
        if self._last_step(trainer) and self._last_global_step_saved != trainer.global_step:
            # The run's last step, saved here rather than at `on_train_end`, where the loop has
            # already marked the epoch complete (resuming would skip the rest of the epoch).
            self._save_now(trainer)

    def _crossed_step_multiple(self, trainer: L.Trainer) -> bool:
        every, last = self._every_n_train_steps, max(self._last_global_step_saved, 0)
        if every < 1 or trainer.global_step // every <= last // every:
            return False
        return not self._should_skip_saving_checkpoint(trainer)

    @staticmethod
    def _last_step(trainer: L.Trainer) -> bool:
        """This batch ends the run (max_steps reached, or the last batch of the last epoch)."""
        if trainer.fast_dev_run or trainer.sanity_checking:
            return False
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            return True
        last_epoch = (
            trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        )
        return last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or not self.save_on_sigterm:
            return
        if trainer.sanity_checking or self._last_global_step_saved == trainer.global_step:
            return
        self._save_now(trainer)
        rank_zero_info(f"SIGTERM: saved {self.last_model_path or self.best_model_path}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A run stopped otherwise (max_time, early stopping) is saved as it ends."""
        if trainer.fast_dev_run or self._last_global_step_saved == trainer.global_step:
            return
        self._save_now(trainer)

    def _save_now(self, trainer: L.Trainer) -> None:
        """A step checkpoint (top-k without a monitor) and `last.ckpt`, of the current step."""
        candidates = self._monitor_candidates(trainer)
        if self.monitor is None:
            self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
