"""Metric validity: does each metric@backend move the way its meaning requires under degradation?

Each `Check` names a metric (or an Eq. 8 drift `drift/<metric>`), a degradation from
`eval/degradations.py` at several strengths, and the expected behaviour:

- `down` / `up`: mean over videos of score(degraded) - score(baseline) below -TOL / above +TOL at
  every strength (imaging down with noise, drift up when the second half degrades, ...); the
  baseline is the clean video, or for the second-half rows the stationary (frozen) clean video,
  whose drift is exactly 0, so the rise is not hidden by the moving video's own start/end change;
- `zero`: the degraded videos' mean score is exactly 0 at every strength (dynamic degree of a
  frozen video, also with per-frame noise; of flickering blocky noise);
- `one`: the degraded videos' mean score is 1 at every strength (moving videos are dynamic, also
  under per-frame noise);
- `near_zero`: the degraded videos' mean score is at most NEAR_ZERO (drift of a stationary video).

`run_checks` scores every needed (degradation, strength) once per backend set and judges all checks
whose backend is available. `benchmarks/metric_validity.py` runs it on the synthetic renderer's
videos at two resolutions, on photographs panned into clips (`eval/real_clips.py`) and on any
folder of real clips, and prints the table the README shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from eval import degradations as deg
from eval.backends.registry import BackendSet
from eval.video_scores import metric_names, score_video

__all__ = ["CHECKS", "DEGRADATIONS", "NEAR_ZERO", "TOL", "Check", "judge", "run_checks"]

Expect = Literal["down", "up", "zero", "one", "near_zero"]
TOL = 1e-3  # a "move" smaller than 0.1 percentage point is no move
NEAR_ZERO = 0.01


@dataclass(frozen=True)
class Check:
    """metric (`imaging_quality`, `drift/subject_consistency`, ...) x degradation -> expectation."""

    metric: str
    degradation: str
    expect: Expect
    baseline: str = "clean"


# name -> (strengths, function(video, strength, seed, other_video)). `clean` is the identity.
DEGRADATIONS: dict[str, tuple[tuple[float, ...], Callable[..., torch.Tensor]]] = {
    "clean": ((0.0,), lambda v, s, seed, other: v),
    "noise": ((5.0, 15.0, 40.0), lambda v, s, seed, other: deg.gaussian_noise(v, s, seed)),
    "blur": ((0.7, 1.5, 3.0), lambda v, s, seed, other: deg.gaussian_blur(v, s, seed)),
    "jpeg": ((50.0, 20.0, 5.0), lambda v, s, seed, other: deg.jpeg(v, s, seed)),
    "h264": ((35.0, 43.0, 51.0), lambda v, s, seed, other: deg.h264(v, s, seed)),
    "frame_drops": ((0.25, 0.5, 0.75), lambda v, s, seed, other: deg.drop_frames(v, s, seed)),
    "blocky_noise": ((2.0, 4.0, 8.0), lambda v, s, seed, other: deg.blocky_noise(v, s, seed)),
    "frozen": ((0.0,), lambda v, s, seed, other: deg.freeze(v, 0.0, seed)),  # stationary video
    "frozen(+noise)": ((0.0, 15.0, 40.0), lambda v, s, seed, other: deg.freeze(v, s, seed)),
    "shuffled": ((0.25, 0.5, 1.0), lambda v, s, seed, other: deg.shuffle_frames(v, s, seed)),
    "colour_drift": ((0.2, 0.4, 0.6), lambda v, s, seed, other: deg.colour_drift(v, s, seed)),
    "identity_change": (
        (0.75, 0.5, 0.25),
        lambda v, s, seed, other: deg.identity_change(v, other, s, seed),
    ),
    "frozen+second_half_noise": (
        (5.0, 15.0, 40.0),
        lambda v, s, seed, other: deg.second_half(deg.freeze(v), deg.gaussian_noise, s, seed),
    ),
}


def _checks() -> tuple[Check, ...]:
    rows = [
        *(
            Check("imaging_quality", d, "down")
            for d in ("noise", "blur", "jpeg", "h264", "blocky_noise")
        ),
        *(Check("aesthetic_quality", d, "down") for d in ("noise", "blur", "h264", "blocky_noise")),
        Check("dynamic_degree", "clean", "one"),
        Check("dynamic_degree", "noise", "one"),  # motion under noise still counts
        Check("dynamic_degree", "frozen(+noise)", "zero"),
        Check("dynamic_degree", "blocky_noise", "zero"),
        Check("motion_smoothness", "shuffled", "down"),
        Check("motion_smoothness", "frame_drops", "down"),
        Check("subject_consistency", "identity_change", "down"),
        Check("subject_consistency", "blocky_noise", "down"),
        Check("background_consistency", "identity_change", "down"),
        Check("background_consistency", "blocky_noise", "down"),
        Check("subject_consistency", "colour_drift", "down"),
        Check("background_consistency", "colour_drift", "down"),
    ]
    for metric in (
        "imaging_quality",
        "aesthetic_quality",
        "subject_consistency",
        "background_consistency",
    ):
        rows += [
            Check(f"drift/{metric}", "frozen+second_half_noise", "up", baseline="frozen"),
            Check(f"drift/{metric}", "frozen", "near_zero"),
        ]
    rows.append(Check("drift/aesthetic_quality", "colour_drift", "up"))
    return tuple(rows)


CHECKS = _checks()


def judge(expect: Expect, baseline: float, values: Sequence[float]) -> bool:
    """Whether the mean scores `values` (one per strength) meet `expect` against `baseline`."""
    if any(math.isnan(v) for v in values) or (expect in ("down", "up") and math.isnan(baseline)):
        return False
    if expect == "down":
        return all(v - baseline < -TOL for v in values)
    if expect == "up":
        return all(v - baseline > TOL for v in values)
    if expect == "zero":
        return all(v == 0.0 for v in values)
    if expect == "one":
        return all(v == 1.0 for v in values)
    if expect == "near_zero":
        return all(abs(v) <= NEAR_ZERO for v in values)
    raise ValueError(f"judge: unknown expectation {expect!r}")


def _key(check: Check, names: dict[str, str]) -> str:
    prefix, _, metric = check.metric.rpartition("/")
    return f"{prefix}/{names[metric]}" if prefix else names[metric]


def run_checks(
    videos: Sequence[torch.Tensor],
    backends: BackendSet,
    fps: float,
    checks: Sequence[Check] = CHECKS,
) -> list[dict[str, object]]:
    """Judge every check whose backend is available in `backends` on clean uint8 `videos`.

    Video i's identity change cuts to video i + 1, so at least two videos are needed. Returns one
    dict per check: metric key, degradation, expect, strengths, baseline name and mean, degraded
    means, pass.
    """
    if len(videos) < 2:
        raise ValueError(f"run_checks: need at least 2 clean videos, got {len(videos)}")
    names = metric_names(backends)
    unavailable = {k for k, v in backends.names().items() if v == "unavailable"}
    roles = {"imaging": "imaging_quality", "aesthetic": "aesthetic_quality", "flow": "dynamic"}
    roles |= {"interpolation": "motion_smoothness", "subject": "subject_consistency"}
    roles |= {"background": "background_consistency"}
    skipped = {metric for role, metric in roles.items() if role in unavailable}
    active = [c for c in checks if not any(s in c.metric for s in skipped)]
    scores: dict[tuple[str, float], list[dict[str, float]]] = {}
    for name in {"clean"} | {c.degradation for c in active} | {c.baseline for c in active}:
        strengths, fn = DEGRADATIONS[name]
        for strength in strengths:
            scores[(name, strength)] = [
                score_video(fn(v, strength, i, videos[(i + 1) % len(videos)]), backends, fps)
                for i, v in enumerate(videos)
            ]

    def mean(name: str, strength: float, key: str) -> float:
        values = [s[key] for s in scores[(name, strength)]]
        return math.fsum(values) / len(values)

    rows = []
    for check in active:
        key = _key(check, names)
        strengths = DEGRADATIONS[check.degradation][0]
        (base_strength,) = DEGRADATIONS[check.baseline][0]
        baseline = mean(check.baseline, base_strength, key)
        values = [mean(check.degradation, s, key) for s in strengths]
        rows.append(
            {
                "metric": key,
                "degradation": check.degradation,
                "expect": check.expect,
                "strengths": list(strengths),
                "baseline": check.baseline,
                "baseline_value": baseline,
                "values": values,
                "pass": judge(check.expect, baseline, values),
            }
        )
    return rows
