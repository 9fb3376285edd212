"""Seeing it: a short rollout from a held-out example, to TensorBoard and to mp4, and a contact
sheet of rollout frames beside the ground truth of the same held-out video."""

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from callbacks.run_paths import model_step
from datamodules.video_io import write_video
from lightning_modules.codecs import to_uint8
from lightning_modules.conditioning import IMAGE, TEXT, CachedConditioning, stack_parts


def image_grid(frames: torch.Tensor, padding: int = 2, pad_value: int = 255) -> torch.Tensor:
    """uint8 cells [rows, cols, 3, H, W] -> one image [3, rows (H + p) + p, cols (W + p) + p],
    `padding` pixels of `pad_value` around every cell: torchvision's `make_grid` with an explicit
    row/column layout, in einops (torchvision cannot be installed beside this torch)."""
    cells = F.pad(frames, (padding, 0, padding, 0), value=pad_value)  # each cell's top/left
    grid = rearrange(cells, "r c ch h w -> ch (r h) (c w)")
    return F.pad(grid, (0, padding, 0, padding), value=pad_value)  # the bottom/right border


def contact_sheet(
    truths: list[torch.Tensor], rollouts: list[torch.Tensor], scale: int = 3, gap: int = 2
) -> torch.Tensor:
    """One image: for each example a ground-truth row over a rollout row, frame by frame.

    truths[i], rollouts[i]: uint8 [T, 3, H, W] (a ground truth shorter than its rollout leaves
    the rest of its row blank). Frames are enlarged `scale` times (nearest) so a 32 x 32 video
    stays readable, with `gap` white pixels around each. Rows: truth 0, rollout 0, truth 1, ...
    Returns uint8 [3, H', W'].
    """
    if len(truths) != len(rollouts) or not truths:
        raise ValueError(
            f"need as many truths as rollouts (> 0), got {len(truths)}, {len(rollouts)}"
        )
    frames = max(r.shape[0] for r in rollouts)
    rows = []
    for video in (v for pair in zip(truths, rollouts, strict=True) for v in pair):
        video = video[:frames]
        blank = frames - video.shape[0]  # a short ground truth: white cells after its end
        rows.append(F.pad(video, (0, 0, 0, 0, 0, 0, 0, blank), value=255))
    cells = repeat(torch.stack(rows), "r t c h w -> r t c (h s) (w z)", s=scale, z=scale)
    return image_grid(cells, padding=gap)


@torch.no_grad()
def ground_truth(example: dict, pl_module: L.LightningModule) -> torch.Tensor:
    """uint8 frames [T, 3, H, W] of a held-out example: its pixels, or (latent-cache data) its
    cached latents decoded after the image latent, as `generate` decodes a rollout."""
    if "video" in example:
        return to_uint8(example["video"].flatten(0, 1))
    codec = pl_module.codec
    latents = example["latents"].flatten(0, 1)[None].to(pl_module.device)
    context = example["image_latent"][None].to(latents)
    return to_uint8(codec.decode_continuation(context, latents)[0]).cpu()


def cached_conditioning(
    examples: list[dict[str, Any]], dm: Any, image: torch.Tensor
) -> CachedConditioning | None:
    """The examples' conditioning from the datamodule's conditioning cache, if it has one (so
    that a run with the cache never loads the text encoders, rollouts included)."""
    if TEXT not in examples[0]:
        return None
    parts = [stack_parts([e[key] for e in examples]) for key in (TEXT, IMAGE)]
    moved = [{k: v.to(image.device) for k, v in p.items()} for p in parts]
    null = {k: v[None].to(image.device) for k, v in dm.val_set.null_text.items()}
    return CachedConditioning(*moved, null)


class RolloutVideoLogger(L.Callback):
    """Every `every_n_validations` validation runs, roll out `num_videos` held-out examples.

    Every rank runs `generate` (sharded models need all ranks in the forward); rank 0 logs the
    video with `add_video` and writes `<log_dir>/rollouts/step_<step>_<i>.mp4`, plus a contact
    sheet of the rollouts under their ground truth: `<log_dir>/rollouts/sheet_step_<step>.png`,
    a copy of the latest as `sheet.png`, and the TensorBoard image `rollout/sheet`.
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
        self.sheet: Path | None = None

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
            frames_per_segment=dm.segment_frames, cached=cached_conditioning(examples, dm, image),
        )  # fmt: skip
        pl_module.train(was_training)
        # trainer.log_dir broadcasts from rank 0, so every rank must ask (else DDP deadlocks).
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "rollouts"
        if not trainer.is_global_zero:
            return
        step = model_step(trainer, pl_module)
        for i, frames in enumerate(video):
            path = out_dir / f"step_{step:07d}_{i}.mp4"
            write_video(path, frames, dm.fps)
            self.written.append(path)
        truths = [ground_truth(e, pl_module) for e in examples]
        sheet = contact_sheet(truths, list(video))
        image = Image.fromarray(sheet.permute(1, 2, 0).numpy())
        self.sheet = out_dir / f"sheet_step_{step:07d}.png"
        image.save(self.sheet)
        image.save(out_dir / "sheet.png")  # the latest, at a fixed path
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_video("rollout/val", video, global_step=step, fps=int(dm.fps))
                logger.experiment.add_image("rollout/sheet", sheet, global_step=step)
