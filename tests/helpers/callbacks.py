"""Trainer callbacks the resume and stage-2 tests share."""

from typing import Any

import lightning as L


class Crash(L.Callback):
    """Dies after the step that reaches `at` (before that step's checkpoint is written)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.at:
            raise RuntimeError("simulated crash")
