"""The resolved config in the run: `config.yaml` in the log dir (LightningCLI's), and in
TensorBoard as text, as the hparams of the run (with its result metrics) and with the
custom-scalar layout of the evaluation callbacks (`callbacks/tensorboard.py`)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback

from callbacks.tensorboard import flatten, tensorboard_writer, write_hparams_session

__all__ = ["ConfigLogger"]

LOSSES = ("train/loss", "val/loss")


class ConfigLogger(SaveConfigCallback):
    """`SaveConfigCallback` that also writes the config to TensorBoard (rank 0, at setup).

    Metrics of the hparams session: the losses, and what each callback with a
    `hparam_metrics()` method (`RolloutEvalCallback`) will log; the layout: the merged
    `tensorboard_layout()` of the callbacks that have one.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        text = self.parser.dump(self.config, skip_none=False)
        writer.add_text("config", "```yaml\n" + text + "\n```", global_step=0)
        if stage != "fit":
            return
        metrics, charts = list(LOSSES), {}
        for callback in trainer.callbacks:
            if hasattr(callback, "hparam_metrics"):
                metrics += callback.hparam_metrics()
            if hasattr(callback, "tensorboard_layout"):
                charts.update(callback.tensorboard_layout())
        write_hparams_session(writer, flatten(self.config.as_dict()), metrics)
        if charts:
            writer.add_custom_scalars(charts)
