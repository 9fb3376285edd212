"""Long-rollout evaluation (paper Sec. 4.2) during training: VBench-style metrics + Eq. 8 drift.

Every `every_n_epochs` validation epochs (and at `test`) the held-out videos of
`trainer.datamodule.val_set` are rolled out at several lengths (in segments), their ground truth
and (`probe_videos` > 0) the memory probe are scored by `eval/rollout.py`, which also documents the
metrics and the DDP / FSDP sharding; this callback chooses when, and logs: `eval/<length>/<metric>`
scalars (`.../ground_truth/...` for the true videos, with `fraction_shorter`), `eval/probe/<key>`,
per-segment curves `eval_curve/<length>/<metric>` (TensorBoard, segment = step), a few rollouts as
TensorBoard videos, every rollout as mp4 and a Tab. 1-style results table. `results` and `curves`
keep the last evaluation's numbers (`experiments/reproduce.py` reads them).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch

from datamodules.video_io import write_video
from eval import rollout
from eval.backends.registry import BackendSet, build_backends
from eval.results_table import write_results_table

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

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Roll out, score, reduce across ranks and log; the same collectives on every rank."""
        dm = getattr(trainer, "datamodule", None)
        val_set = getattr(dm, "val_set", None)
        if val_set is None or len(val_set) == 0:
            warnings.warn("RolloutEvalCallback: datamodule has no val_set; skipping", stacklevel=2)
            return
        if self._backends is None:
            specs = self.backend_specs
            self._backends = specs if isinstance(specs, BackendSet) else build_backends(specs)
        backends = self._backends.to(pl_module.device)
        count = min(self.num_videos, len(val_set))
        shard = rollout.shard_indices(count, trainer.global_rank, trainer.world_size)
        out_dir = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        tag = f"{stage}_epoch{trainer.current_epoch:04d}"
        rows, was_training = [], pl_module.training
        pl_module.eval()
        try:
            for name, segments in self.lengths.items():
                videos = out_dir / "rollouts" / tag / name
                got = rollout.rollout_scores(
                    pl_module, rollout.pick_examples(val_set, shard), segments, dm.segment_frames,
                    backends, float(dm.fps), self.seed, self._video_writer(trainer, name, videos),
                )  # fmt: skip
                self._log(pl_module, f"eval/{name}", got.scores)
                for metric, values in got.curves.items() if trainer.is_global_zero else ():
                    for segment, value in enumerate(values):
                        self._experiment(trainer, "add_scalar", f"eval_curve/{name}/{metric}",
                                         value, global_step=segment)  # fmt: skip
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
            probe = self.probe_videos and rollout.probe_scores(
                pl_module, self.probe_videos, dm.resolution, dm.segment_frames,
                trainer.global_rank, trainer.world_size, self.seed,
            )  # fmt: skip
            if probe:  # None: the model's history never lets the landmark go
                self._log(pl_module, "eval/probe", probe)
                self.results["probe"] = probe
        finally:
            pl_module.train(was_training)
        if trainer.is_global_zero:
            write_results_table(rows, out_dir, stem=f"eval_{tag}")

    @staticmethod
    def _log(pl_module: L.LightningModule, prefix: str, scores: dict[str, float]) -> None:
        for key, value in scores.items():
            pl_module.log(f"{prefix}/{key}", value, rank_zero_only=False)

    def _video_writer(self, trainer: L.Trainer, name: str, directory: Path) -> rollout.OnVideo:
        """Writes each counted rollout as mp4; rank 0 also logs the first `num_logged_videos`."""
        fps, logged = float(trainer.datamodule.fps), [0]

        def write(index: int, frames: torch.Tensor) -> None:
            write_video(directory / f"video{index:04d}.mp4", frames, fps)
            if trainer.is_global_zero and logged[0] < self.num_logged_videos:
                self._experiment(trainer, "add_video", f"rollout/{name}/{index:04d}",
                                 frames.unsqueeze(0), global_step=trainer.global_step, fps=fps)  # fmt: skip
                logged[0] += 1

        return write

    @staticmethod
    def _experiment(trainer: L.Trainer, method: str, *args: object, **kwargs: object) -> None:
        """Call `method` (add_video, add_scalar) on the first logger that records videos."""
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_video"):  # TensorBoard (moviepy<2 encodes)
                getattr(logger.experiment, method)(*args, **kwargs)
                return
