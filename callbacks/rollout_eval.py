"""Long-rollout evaluation (paper Sec. 4.2) during training: VBench-style metrics + Eq. 8 drift.

Every `every_n_epochs` validation epochs (and at `test`) the held-out videos of
`trainer.datamodule.val_set` are rolled out at several lengths (in segments), their ground truth
and (`probe_videos` > 0) the memory probe are scored by `eval/rollout.py`, which also documents the
metrics and the DDP / FSDP sharding; this callback chooses when, and logs: `eval/<length>/<metric>`
scalars (`.../ground_truth/...` for the true videos, with `fraction_shorter`), `eval/probe/<key>`,
per-segment curves as scalars `eval_curve/<length>/<metric>/seg<kk>` at the global step (so
evaluations add points instead of overwriting each other) and as a figure `eval_curve/<length>`,
a few rollouts as TensorBoard videos beside their ground truth, every rollout as mp4 and a Tab.
1-style results table. Files are named by stage and step (`eval_val_step0002880.md`; outside
`fit`, by the checkpoint's run and step: `eval_test_stage1_version_0_step0002880.md`) and never
overwrite an earlier evaluation's. `results` and `curves` keep the last evaluation's numbers
(`experiments/reproduce.py` reads them). A progress bar follows the rollouts (rank 0, when the
trainer shows one).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from callbacks.run_paths import model_step, run_label
from callbacks.tensorboard import RESULT_METRICS, curve_figure, layout, tensorboard_writer
from callbacks.video_logger import ground_truth
from datamodules.video_io import write_video
from eval import rollout
from eval.backends.registry import BackendSet, build_backends
from eval.results_table import write_results_table
from eval.video_scores import score_keys

__all__ = ["RolloutEvalCallback"]
LENGTHS = {"short": 2, "medium": 4, "long": 8}  # rollout lengths in segments, by default


class RolloutEvalCallback(L.Callback):
    """Roll out held-out examples at several lengths and log metrics, drifts, curves and videos."""

    def __init__(
        self,
        lengths: dict[str, int] | None = None,
        every_n_epochs: int = 1,
        num_videos: int = 4,
        backends: dict[str, str] | BackendSet | None = None,
        num_logged_videos: int = 2,
        output_dir: str | None = None,
        seed: int = 0,
        probe_videos: int = 0,
    ) -> None:
        super().__init__()
        self.lengths = dict(lengths) if lengths is not None else dict(LENGTHS)
        bad = {k: v for k, v in self.lengths.items() if not isinstance(v, int) or v < 1}
        if not self.lengths or bad:
            raise ValueError(f"lengths must map names to positive segment counts, got {lengths!r}")
        for arg, value, low in (("every_n_epochs", every_n_epochs, 1), ("num_videos", num_videos, 1),
                                ("num_logged_videos", num_logged_videos, 0),
                                ("probe_videos", probe_videos, 0)):  # fmt: skip
            if value < low:
                raise ValueError(f"{arg} must be >= {low}, got {value!r}")
        self.every_n_epochs, self.num_videos = every_n_epochs, num_videos
        self.backend_specs, self.num_logged_videos = backends, num_logged_videos
        self.output_dir, self.seed, self.probe_videos = output_dir, seed, probe_videos
        self._backends: BackendSet | None = None  # built on first use: no model loading at init
        self._ground_truth: dict[tuple[str, int], tuple[dict[str, float], float] | None] = {}
        self.results: dict[str, dict[str, float]] = {}
        self.curves: dict[str, dict[str, list[float]]] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Every `every_n_epochs` epochs (not during the sanity check)."""
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.evaluate(trainer, pl_module, stage="val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Always at `trainer.test`, regardless of `every_n_epochs`."""
        self.evaluate(trainer, pl_module, stage="test")

    def backends(self) -> BackendSet:
        """The metric backends, built on first use (no model loading at construction)."""
        if self._backends is None:
            specs = self.backend_specs
            self._backends = specs if isinstance(specs, BackendSet) else build_backends(specs)
        return self._backends

    def hparam_metrics(self) -> list[str]:
        """Result tags for TensorBoard's hparams table: the longest rollout's metrics and drifts,
        and the memory probe's accuracy (`callbacks/config_logger.py`)."""
        longest = max(self.lengths, key=self.lengths.__getitem__)
        keys = [k for k in score_keys(self.backends()) if not k.startswith(("start/", "end/"))]
        return [f"eval/{longest}/{k}" for k in keys if k.partition("@")[0].split("/")[-1]
                in RESULT_METRICS] + (["eval/probe/memory"] if self.probe_videos else [])  # fmt: skip

    def tensorboard_layout(self) -> dict:
        """The custom-scalar charts of what this callback logs (`callbacks/tensorboard.py`)."""
        names = [n.partition("@")[0] for n in rollout.curve_names(self.backends())]
        return layout(self.lengths, names, bool(self.probe_videos))

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Roll out, score, reduce across ranks and log; the same collectives on every rank."""
        dm = getattr(trainer, "datamodule", None)
        val_set = getattr(dm, "val_set", None)
        if val_set is None or len(val_set) == 0:
            warnings.warn("RolloutEvalCallback: datamodule has no val_set; skipping", stacklevel=2)
            return
        backends = self.backends().to(pl_module.device)
        count = min(self.num_videos, len(val_set))
        shard = rollout.shard_indices(count, trainer.global_rank, trainer.world_size)
        out_dir = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        step = model_step(trainer, pl_module)
        tag = trainer.strategy.broadcast(self._tag(trainer, stage, step, out_dir))
        rows, was_training = [], pl_module.training
        bar = self._progress_bar(trainer, len(shard))
        pl_module.eval()
        try:
            for name, segments in self.lengths.items():
                videos = out_dir / "rollouts" / tag / name
                got = rollout.rollout_scores(
                    pl_module, rollout.pick_examples(val_set, shard), segments, dm.segment_frames,
                    backends, float(dm.fps), self.seed,
                    self._video_writer(trainer, pl_module, name, videos, step),
                    on_segment=None if bar is None else lambda _: bar.update(1),
                )  # fmt: skip
                self._log(pl_module, f"eval/{name}", got.scores)
                self._log_curves(trainer, name, got.curves, step)
                self.results[name], self.curves[name] = got.scores, got.curves
                rows.append(({"model": type(pl_module).__name__, "length": name}, got.scores))
                if (name, segments) not in self._ground_truth:  # the data do not change
                    self._ground_truth[(name, segments)] = rollout.ground_truth_scores(
                        val_set, shard, segments, backends, float(dm.fps), pl_module.device
                    )
                if (truth := self._ground_truth[(name, segments)]) is not None:
                    scores = {**truth[0], "fraction_shorter": truth[1]}
                    self._log(pl_module, f"eval/{name}/ground_truth", scores)
                    label = rollout.ground_truth_label(truth[1], count)
                    rows.append(({"model": label, "length": name}, truth[0]))
                    self.results[f"{name}/ground_truth"] = scores
            if bar is not None and self.probe_videos:
                bar.set_description("memory probe")
            probe = self.probe_videos and rollout.probe_scores(
                pl_module, self.probe_videos, dm.resolution, dm.segment_frames,
                trainer.global_rank, trainer.world_size, self.seed,
            )  # fmt: skip
            if probe:  # None: the model's history never lets the landmark go
                self._log(pl_module, "eval/probe", probe)
                self.results["probe"] = probe
        finally:
            pl_module.train(was_training)
            if bar is not None:
                bar.close()
        if trainer.is_global_zero:
            write_results_table(rows, out_dir, stem=f"eval_{tag}")

    def _tag(self, trainer: L.Trainer, stage: str, step: int, out_dir: Path) -> str:
        """`val_step0002880`; outside fit the checkpoint's run is named too; `-2`, `-3`, ... when
        an evaluation of the same name is already in `out_dir`."""
        run = "" if stage == "val" else f"{run_label(trainer.ckpt_path)}_"
        tag = base = f"{stage}_{run}step{step:07d}"
        n = 1
        while (out_dir / f"eval_{tag}.csv").exists() or (out_dir / "rollouts" / tag).exists():
            n += 1
            tag = f"{base}-{n}"
        return tag

    def _progress_bar(self, trainer: L.Trainer, shard: int) -> tqdm | None:
        """A bar over every segment this rank generates (rank 0, if the trainer shows bars)."""
        if not trainer.is_global_zero or trainer.progress_bar_callback is None:
            return None
        total = shard * sum(self.lengths.values())
        return tqdm(total=total, desc="rollout evaluation", unit="segment", leave=False)

    def _log_curves(
        self, trainer: L.Trainer, name: str, curves: dict[str, list[float]], step: int
    ) -> None:
        """Per-segment scalars at the global step (one tag per segment) and a figure."""
        writer = tensorboard_writer(trainer) if trainer.is_global_zero else None
        if writer is None:
            return
        for metric, values in curves.items():
            short = metric.partition("@")[0]
            for segment, value in enumerate(values):
                writer.add_scalar(f"eval_curve/{name}/{short}/seg{segment:02d}", value, step)
        writer.add_figure(f"eval_curve/{name}", curve_figure(curves, f"{name}, step {step}"), step)

    @staticmethod
    def _log(pl_module: L.LightningModule, prefix: str, scores: dict[str, float]) -> None:
        for key, value in scores.items():
            pl_module.log(f"{prefix}/{key}", value, rank_zero_only=False)

    def _video_writer(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        name: str,
        directory: Path,
        step: int,
    ) -> rollout.OnVideo:
        """Writes each counted rollout of this rank as mp4; rank 0 also logs the first
        `num_logged_videos` to TensorBoard beside their ground truth (rollout left, truth right)."""
        fps, logged = float(trainer.datamodule.fps), [0]
        writer = tensorboard_writer(trainer) if trainer.is_global_zero else None

        def write(index: int, frames: torch.Tensor) -> None:
            write_video(directory / f"video{index:04d}.mp4", frames, fps)
            if writer is not None and logged[0] < self.num_logged_videos:
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
