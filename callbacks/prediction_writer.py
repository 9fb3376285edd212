"""`predict` writes one mp4 per held-out example."""

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.video_io import write_video


class VideoPredictionWriter(BasePredictionWriter):
    """Writes each predicted rollout to `<output_dir>/<name>.mp4` (rank of the example's shard)."""

    def __init__(self, output_dir: str = "runs/predictions", fps: float | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.fps = fps
        self.written: list[Path] = []

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
        fps = self.fps or trainer.datamodule.fps
        for frames, name in zip(prediction["video"], prediction["name"], strict=True):
            path = self.output_dir / f"{name}.mp4"
            write_video(path, frames, fps)
            self.written.append(path)
