"""What the rollout evaluation writes besides scalars: file tags, a progress bar, per-segment
curves at the global step, and rollout videos beside their ground truth (mp4 and TensorBoard).
`callbacks/rollout_eval.py` decides when; these helpers decide where and how."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from callbacks.run_paths import run_label
from callbacks.tensorboard import curve_figure, tensorboard_writer
from callbacks.video_logger import ground_truth
from datamodules.video_io import write_video
from eval import rollout

__all__ = ["beside", "evaluation_tag", "log_curves", "progress_bar", "video_writer"]


def evaluation_tag(trainer: L.Trainer, stage: str, step: int, out_dir: Path) -> str:
    """`val_step0004032`; outside fit the checkpoint's run is named too; `-2`, `-3`, ... when
    an evaluation of the same name is already in `out_dir`."""
    run = "" if stage == "val" else f"{run_label(trainer.ckpt_path)}_"
    tag = base = f"{stage}_{run}step{step:07d}"
    n = 1
    while (out_dir / f"eval_{tag}.csv").exists() or (out_dir / "rollouts" / tag).exists():
        n += 1
        tag = f"{base}-{n}"
    return tag


def progress_bar(trainer: L.Trainer, segments: int) -> tqdm | None:
    """A bar over every segment this rank generates (rank 0, if the trainer shows bars)."""
    if not trainer.is_global_zero or trainer.progress_bar_callback is None:
        return None
    return tqdm(total=segments, desc="rollout evaluation", unit="segment", leave=False)


def log_curves(trainer: L.Trainer, name: str, curves: dict[str, list[float]], step: int) -> None:
    """Per-segment scalars at the global step (one tag per segment) and a figure."""
    writer = tensorboard_writer(trainer) if trainer.is_global_zero else None
    if writer is None:
        return
    for metric, values in curves.items():
        short = metric.partition("@")[0]
        for segment, value in enumerate(values):
            writer.add_scalar(f"eval_curve/{name}/{short}/seg{segment:02d}", value, step)
    writer.add_figure(f"eval_curve/{name}", curve_figure(curves, f"{name}, step {step}"), step)


def video_writer(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    name: str,
    directory: Path,
    step: int,
    num_logged: int,
) -> rollout.OnVideo:
    """Writes each counted rollout of this rank as mp4; rank 0 also logs the first `num_logged`
    to TensorBoard beside their ground truth (rollout left, truth right)."""
    fps, logged = float(trainer.datamodule.fps), [0]
    writer = tensorboard_writer(trainer) if trainer.is_global_zero else None

    def write(index: int, frames: torch.Tensor) -> None:
        write_video(directory / f"video{index:04d}.mp4", frames, fps)
        if writer is not None and logged[0] < num_logged:
            truth = ground_truth(trainer.datamodule.val_set[index], pl_module)
            pair = beside(frames, truth)
            writer.add_video(f"rollout/{name}/{index:04d}", pair[None], step, fps=fps)
            logged[0] += 1

    return write


def beside(rollout_frames: torch.Tensor, truth: torch.Tensor, gap: int = 2) -> torch.Tensor:
    """uint8 [T, 3, H, 2W + gap]: the rollout left, its ground truth right (black after the
    truth's end when it is shorter)."""
    frames = rollout_frames.shape[0]
    truth = truth[:frames]
    if truth.shape[0] < frames:
        truth = F.pad(truth, (0, 0, 0, 0, 0, 0, 0, frames - truth.shape[0]))
    space = torch.full((frames, 3, rollout_frames.shape[2], gap), 255, dtype=torch.uint8)
    return torch.cat([rollout_frames, space, truth.to(torch.uint8)], dim=-1)
