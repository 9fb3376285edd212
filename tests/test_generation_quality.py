"""eval/generation_quality.py: the figures mean what they say (an oracle scores high, a model that
ignores its inputs scores low), and the benchmark runs on a real checkpoint."""

import math

import pytest
import torch

from eval.generation_quality import _next_segments, generation_quality, psnr
from lightning_modules.codecs import to_uint8


class StubModel(torch.nn.Module):
    """`generate` that returns a fixed video (first `num_segments` segments), or one shifted."""

    def __init__(self, video: torch.Tensor, frames: int, shift: int = 0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # generation_quality reads the device
        self.video, self.frames, self.shift = video, frames, shift
        self.prefixes: list[int] = []

    def generate(
        self, image, captions, num_segments, generator=None, frames_per_segment=None, prefix=None
    ):  # noqa: ANN001
        self.prefixes.append(0 if prefix is None else prefix.shape[1])
        frames = self.video.flatten(0, 1)
        frames = torch.roll(frames, self.shift, dims=0)
        return to_uint8(frames[: num_segments * self.frames])[None]


def example(seed: int, segments: int = 4) -> dict:
    torch.manual_seed(seed)
    video = torch.rand(segments, 4, 3, 16, 16) * 2 - 1
    return {"video": video, "image": video[0, 0], "caption": "a red circle"}


def test_an_oracle_scores_perfectly_and_a_frozen_model_like_copy_last() -> None:
    ex = [example(0), example(1, segments=3)]
    oracle = [StubModel(e["video"], 4) for e in ex]
    scores = [generation_quality(m, [e], 4) for m, e in zip(oracle, ex, strict=True)]
    assert all(s["reference_psnr"] == pytest.approx(100.0) for s in scores)
    assert all(s["next_segment_psnr"] == pytest.approx(100.0) for s in scores)
    assert all(s["next_segment_ssim"] == pytest.approx(1.0, abs=1e-4) for s in scores)
    assert all(s["copy_last_psnr"] < 20 for s in scores)  # random frames: copying is poor
    # Each generate call got the true prefix of whole segments (0 for the reference rollout).
    assert oracle[0].prefixes == [0, 4 * 2, 4 * 3]
    wrong = generation_quality(StubModel(ex[0]["video"], 4, shift=1), [ex[0]], 4)
    assert wrong["next_segment_psnr"] < 20 and wrong["reference_psnr"] < 20


def test_psnr_and_segment_choice() -> None:
    a = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert psnr(a, a + 255) == pytest.approx(0.0)
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255))
    assert _next_segments(1, 2) == [] and _next_segments(2, 2) == [1]
    assert _next_segments(8, 2) == [4, 7] and _next_segments(5, 1) == [4]
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(a, a[:1])
