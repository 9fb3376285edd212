"""Long-rollout evaluation (paper Sec. 4.2) as a library: pick held-out videos, roll them out,
score them, score their ground truth, run the memory probe. `callbacks/rollout_eval.py` calls it
during training and logs what it returns; `experiments/` reads the same numbers.

Scores: the VBench-style metrics and Eq. 8 drifts of `eval.video_scores`, reduced over videos and
ranks with `eval.metric.VideoScoreMean` (sum states, per-video mean), plus per-segment curves,
among them `psnr`: each rollout segment against the same segment of its held-out video (PSNR by
depth; a rollout starts from that video's first frame, so depth 0 is image-to-video fidelity and
the fall with depth is how fast the rollout leaves the data).

DDP / FSDP: examples are sharded i = rank, rank + world, ...; every rank makes the same number of
`generate` calls (a short shard is padded with a stand-in example whose result is discarded),
because an FSDP-sharded model runs collectives inside its forward; every function calls
`compute()` the same number of times in the same order on every rank.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from datamodules.synthetic.probe_scene import probe_set
from eval.backends.registry import BackendSet
from eval.metric import VideoScoreMean
from eval.probe import PROBE_KEYS, probe_video_scores
from eval.video_scores import (
    compute_per_frame,
    metric_names,
    score_keys,
    scores_from_outputs,
    segment_curves,
)
from lightning_modules.codecs import to_uint8
from lightning_modules.memory_pack import history_reach

__all__ = [
    "PSNR_CURVE",
    "RolloutScores",
    "curve_names",
    "ground_truth_label",
    "ground_truth_scores",
    "pick_examples",
    "probe_scores",
    "psnr_by_segment",
    "rollout_scores",
    "shard_indices",
]

# Per-frame quantities that have a per-segment curve, in the order they are logged.
CURVE_METRICS = (
    "subject_consistency",
    "background_consistency",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_fraction",
    "motion_smoothness",
)
PSNR_CURVE = "psnr"  # per-segment PSNR against the held-out video (dB, uint8 frames)
Example = dict[str, Any]
OnVideo = Callable[[int, Tensor], None]  # (example index, uint8 frames [T, 3, H, W])


def shard_indices(count: int, rank: int, world: int) -> list[int | None]:
    """Indices rank, rank + world, ... of `count` examples, padded with None (an uncounted dummy
    call) so every rank makes ceil(count / world) `generate` calls."""
    mine: list[int | None] = list(range(rank, count, world))
    return mine + [None] * (math.ceil(count / world) - len(mine))


def pick_examples(
    dataset: Sequence[Example | None], shard: list[int | None]
) -> list[tuple[int | None, Example]]:
    """(index, example) for each shard entry. Padding (None) and examples that fail to load get a
    stand-in (the first readable example) and index None: rolled out, never counted."""
    picked = []
    for index in shard:
        example = dataset[index if index is not None else 0]
        if example is None:
            warnings.warn(f"rollout evaluation: val_set[{index}] is None; skipped", stacklevel=2)
            example, index = _first_readable(dataset), None
        picked.append((index, example))
    return picked


def _first_readable(dataset: Sequence[Example | None]) -> Example:
    for i in range(len(dataset)):
        if dataset[i] is not None:
            return dataset[i]  # type: ignore[return-value]
    raise ValueError("rollout evaluation: every example in val_set is None")


def curve_names(backends: BackendSet) -> list[str]:
    """`<metric>@<backend>` of the per-segment curves the available backends give."""
    names = metric_names(backends)
    return [names[m] for m in CURVE_METRICS if not names[m].endswith("@unavailable")]


def psnr_by_segment(
    frames: Tensor, example: Example, segments: int, frames_per_segment: int
) -> list[float]:
    """PSNR (dB) of each rollout segment of uint8 `frames` [T, 3, H, W] against the same segment
    of the example's true `video` (NaN where the true video is shorter or absent)."""
    truth = example.get("video")
    out = []
    for s in range(segments):
        if truth is None or s >= truth.shape[0]:
            out.append(math.nan)
            continue
        true = to_uint8(truth[s])
        got = frames[s * frames_per_segment : (s + 1) * frames_per_segment]
        out.append(float(peak_signal_noise_ratio(got.float(), true.float(), data_range=255.0)))
    return out


@dataclass
class RolloutScores:
    """Mean scores over the (global) rollouts and per-segment curves {metric: [segment values]}."""

    scores: dict[str, float]
    curves: dict[str, list[float]]


