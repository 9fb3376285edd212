"""VBench formulas, drift and score_video with the weight-free backends (METRICS.md)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from eval.backends.registry import build_backends
from eval.drift import drift_segments, drift_window
from eval.formulas import (
    consistency_score,
    dynamic_degree,
    dynamic_threshold,
    motion_smoothness,
    top5_mean,
)
from eval.video_scores import compute_per_frame, score_keys, score_video, segment_curves

# Weight-free, fit-free backends: these tests check formulas, not networks.
FAST = {"subject": "pixel", "imaging": "laplacian", "flow": "opencv_dis"}


def _texture(h: int = 200, w: int = 300, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 2)
    return cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX)


def _to_video(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _moving(num: int, step: int = 2, order: list[int] | None = None) -> torch.Tensor:
    tex = _texture()
    frames = [tex[20:84, 20 + step * i : 116 + step * i] for i in range(num)]
    return _to_video([frames[i] for i in (order or range(num))])


@pytest.mark.parametrize(("num", "expected"), [(6, 1), (7, 1), (100, 15), (1, 1), (20, 3)])
def test_drift_window(num: int, expected: int) -> None:
    assert drift_window(num) == expected
    first, last = drift_segments(num)
    assert (first.stop, last.start, last.stop) == (expected, num - expected, num)


def test_drift_window_rejects_bad_length() -> None:
    with pytest.raises(ValueError, match="num_frames"):
        drift_window(0)


def test_static_video_is_consistent_and_not_dynamic() -> None:
    video = _moving(1).expand(16, -1, -1, -1).contiguous()
    scores = score_video(video, build_backends(FAST), fps=8)
    assert scores["subject_consistency@pixel"] == pytest.approx(1.0, abs=1e-9)
    assert scores["background_consistency@pixel"] == pytest.approx(1.0, abs=1e-9)
    assert scores["dynamic_degree@opencv_dis"] == 0.0
    assert scores["dynamic_fraction@opencv_dis"] == 0.0
    assert scores["motion_smoothness@opencv_dis"] == pytest.approx(1.0, abs=1e-9)
    assert scores["drift/subject_consistency@pixel"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("shift", [3, 6])
def test_flow_magnitude_matches_translation(shift: int) -> None:
    flow = build_backends(FAST).flow
    tex = _texture()
    first, second = tex[20:148, 20:148], tex[20:148, 20 + shift : 148 + shift]
    assert top5_mean(flow.flow_magnitude(first, second)) == pytest.approx(shift, rel=0.1)


def test_moving_video_is_dynamic() -> None:
    # 64x96 frames: threshold 6 * 64 / 256 = 1.5 px; 3 px per frame is above it.
    scores = score_video(_moving(16, step=3), build_backends(FAST), fps=8)
    assert scores["dynamic_degree@opencv_dis"] == 1.0


def test_smooth_motion_beats_jittered_order() -> None:
    interp = build_backends(FAST).interpolation.interpolate
    order = list(range(20))
    jittered = order.copy()
    for i in range(0, 19, 2):
        jittered[i], jittered[i + 1] = jittered[i + 1], jittered[i]
    smooth = motion_smoothness(_moving(20, order=order), interp)
    jitter = motion_smoothness(_moving(20, order=jittered), interp)
    assert smooth > 0.99
    assert smooth - jitter > 0.03


def test_noise_tail_drifts_and_matching_ends_do_not() -> None:
    backends = build_backends(FAST)
    video = _moving(1).expand(20, -1, -1, -1).contiguous()
    noisy = video.clone()
    gen = torch.Generator().manual_seed(0)
    noisy[-3:] = torch.randint(0, 256, noisy[-3:].shape, generator=gen, dtype=torch.uint8)
    scores = score_video(noisy, backends, fps=8)
    assert scores["drift/background_consistency@pixel"] > 0.5
    assert scores["drift/imaging_quality@laplacian"] > 0.3
    assert scores["start/background_consistency@pixel"] == pytest.approx(1.0, abs=1e-9)
    # Same start and end frames, different middle: drift is exactly zero.
    looped = _moving(20)
    looped[-3:] = looped[:3]
    scores = score_video(looped, backends, fps=8)
    for key in (
        "drift/subject_consistency@pixel",
        "drift/imaging_quality@laplacian",
        "drift/aesthetic_quality@colorfulness",
        "drift/background_consistency@pixel",
    ):
        assert scores[key] == 0.0, key


def test_consistency_anchor_restarts_in_slice() -> None:
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert consistency_score(feats) == pytest.approx(0.25)  # (0 + 0) / 2 and (1 + 0) / 2
    assert consistency_score(feats[1:]) == pytest.approx(1.0)
    assert math.isnan(consistency_score(feats[:1]))


def test_dynamic_degree_count_rule() -> None:
    # T' = 10 frames -> count_needed = round(2.5) = 2 (banker's rounding, as VBench).
    mags = torch.tensor([5.0, 5.0] + [0.0] * 7)
    assert dynamic_degree(mags, threshold=1.0) == 1.0
    assert dynamic_degree(mags[1:], threshold=1.0) == 0.0  # T' = 9: round(2.25) = 2, one moving


def test_dynamic_threshold_scales_with_size_and_low_fps() -> None:
    assert dynamic_threshold(256, 512) == 6.0  # 6 * min(H, W) / 256
    assert dynamic_threshold(256, 512, fps=30) == dynamic_threshold(256, 512, fps=8) == 6.0
    assert dynamic_threshold(256, 512, fps=4) == 12.0  # VBench: x max(1, 8 / fps)
    with pytest.raises(ValueError, match="fps must be positive"):
        dynamic_threshold(32, 32, fps=0)


def test_names_carry_backend_and_unavailable_is_nan() -> None:
    backends = build_backends({**FAST, "aesthetic": "unavailable"})
    scores = score_video(_moving(8), backends, fps=8)
    assert list(scores) == score_keys(backends)
    assert all("@" in key for key in scores)
    assert math.isnan(scores["aesthetic_quality@unavailable"])
    assert math.isnan(scores["drift/aesthetic_quality@unavailable"])
    assert "subject_consistency@pixel" in scores and "imaging_quality@laplacian" in scores


def test_segment_curves_show_where_drift_happens() -> None:
    backends = build_backends(FAST)
    video = _moving(1).expand(16, -1, -1, -1).contiguous()
    video[12:] = 255 - video[12:]
    curves = segment_curves(compute_per_frame(video, backends, fps=8), backends, num_segments=4)
    curve = curves["background_consistency@pixel"]
    assert len(curve) == 4
    assert curve[0] == pytest.approx(1.0, abs=1e-9) and curve[3] < 0.6


def test_bad_input_names_the_value() -> None:
    with pytest.raises(ValueError, match="uint8"):
        score_video(torch.zeros(4, 3, 8, 8), build_backends(FAST), fps=8)
    with pytest.raises(ValueError, match="unknown backend"):
        build_backends({"subject": "nonexistent"})
    with pytest.raises(ValueError, match="fps"):
        score_video(_moving(4), build_backends(FAST), fps=0)
