"""Long-rollout evaluation (paper Sec. 4.2) during training: VBench-style metrics + Eq. 8 drift.

Every `every_n_epochs` validation epochs, at the last epoch of `max_epochs` and at `test`, the
held-out videos are rolled out at several lengths (segments); `eval/rollout.py` scores them, their
ground truth and the memory probe (and documents the metrics and the DDP / FSDP sharding). This
callback chooses when and logs `eval/<length>/<metric>`, `eval/<length>/ground_truth/...`,
`eval/probe/<key>` and a Tab. 1-style table; curves, videos, file names and the progress bar are
`callbacks/rollout_logging.py`'s. `results` and `curves` keep the last evaluation's numbers
(`experiments/reproduce.py` reads them).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L

from callbacks.rollout_logging import evaluation_tag, log_curves, progress_bar, video_writer
from callbacks.run_paths import model_step
from callbacks.tensorboard import RESULT_METRICS, layout
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
        """Every `every_n_epochs` epochs and at the last epoch of `max_epochs` (so a config that
        shortens the demo still ends with one evaluation); never during the sanity check."""
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs
        if trainer.sanity_checking or (epoch % self.every_n_epochs and not last):
            return
        self.evaluate(trainer, pl_module, stage="val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate(trainer, pl_module, stage="test")  # always, whatever every_n_epochs

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
        tag = trainer.strategy.broadcast(evaluation_tag(trainer, stage, step, out_dir))
        rows, was_training = [], pl_module.training
        bar = progress_bar(trainer, len(shard) * sum(self.lengths.values()))
        pl_module.eval()
        try:
            for name, segments in self.lengths.items():
                videos = out_dir / "rollouts" / tag / name
                got = rollout.rollout_scores(
                    pl_module, rollout.pick_examples(val_set, shard), segments, dm.segment_frames,
                    backends, float(dm.fps), self.seed,
                    video_writer(trainer, pl_module, name, videos, step, self.num_logged_videos),
                    on_segment=None if bar is None else lambda _: bar.update(1),
                )  # fmt: skip
                self._log(pl_module, f"eval/{name}", got.scores)
                log_curves(trainer, name, got.curves, step)
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
                trainer.global_rank, trainer.world_size, self.seed, dm.fps,
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

    @staticmethod
    def _log(pl_module: L.LightningModule, prefix: str, scores: dict[str, float]) -> None:
        for key, value in scores.items():
            pl_module.log(f"{prefix}/{key}", value, rank_zero_only=False)
