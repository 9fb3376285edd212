"""TensorBoard pieces the callbacks share: the writer, the custom-scalar layout, the hparams
session, per-segment curves as a figure.

- **Layout** (`CUSTOM SCALARS` tab): each drift metric's start and end (every rollout length) on
  one chart, generated vs ground truth per metric, PSNR by rollout depth (one line per segment),
  the per-segment curves of each metric, the memory probe with its chance and oracle, losses.
  Charts name tags by regular expression, so one layout fits any backends and lengths.
- **HParams**: the resolved config, flattened, with the run's result metrics (`val/loss`, the
  longest rollout's metrics and drifts, the memory probe). TensorBoard shows each metric's latest
  logged value, so the table fills in as evaluations run (Lightning's default writes only
  `hp_metric = -1`; the stage configs turn that off with `default_hp_metric: false`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

__all__ = ["curve_figure", "flatten", "layout", "tensorboard_writer", "write_hparams_session"]

DRIFT_METRICS = (
    "subject_consistency",
    "background_consistency",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_fraction",
)
RESULT_METRICS = (*DRIFT_METRICS, "dynamic_degree", "motion_smoothness")


def tensorboard_writer(trainer: L.Trainer) -> Any | None:
    """The SummaryWriter of the trainer's first TensorBoardLogger (None without one)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def layout(lengths: Iterable[str], curve_metrics: Iterable[str], probe: bool) -> dict[str, Any]:
    """The custom-scalar layout: {category: {chart: ["Multiline", [tag regexes]]}}."""
    lengths = list(lengths)
    multi = lambda *tags: ["Multiline", list(tags)]  # noqa: E731
    drift = {
        metric: multi(f"eval/[^/]+/start/{metric}@.*", f"eval/[^/]+/end/{metric}@.*")
        for metric in DRIFT_METRICS
    }
    truth = {
        f"{length} {metric}": multi(
            f"eval/{length}/{metric}@.*", f"eval/{length}/ground_truth/{metric}@.*"
        )
        for length in lengths
        for metric in RESULT_METRICS
    }
    depth = {f"{length}": multi(f"eval_curve/{length}/psnr/.*") for length in lengths}
    curves = {
        f"{length} {metric}": multi(f"eval_curve/{length}/{metric}/.*")
        for length in lengths
        for metric in curve_metrics
    }
    out = {
        "losses": {"loss": multi("train/loss$", "val/loss$"), "lr": multi("lr-.*")},
        "drift: start vs end (all lengths)": drift,
        "PSNR against the held-out video, by rollout depth (one line per segment)": depth,
        "generated vs ground truth": truth,
        "per-segment curves (one line per segment)": curves,
    }
    if probe:
        out["memory probe"] = {
            "landmark colour accuracy": multi(
                "eval/probe/memory$", "eval/probe/memory_gates_shut$",
                "eval/probe/chance$", "eval/probe/oracle$", "eval/probe/oracle_codec$",
            ),
            "colour error": multi("eval/probe/colour_error.*"),
        }  # fmt: skip
    return out


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """A nested config as `a/b/c` -> value, values TensorBoard's hparams accept (others as str)."""
    out: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def write_hparams_session(writer: Any, params: Mapping[str, Any], metrics: Iterable[str]) -> None:
    """One hparams session in the writer's run: `params` with these metric tags."""
    exp, ssi, sei = hparams(dict(params), {tag: 0.0 for tag in metrics})
    file_writer = writer._get_file_writer()
    for summary in (exp, ssi, sei):
        file_writer.add_summary(summary)


def curve_figure(curves: Mapping[str, list[float]], title: str) -> Any:
    """Per-segment curves {metric: [value per segment]} as a matplotlib figure, one panel per
    metric (their scales differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves)
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = curves[name]
        ax.plot(range(len(values)), values, marker="o", markersize=3)
        ax.set_title(name.partition("@")[0].replace("_", " "), fontsize=8)
        ax.set_xlabel("segment", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
