"""Long-rollout evaluation (paper Sec. 4.2): VBench-style metrics + Eq. 8 drift every N epochs.

Held-out (image, caption) pairs from `trainer.datamodule.val_set` are rolled out at several lengths
(in segments) with `pl_module.generate`, scored with `eval.video_scores`, and reduced across ranks with
`eval.metric.VideoScoreMean` (sum states, per-video mean). Logged: `eval/<length>/<metric>@<backend>`
scalars, per-segment curves `eval_curve/<length>/<metric>@<backend>` (TensorBoard, segment = step),
a few rollouts as TensorBoard videos; written: every rollout as mp4 and a Tab. 1-style results table.

Ground truth: every length also gets a `ground truth` row (logged as `eval/<length>/ground_truth/
<metric>@<backend>`): the same held-out val videos whose first frames start the rollouts, cut to
the rollout's number of segments and scored with the same backends, so a generated row is read
against the data it imitates. A val video shorter than the length contributes all it has (the
demo's long rollouts outlast every val video; skipping would leave no row) and is counted: the
row is then labelled `ground truth (k/n shorter)` and `eval/<length>/ground_truth/fraction_shorter`
is logged. The data do not change between evaluations, so the rows are computed once and reused.
A val set without pixel videos (a latent cache) gets no ground-truth row, with a warning.

Memory probe (`probe_videos` > 0): that many held-out probe videos (`datamodules/probe.py`) are
continued from their prefix and scored by `eval/probe.py`; logged as `eval/probe/<key>` (memory,
chance, oracle, colour errors, and with SemanticPack the same model with its read-in gates shut).
A model whose history never lets the landmark go (`full_history`) is skipped with a warning.

After each evaluation `results` holds what was logged, `{"<length>": scores, "<length>/ground_truth":
scores, "probe": scores}`, and `curves` the per-segment curves `{"<length>": {metric: [...]}}`
(`experiments/reproduce.py` reads both).

DDP / FSDP: examples are sharded i = rank, rank + world, ...; every rank makes the same number of
`generate` calls (short shards are padded with a dummy example whose result is discarded), because an
FSDP-sharded model runs collectives inside its forward; every rank calls `compute()` in the same order.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning as L
import torch

from eval.backends.registry import BackendSet, build_backends
from eval.metric import VideoScoreMean
from eval.results_table import write_results_table
from eval.video_scores import compute_per_frame, score_keys, scores_from_outputs, segment_curves

__all__ = ["RolloutEvalCallback", "shard_indices"]


def shard_indices(count: int, rank: int, world: int) -> list[int | None]:
    """Indices rank, rank + world, ... of `count` examples, padded with None (an uncounted dummy
    call) so every rank makes ceil(count / world) `generate` calls."""
    mine: list[int | None] = list(range(rank, count, world))
    return mine + [None] * (math.ceil(count / world) - len(mine))


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
        self.lengths = (
            dict(lengths) if lengths is not None else {"short": 2, "medium": 4, "long": 8}
        )
        bad = {k: v for k, v in self.lengths.items() if not isinstance(v, int) or v < 1}
        if not self.lengths or bad:
            raise ValueError(f"lengths must map names to positive segment counts, got {lengths!r}")
        for arg, value in (("every_n_epochs", every_n_epochs), ("num_videos", num_videos)):
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value!r}")
        for arg, value in (
            ("num_logged_videos", num_logged_videos),
            ("probe_videos", probe_videos),
        ):
            if value < 0:
                raise ValueError(f"{arg} must be >= 0, got {value!r}")
        self.every_n_epochs = every_n_epochs
        self.num_videos = num_videos
        self.backend_specs = backends
        self.num_logged_videos = num_logged_videos
        self.output_dir = output_dir
        self.seed = seed
        self._backends: BackendSet | None = None  # built on first use: no model loading at init
        self._ground_truth: dict[tuple[str, int], tuple[dict[str, float], float]] = {}
        self.probe_videos = probe_videos
        self.results: dict[str, dict[str, float]] = {}
        self.curves: dict[str, dict[str, list[float]]] = {}

    # ---- hooks -----------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Every `every_n_epochs` epochs (not during the sanity check)."""
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.evaluate(trainer, pl_module, stage="val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Always at `trainer.test`, regardless of `every_n_epochs`."""
        self.evaluate(trainer, pl_module, stage="test")

    # ---- evaluation --------------------------------------------------------------------------
    def _get_backends(self, device: torch.device) -> BackendSet:
        if self._backends is None:
            specs = self.backend_specs
            self._backends = specs if isinstance(specs, BackendSet) else build_backends(specs)
        return self._backends.to(device)

    def _out_dir(self, trainer: L.Trainer) -> Path:
        return Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Generate, score, reduce across ranks and log; identical collective sequence on all ranks."""
        datamodule = getattr(trainer, "datamodule", None)
        val_set = getattr(datamodule, "val_set", None)
        if val_set is None or len(val_set) == 0:
            warnings.warn("RolloutEvalCallback: datamodule has no val_set; skipping", stacklevel=2)
            return
        fps = float(datamodule.fps)
        rank, world = trainer.global_rank, trainer.world_size
        count = min(self.num_videos, len(val_set))
        shard = shard_indices(count, rank, world)
        backends = self._get_backends(pl_module.device)
        keys = score_keys(backends)
        out_dir = self._out_dir(trainer)
        tag = f"{stage}_epoch{trainer.current_epoch:04d}"
        rows = []
        was_training = pl_module.training
        pl_module.eval()
        try:
            for name, segments in self.lengths.items():
                scores = self._run_length(
                    trainer,
                    pl_module,
                    backends,
                    keys,
                    shard,
                    val_set,
                    fps,
                    name,
                    segments,
                    out_dir / "rollouts" / tag,
                )
                rows.append(({"model": type(pl_module).__name__, "length": name}, scores))
                self.results[name] = scores
                truth = self._ground_truth_row(
                    pl_module, backends, keys, shard, val_set, fps, name, segments
                )
                if truth is not None:
                    rows.append(truth)
                    fraction = self._ground_truth[(name, segments)][1]
                    self.results[f"{name}/ground_truth"] = {
                        **truth[1],
                        "fraction_shorter": fraction,
                    }
            if self.probe_videos:
                probe = self._run_probe(trainer, pl_module, datamodule)
                if probe is not None:
                    self.results["probe"] = probe
        finally:
            pl_module.train(was_training)
        if trainer.is_global_zero:
            write_results_table(rows, out_dir, stem=f"eval_{tag}")

    def _run_length(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        backends: BackendSet,
        keys: list[str],
        shard: list[int | None],
        val_set: object,
        fps: float,
        name: str,
        segments: int,
        video_dir: Path,
    ) -> dict[str, float]:
        from datamodules.video_io import write_video

        device = pl_module.device
        metric = VideoScoreMean(keys).to(device)
        curve_keys = [f"{k}/{s}" for k in self._curve_names(backends) for s in range(segments)]
        curves = VideoScoreMean(curve_keys).to(device)
        logged = 0
        for index in shard:
            example = val_set[index if index is not None else 0]
            if example is None:
                warnings.warn(
                    f"RolloutEvalCallback: val_set[{index}] is None; skipped", stacklevel=2
                )
                example, index = self._dummy_example(pl_module, val_set), None
            image = example["image"].unsqueeze(0).to(device)
            gen = torch.Generator(device=device).manual_seed(self.seed + (index or 0))
            with torch.no_grad():
                video = pl_module.generate(image, [example["caption"]], segments, generator=gen)
            if video.dtype != torch.uint8 or video.ndim != 5 or video.shape[2] != 3:
                raise ValueError(
                    f"generate must return uint8 [b, T, 3, H, W], got {video.dtype} {tuple(video.shape)}"
                )
            if index is None:
                continue  # padding call: keeps collectives aligned, result not counted
            frames = video[0].cpu()
            out = compute_per_frame(frames, backends, fps)
            metric.update(scores_from_outputs(out, backends))
            per_segment = segment_curves(out, backends, segments)
            curves.update(
                {f"{k}/{s}": v for k, vals in per_segment.items() for s, v in enumerate(vals)}
            )
            write_video(video_dir / name / f"video{index:04d}.mp4", frames, fps)
            if trainer.is_global_zero and logged < self.num_logged_videos:
                self._log_video(trainer, f"rollout/{name}/{index:04d}", frames, fps)
                logged += 1
        # Collective on every rank, in the same order on every rank.
        results = {k: float(v) for k, v in metric.compute().items()}
        curve_values = {k: float(v) for k, v in curves.compute().items()}
        for key, value in results.items():
            pl_module.log(f"eval/{name}/{key}", value, sync_dist=False, rank_zero_only=False)
        if trainer.is_global_zero:
            self._log_curves(trainer, name, curve_values)
        by_metric: dict[str, list[float]] = {}
        for key, value in curve_values.items():  # "<metric>/<segment>", segments in order
            by_metric.setdefault(key.rpartition("/")[0], []).append(value)
        self.curves[name] = by_metric
        return results

    def _run_probe(
        self, trainer: L.Trainer, pl_module: L.LightningModule, datamodule: object
    ) -> dict[str, float] | None:
        """The memory probe on this rank's shard of the probe set, reduced and logged."""
        from datamodules.probe import probe_set
        from eval.probe import PROBE_KEYS, probe_video_scores

        size, frames = datamodule.resolution, datamodule.segment_frames  # type: ignore[attr-defined]
        probes = probe_set(self.probe_videos, size, frames, seed=self.seed)
        history = pl_module.dit.history_frames
        try:
            probes[0].check_history(
                None if history is None else history * pl_module.codec.temporal_factor
            )
        except ValueError as err:
            warnings.warn(f"RolloutEvalCallback: memory probe skipped: {err}", stacklevel=2)
            return None
        shard = shard_indices(len(probes), trainer.global_rank, trainer.world_size)
        rows = probe_video_scores(
            pl_module, [probes[i if i is not None else 0] for i in shard], seed=self.seed
        )
        metric = VideoScoreMean(list(PROBE_KEYS)).to(pl_module.device)
        for index, row in zip(shard, rows, strict=True):
            if index is not None:  # padding keeps every rank's generate calls aligned
                metric.update(row)
        result = {k: float(v) for k, v in metric.compute().items()}
        for key, value in result.items():
            pl_module.log(f"eval/probe/{key}", value, sync_dist=False, rank_zero_only=False)
        return result

    def _ground_truth_row(
        self,
        pl_module: L.LightningModule,
        backends: BackendSet,
        keys: list[str],
        shard: list[int | None],
        val_set: object,
        fps: float,
        name: str,
        segments: int,
    ) -> tuple[dict[str, str], dict[str, float]] | None:
        """Score (once) the shard's val videos cut to `segments` segments; log and return the row.

        Collective-safe: every rank calls `compute()` once per length, on first use only.
        """
        cache_key = (name, segments)
        if cache_key not in self._ground_truth:
            probe = next((val_set[i] for i in shard if i is not None), None)
            if probe is None and len(val_set):  # type: ignore[arg-type]
                probe = val_set[0]  # type: ignore[index]
            if probe is not None and "video" not in probe:
                warnings.warn(
                    "RolloutEvalCallback: val_set items have no pixel 'video' (latent cache?); "
                    "no ground-truth row",
                    stacklevel=2,
                )
                return None
            shorter_key = "ground_truth/fraction_shorter"
            metric = VideoScoreMean([*keys, shorter_key]).to(pl_module.device)
            for index in shard:
                example = None if index is None else val_set[index]
                if example is None:
                    continue  # padding, or a video that failed to decode (the dataset counts it)
                video = example["video"]  # [s, f, 3, H, W] in [-1, 1]
                clip = video[:segments].flatten(0, 1)
                frames = ((clip.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
                scores = scores_from_outputs(compute_per_frame(frames, backends, fps), backends)
                metric.update({**scores, shorter_key: float(video.shape[0] < segments)})
            result = {k: float(v) for k, v in metric.compute().items()}
            fraction = result.pop(shorter_key)
            self._ground_truth[cache_key] = (result, fraction)
        result, fraction = self._ground_truth[cache_key]
        for key, value in result.items():
            pl_module.log(f"eval/{name}/ground_truth/{key}", value, rank_zero_only=False)
        pl_module.log(f"eval/{name}/ground_truth/fraction_shorter", fraction, rank_zero_only=False)
        count = min(self.num_videos, len(val_set))  # type: ignore[arg-type]
        shorter = round(fraction * count) if not math.isnan(fraction) else 0
        label = "ground truth" + (f" ({shorter}/{count} shorter)" if shorter else "")
        return {"model": label, "length": name}, result

    @staticmethod
    def _curve_names(backends: BackendSet) -> list[str]:
        from eval.video_scores import metric_names

        names = metric_names(backends)
        roles = backends.names()
        metrics = [
            ("subject_consistency", "subject"),
            ("background_consistency", "background"),
            ("aesthetic_quality", "aesthetic"),
            ("imaging_quality", "imaging"),
            ("dynamic_fraction", "flow"),
            ("motion_smoothness", "interpolation"),
        ]
        return [names[m] for m, role in metrics if roles[role] != "unavailable"]

    @staticmethod
    def _dummy_example(pl_module: L.LightningModule, val_set: object) -> dict[str, object]:
        for i in range(len(val_set)):  # type: ignore[arg-type]
            example = val_set[i]  # type: ignore[index]
            if example is not None:
                return example
        raise ValueError("RolloutEvalCallback: every example in val_set is None")

    @staticmethod
    def _experiment(trainer: L.Trainer) -> object | None:
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_video"):
                return logger.experiment
        return None

    def _log_video(self, trainer: L.Trainer, tag: str, frames: torch.Tensor, fps: float) -> None:
        experiment = self._experiment(trainer)
        if experiment is not None:  # TensorBoard needs moviepy<2 to encode (a dependency)
            experiment.add_video(tag, frames.unsqueeze(0), global_step=trainer.global_step, fps=fps)

    def _log_curves(self, trainer: L.Trainer, name: str, values: dict[str, float]) -> None:
        experiment = self._experiment(trainer)
        if experiment is None:
            return
        for key, value in values.items():
            metric, _, segment = key.rpartition("/")
            experiment.add_scalar(f"eval_curve/{name}/{metric}", value, global_step=int(segment))
