"""Score one video: per-frame network outputs once, then the six metrics, drifts and curves.

`score_video(frames, backends, fps)` (or `score_video_stream(chunks, ...)` for a video decoded
chunk by chunk, `eval/per_frame.py`) returns, with names carrying the backend
(`<metric>@<backend>`, `@unavailable` + NaN when a role has no backend):
the six global metrics (Tab. 1 order), `dynamic_fraction` (continuous dynamic degree), and for the
drift metrics `drift/`, `start/`, `end/` (Eq. 8, slices of the same per-frame outputs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from eval.backends.registry import BackendSet
from eval.drift import drift_of
from eval.formulas import (
    consistency_per_frame,
    consistency_score,
    dynamic_degree,
    dynamic_fraction,
    mean_score,
    smoothness_from_errors,
)
from eval.per_frame import PerFrameOutputs, compute_per_frame, compute_per_frame_stream

__all__ = [
    "DRIFT_METRICS",
    "GLOBAL_METRICS",
    "PerFrameOutputs",
    "compute_per_frame",
    "metric_names",
    "score_keys",
    "score_video",
    "score_video_stream",
    "scores_from_outputs",
    "segment_curves",
]

# Tab. 1 column order: six global metrics, then the four error-accumulation drifts.
GLOBAL_METRICS = (
    "imaging_quality",
    "aesthetic_quality",
    "dynamic_degree",
    "motion_smoothness",
    "background_consistency",
    "subject_consistency",
)
DRIFT_METRICS = (
    "imaging_quality",
    "aesthetic_quality",
    "background_consistency",
    "subject_consistency",
    "dynamic_fraction",
)
_ROLE = {
    "imaging_quality": "imaging",
    "aesthetic_quality": "aesthetic",
    "dynamic_degree": "flow",
    "dynamic_fraction": "flow",
    "motion_smoothness": "interpolation",
    "background_consistency": "background",
    "subject_consistency": "subject",
}


def metric_names(backends: BackendSet) -> dict[str, str]:
    """metric -> logged name `<metric>@<backend>`."""
    names = backends.names()
    return {m: f"{m}@{names[role]}" for m, role in _ROLE.items()}


def _pairs_in(out: PerFrameOutputs, frames: slice) -> torch.Tensor:
    """Flow pairs whose both (subsampled) frames lie inside the frame slice."""
    assert out.flow_pairs is not None
    first = torch.arange(out.flow_pairs.numel()) * out.flow_stride
    keep = (first >= frames.start) & (first + out.flow_stride < frames.stop)
    return out.flow_pairs[keep]


def _slice_metric(out: PerFrameOutputs, metric: str) -> Callable[[slice], float] | None:
    """metric -> function of a frame slice, or None when its backend is unavailable."""
    if metric in ("subject_consistency", "background_consistency"):
        feats = out.subject if metric == "subject_consistency" else out.background
        return None if feats is None else (lambda s: consistency_score(feats[s]))
    if metric in ("aesthetic_quality", "imaging_quality"):
        per = out.aesthetic if metric == "aesthetic_quality" else out.imaging
        return None if per is None else (lambda s: mean_score(per[s]))
    if metric in ("dynamic_degree", "dynamic_fraction"):
        if out.flow_pairs is None:
            return None
        fn = dynamic_degree if metric == "dynamic_degree" else dynamic_fraction
        return lambda s: fn(_pairs_in(out, s), out.flow_threshold)
    if metric == "motion_smoothness":
        errs = out.smooth_errors
        return None if errs is None else (lambda s: smoothness_from_errors(errs))
    raise ValueError(f"unknown metric {metric!r}")


def score_keys(backends: BackendSet) -> list[str]:
    """Every key `score_video` returns for these backends, in order (for the Metric's states)."""
    names = metric_names(backends)
    keys = [names[m] for m in (*GLOBAL_METRICS, "dynamic_fraction")]
    for metric in DRIFT_METRICS:
        keys += [f"{prefix}/{names[metric]}" for prefix in ("start", "end", "drift")]
    return keys


def scores_from_outputs(out: PerFrameOutputs, backends: BackendSet) -> dict[str, float]:
    """Global metrics, dynamic_fraction and start/end/drift values from precomputed outputs."""
    names = metric_names(backends)
    whole = slice(0, out.num_frames)
    scores: dict[str, float] = {}
    for metric in (*GLOBAL_METRICS, "dynamic_fraction"):
        fn = _slice_metric(out, metric)
        scores[names[metric]] = math.nan if fn is None else fn(whole)
    for metric in DRIFT_METRICS:
        fn = _slice_metric(out, metric)
        if fn is None:
            values = (math.nan, math.nan, math.nan)
        else:
            d = drift_of(fn, out.num_frames)
            values = (d.start, d.end, d.drift)
        for prefix, value in zip(("start", "end", "drift"), values, strict=True):
            scores[f"{prefix}/{names[metric]}"] = value
    return scores


def score_video(frames: torch.Tensor, backends: BackendSet, fps: float) -> dict[str, float]:
    """All metrics and drifts of one uint8 video [T, 3, H, W] recorded at `fps`."""
    return scores_from_outputs(compute_per_frame(frames, backends, fps), backends)


def score_video_stream(
    chunks: Iterable[torch.Tensor], backends: BackendSet, fps: float
) -> dict[str, float]:
    """`score_video` of a video given as consecutive uint8 chunks (bounded memory, same result)."""
    return scores_from_outputs(compute_per_frame_stream(chunks, backends, fps), backends)


def segment_curves(
    out: PerFrameOutputs, backends: BackendSet, num_segments: int
) -> dict[str, list[float]]:
    """Per-segment means of each per-frame quantity (drift along the video, not only its ends).

    Consistency uses the whole-video terms c[t] (anchor = frame 0), so a falling curve shows the
    video drifting away from its start; flow pairs and smoothness pairs count in the segment of
    their first / predicted frame.
    """
    if num_segments < 1:
        raise ValueError(f"segment_curves: num_segments must be >= 1, got {num_segments!r}")
    names = metric_names(backends)
    bounds = torch.linspace(0, out.num_frames, num_segments + 1).round().long().tolist()
    seg_of_frame = torch.zeros(out.num_frames, dtype=torch.long)
    for s in range(num_segments):
        seg_of_frame[bounds[s] : bounds[s + 1]] = s

    def per_segment(values: torch.Tensor, frame_index: torch.Tensor) -> list[float]:
        result = []
        for s in range(num_segments):
            v = values[seg_of_frame[frame_index] == s]
            result.append(float(v.mean()) if v.numel() else math.nan)
        return result

    curves: dict[str, list[float]] = {}
    t = torch.arange(out.num_frames)
    for metric, feats in (
        ("subject_consistency", out.subject),
        ("background_consistency", out.background),
    ):
        if feats is not None and out.num_frames > 1:
            curves[names[metric]] = per_segment(consistency_per_frame(feats), t[1:])
    for metric, per in (("aesthetic_quality", out.aesthetic), ("imaging_quality", out.imaging)):
        if per is not None:
            curves[names[metric]] = per_segment(per, t)
    if out.flow_pairs is not None and out.flow_pairs.numel():
        above = (out.flow_pairs > out.flow_threshold).double()
        first = torch.arange(out.flow_pairs.numel()) * out.flow_stride
        curves[names["dynamic_fraction"]] = per_segment(above, first)
    if out.smooth_errors is not None and out.smooth_errors.numel():
        smooth = (255.0 - out.smooth_errors) / 255.0
        curves[names["motion_smoothness"]] = per_segment(smooth, 2 * t[: smooth.numel()] + 1)
    return curves