def rollout_scores(
    model: Any,
    examples: list[tuple[int | None, Example]],
    segments: int,
    frames_per_segment: int,
    backends: BackendSet,
    fps: float,
    seed: int = 0,
    on_video: OnVideo | None = None,
    on_segment: Callable[[int], None] | None = None,
) -> RolloutScores:
    """Roll out each (index, example) for `segments` segments (noise seeded by seed + index) and
    score it; `on_video(index, uint8 frames [T, 3, H, W])` sees each counted rollout and
    `on_segment(k)` (a progress bar) each generated segment."""
    device = model.device
    metric = VideoScoreMean(score_keys(backends)).to(device)
    names = [*curve_names(backends), PSNR_CURVE]
    curves = VideoScoreMean([f"{k}/{s}" for k in names for s in range(segments)])
    progress = {"on_segment": on_segment} if on_segment is not None else {}
    curves = curves.to(device)
    for index, example in examples:
        image = example["image"].unsqueeze(0).to(device)
        gen = torch.Generator(device=device).manual_seed(seed + (index or 0))
        with torch.no_grad():
            video = model.generate(image, [example["caption"]], segments, generator=gen,
                                   frames_per_segment=frames_per_segment, **progress)  # fmt: skip
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
        per_segment[PSNR_CURVE] = psnr_by_segment(frames, example, segments, frames_per_segment)
        curves.update(
            {f"{k}/{s}": v for k, vals in per_segment.items() for s, v in enumerate(vals)}
        )
        if on_video is not None:
            on_video(index, frames)
    scores = {k: float(v) for k, v in metric.compute().items()}  # collective, every rank
    by_metric: dict[str, list[float]] = {}
    for key, value in curves.compute().items():  # "<metric>/<segment>", segments in order
        by_metric.setdefault(key.rpartition("/")[0], []).append(float(value))
    return RolloutScores(scores, by_metric)


def ground_truth_scores(
    dataset: Sequence[Example | None],
    shard: list[int | None],
    segments: int,
    backends: BackendSet,
    fps: float,
    device: torch.device,
) -> tuple[dict[str, float], float] | None:
    """The same scores of the shard's true videos cut to `segments` segments, and the fraction of
    them shorter than that (they contribute all they have). None (with a warning) when the items
    hold no pixel `video` (a latent cache). Collective-safe: one `compute()` on every rank."""
    first = next((dataset[i] for i in shard if i is not None), None)
    if first is None and len(dataset):
        first = dataset[0]
    if first is not None and "video" not in first:
        warnings.warn(
            "rollout evaluation: val_set items have no pixel 'video' (latent cache?); "
            "no ground-truth row",
            stacklevel=2,
        )
        return None
    shorter = "ground_truth/fraction_shorter"
    metric = VideoScoreMean([*score_keys(backends), shorter]).to(device)
    for index in shard:
        example = None if index is None else dataset[index]
        if example is None:
            continue  # padding, or a video that failed to decode (the dataset counts it)
        video = example["video"]  # [s, f, 3, H, W] in [-1, 1]
        clip = video[:segments].flatten(0, 1)
        frames = ((clip.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        scores = scores_from_outputs(compute_per_frame(frames, backends, fps), backends)
        metric.update({**scores, shorter: float(video.shape[0] < segments)})
    result = {k: float(v) for k, v in metric.compute().items()}
    return result, result.pop(shorter)


def ground_truth_label(fraction_shorter: float, count: int) -> str:
    """The results table's row name: `ground truth (k/n shorter)` when k videos were shorter."""
    shorter = round(fraction_shorter * count) if not math.isnan(fraction_shorter) else 0
    return "ground truth" + (f" ({shorter}/{count} shorter)" if shorter else "")


def probe_scores(
    model: Any,
    count: int,
    size: tuple[int, int],
    segment_frames: int,
    rank: int,
    world: int,
    seed: int = 0,
    fps: float = 8.0,
) -> dict[str, float] | None:
    """The memory probe (`eval/probe.py`) on `count` probe videos drawn with `seed`, this rank's
    shard of them, reduced over ranks. None (with a warning) when the model's history never lets
    the landmark go (`full_history`)."""
    probes = probe_set(count, size, segment_frames, seed=seed, fps=fps)
    try:
        probes[0].check_history(history_reach(model.dit) * model.codec.temporal_factor)
    except ValueError as err:
        warnings.warn(f"rollout evaluation: memory probe skipped: {err}", stacklevel=2)
        return None
    shard = shard_indices(len(probes), rank, world)
    rows = probe_video_scores(model, [probes[i if i is not None else 0] for i in shard], seed=seed)
    metric = VideoScoreMean(list(PROBE_KEYS)).to(model.device)
    for index, row in zip(shard, rows, strict=True):
        if index is not None:  # padding keeps every rank's generate calls aligned
            metric.update(row)
    return {k: float(v) for k, v in metric.compute().items()}
