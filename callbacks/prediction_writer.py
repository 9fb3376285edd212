"""`predict` writes one mp4 per held-out example, in a folder of its own per checkpoint and step."""

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from callbacks.run_paths import fresh_dir, model_step, run_label
from datamodules.video_io import write_video


class VideoPredictionWriter(BasePredictionWriter):
    """Writes each predicted rollout to `<output_dir>/<run>/step_<NNNNNNN>/<name>.mp4`.

    `<run>` names the checkpoint's run (`stage1_version_0` for
    `runs/stage1/version_0/checkpoints/last.ckpt`, else the file's stem; `untrained` without a
    checkpoint) and the step is the checkpoint's, so predictions of different runs, stages and
    steps never share a folder; predicting the same checkpoint again (other sampler flags, say)
    writes `step_<NNNNNNN>-2` instead of overwriting. `directory` is the folder in use, printed
    at the start of `predict`.
    """

    def __init__(self, output_dir: str = "runs/predictions", fps: float | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.fps = fps
        self.written: list[Path] = []
        self.directory: Path | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = model_step(trainer, pl_module)
        folder = self.output_dir / run_label(trainer.ckpt_path) / f"step_{step:07d}"
        # Every rank writes its shard into rank 0's choice of a fresh folder.
        self.directory = Path(trainer.strategy.broadcast(str(fresh_dir(folder))))
        rank_zero_info(f"predict: writing mp4s to {self.directory}")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if prediction is None:
            return
        if self.directory is None:
            raise RuntimeError("VideoPredictionWriter: on_predict_start did not run")
        fps = self.fps or trainer.datamodule.fps
        for frames, name in zip(prediction["video"], prediction["name"], strict=True):
            path = self.directory / f"{name}.mp4"
            write_video(path, frames, fps)
            self.written.append(path)
