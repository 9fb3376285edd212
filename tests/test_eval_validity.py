"""Metric validity core: degradations, the judge, NIQE against its reference, verified flow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datamodules.synthetic import render_video
from eval import degradations as deg
from eval.backends.niqe import NiqeQuality, load_live_pristine, niqe_distance, patch_features
from eval.backends.registry import ROLES, build_backends
from eval.validity import Check, judge, run_checks
from eval.video_scores import score_video

pytestmark = pytest.mark.usefixtures("one_thread")


def _clean(seed: int = 500, frames: int = 8, size: int = 32) -> torch.Tensor:
    return render_video(seed, frames, (size, size))[0]


def _only(**specs: str) -> dict[str, str]:
    return {role: specs.get(role, "unavailable") for role in ROLES}


def test_degradations_do_what_they_say() -> None:
    video = _clean()
    frozen = deg.freeze(video)
    assert (frozen == video[:1]).all()
    noisy = deg.freeze(video, 15.0)
    assert 10 < (noisy.float() - frozen.float()).std() < 16 and not (noisy[0] == noisy[1]).all()
    shuffled = deg.shuffle_frames(video, 1.0)
    assert (shuffled[0] == video[1]).all() and (shuffled[1] == video[0]).all()
    assert (deg.shuffle_frames(video, 0.0) == video).all()
    blocky = deg.blocky_noise(video, 4)
    assert (blocky[:, :, :4, :4] == blocky[:, :, :1, :1]).all()  # one colour per 4x4 block
    assert not (blocky[0] == blocky[1]).all()  # redrawn every frame
    drift = deg.colour_drift(video, 0.5)
    assert (drift[0] == video[0]).all() and not (drift[-1] == video[-1]).all()
    other = _clean(seed=501)
    changed = deg.identity_change(video, other, at=0.5)
    assert (changed[:4] == video[:4]).all() and (changed[4:] == other[4:]).all()
    half = deg.second_half(video, deg.gaussian_noise, 15.0)
    assert (half[:4] == video[:4]).all() and not (half[4:] == video[4:]).all()
    assert (deg.gaussian_blur(video, 0.0) == video).all()
    with pytest.raises(ValueError, match="quality"):
        deg.jpeg(video, 0)
    coded = deg.h264(video, 43)
    assert torch.equal(coded, deg.h264(video, 43))  # single-threaded x264: reproducible
    assert (
        5
        < (coded.float() - video.float()).abs().mean()
        < (deg.h264(video, 51).float() - video.float()).abs().mean()
    )
    held = deg.drop_frames(video, 0.5, seed=3)
    repeats = [t for t in range(1, 8) if torch.equal(held[t], held[t - 1])]
    assert len(repeats) == 4 and torch.equal(held[0], video[0])  # round(0.5 * 7) frames held
    assert all(any(torch.equal(f, v) for v in video) for f in held)


def test_judge_directions() -> None:
    assert judge("down", 0.5, [0.4, 0.3]) and not judge("down", 0.5, [0.4, 0.5])
    assert not judge("down", 0.5, [0.4995])  # within TOL is no move
    assert judge("up", 0.1, [0.2]) and not judge("up", 0.1, [0.05])
    assert judge("zero", 1.0, [0.0, 0.0]) and not judge("zero", 1.0, [0.0, 1 / 3])
    assert judge("one", math.nan, [1.0]) and not judge("one", 1.0, [0.5])
    assert judge("near_zero", 0.3, [0.004]) and not judge("near_zero", 0.0, [0.02])
    assert not judge("down", 0.5, [math.nan])


def _reference_image(size: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    base = np.kron(rng.random((size // 4, size // 4)), np.ones((4, 4))) * 200
    return torch.from_numpy(np.clip(np.round(base + rng.normal(0, 8, (size, size)) + 20), 0, 255))


@pytest.mark.parametrize(
    ("size", "block", "seed", "expected"),
    # basicsr 1.4.2 `metrics/niqe.py: niqe()` (the MATLAB port) on the same images.
    [(96, 16, 0, 9.263667291025355), (192, 96, 1, 49.566501936083355)],
)
def test_niqe_matches_reference(size: int, block: int, seed: int, expected: float) -> None:
    mu, cov = load_live_pristine()
    feats = patch_features(_reference_image(size, seed)[None], block)
    assert float(niqe_distance(feats, mu, cov)[0]) == pytest.approx(expected, rel=2e-5)


def test_niqe_synthetic_ranks_clean_above_degraded_and_niqe_live_does_not() -> None:
    videos = [_clean(500), _clean(501)]
    synthetic, live = NiqeQuality("synthetic"), NiqeQuality("live")

    def mean(backend: NiqeQuality, fn: object, strength: float) -> float:
        return float(torch.cat([backend.scores(fn(v, strength)) for v in videos]).mean())

    for backend_ok, backend in ((True, synthetic), (False, live)):
        clean = mean(backend, lambda v, s: v, 0)
        worse = [
            mean(backend, deg.gaussian_noise, 15.0) < clean,
            mean(backend, deg.gaussian_blur, 1.5) < clean,
            mean(backend, deg.blocky_noise, 4) < clean,
        ]
        assert all(worse) if backend_ok else not all(worse), (backend.name, worse)
    assert NiqeQuality("synthetic").scores(torch.full((1, 3, 32, 32), 90, dtype=torch.uint8)) == 0


def test_verified_flow_counts_motion_not_flicker_or_noise() -> None:
    video = _clean(500, frames=16)
    raw = build_backends(_only(flow="opencv_dis"))
    checked = build_backends(_only(flow="opencv_dis_verified"))
    key_raw, key = "dynamic_degree@opencv_dis", "dynamic_degree@opencv_dis_verified"
    assert score_video(video, checked, fps=8)[key] == 1.0  # the renderer's pan + objects move
    flicker = deg.blocky_noise(video, 4)
    assert score_video(flicker, raw, fps=8)[key_raw] == 1.0  # the failure being fixed
    assert score_video(flicker, checked, fps=8)[key] == 0.0
    assert score_video(deg.freeze(video, 40.0), checked, fps=8)[key] == 0.0
    # Not a single flicker pair counts (the pair-level gate: the warp explains < 40% of it).
    fraction = "dynamic_fraction@opencv_dis_verified"
    for patch in (2, 4, 8):
        assert score_video(deg.blocky_noise(video, patch), checked, fps=8)[fraction] == 0.0


def test_on_photographs_niqe_ranks_clean_first_and_verified_flow_sees_motion_under_noise() -> None:
    pytest.importorskip("skimage", reason="the real-image fixture ships in scikit-image's wheel")
    from eval.real_clips import photo_clips

    clips = photo_clips(2, 8, (128, 160))  # a camera panning over two photographs
    live = NiqeQuality("live")

    def mean(fn: object, strength: float) -> float:
        return float(torch.cat([live.scores(fn(v, strength)) for v in clips]).mean())

    clean = mean(lambda v, s: v, 0)
    for fn, strength in ((deg.gaussian_noise, 15), (deg.gaussian_blur, 1.5), (deg.jpeg, 20)):
        assert mean(fn, strength) < clean - 0.02, fn.__name__
    flow = build_backends(_only(flow="opencv_dis_verified"))
    key = "dynamic_degree@opencv_dis_verified"
    for fn, strength, expected in (
        (lambda v, s, i: v, 0, 1.0),
        (deg.gaussian_noise, 15, 1.0),  # real motion under noise still counts
        (deg.gaussian_noise, 40, 1.0),
        (deg.blocky_noise, 4, 0.0),  # flicker does not
        (deg.freeze, 15, 0.0),  # nor noise on a still frame
    ):
        assert all(
            score_video(fn(v, strength, i), flow, 8)[key] == expected for i, v in enumerate(clips)
        ), (fn, strength)


def test_niqe_scores_larger_photographs_at_their_own_resolution() -> None:
    skimage_data = pytest.importorskip("skimage.data", reason="photographs from scikit-image")
    frame = torch.from_numpy(skimage_data.retina()[400:1000, 300:1100].copy())
    video = frame.permute(2, 0, 1)[None].contiguous()  # 600x800: above VBench's 512 cap
    live = NiqeQuality("live")
    clean = float(live.scores(video)[0])
    # Resized to 512 first, the noise is averaged away and rated *above* clean (0.544 vs 0.513).
    assert float(live.scores(deg.gaussian_noise(video, 15.0))[0]) < clean - 0.1
    assert (
        float(NiqeQuality("live", max_side=512).scores(deg.gaussian_noise(video, 15.0))[0]) > clean
    )


def test_run_checks_uses_baselines_and_skips_unavailable_roles() -> None:
    videos = [_clean(500), _clean(501)]
    checks = [
        Check("imaging_quality", "noise", "down"),
        Check("drift/imaging_quality", "frozen+second_half_noise", "up", baseline="frozen"),
        Check("dynamic_degree", "frozen(+noise)", "zero"),
    ]
    rows = run_checks(videos, build_backends(_only(imaging="laplacian")), fps=8, checks=checks)
    assert [r["metric"] for r in rows] == [
        "imaging_quality@laplacian",
        "drift/imaging_quality@laplacian",
    ]  # no flow backend: the dynamic-degree row is not judged
    noise, drift = rows
    assert noise["pass"] is False and all(v > noise["baseline_value"] for v in noise["values"])
    assert drift["baseline"] == "frozen" and drift["baseline_value"] == 0.0
    assert drift["pass"] is True
    with pytest.raises(ValueError, match="at least 2"):
        run_checks(videos[:1], build_backends(_only(imaging="laplacian")), fps=8, checks=checks)
