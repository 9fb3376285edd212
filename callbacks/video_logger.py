"""Seeing it: a short rollout from a held-out example, to TensorBoard and to mp4."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from datamodules.video_io import write_video


class RolloutVideoLogger(L.Callback):
    """Every `every_n_validations` validation runs, roll out `num_videos` held-out examples.

    Every rank runs `generate` (sharded models need all ranks in the forward); rank 0 logs the
    video with `add_video` and writes `<log_dir>/rollouts/step_<global_step>_<i>.mp4`.
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        num_segments: int = 2,
        num_videos: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        self.every_n_validations = every_n_validations
        self.num_segments = num_segments
        self.num_videos = num_videos
        self.seed = seed
        self._validations = 0
        self.written: list[Path] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_validations:
            return
        dm = trainer.datamodule
        examples = [dm.val_set[i] for i in range(min(self.num_videos, len(dm.val_set)))]
        examples = [e for e in examples if e is not None]
        if not examples:
            return
        image = torch.stack([e["image"] for e in examples]).to(pl_module.device)
        captions = [e["caption"] for e in examples]
        was_training = pl_module.training
        pl_module.eval()
        video = pl_module.generate(
            image, captions, self.num_segments,
            generator=torch.Generator(pl_module.device).manual_seed(self.seed),
        )  # fmt: skip
        pl_module.train(was_training)
        # trainer.log_dir broadcasts from rank 0, so every rank must ask (else DDP deadlocks).
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "rollouts"
        if not trainer.is_global_zero:
            return
        for i, frames in enumerate(video):
            path = out_dir / f"step_{trainer.global_step:07d}_{i}.mp4"
            write_video(path, frames, dm.fps)
            self.written.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_video(
                    "rollout/val", video, global_step=trainer.global_step, fps=int(dm.fps)
                )
