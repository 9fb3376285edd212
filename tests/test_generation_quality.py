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


# ----------------------------------------------------------------- rollouts, motion and seams
from types import SimpleNamespace  # noqa: E402

from datamodules.synthetic import held_out_videos  # noqa: E402
from eval.generation_quality import rollout_quality  # noqa: E402
from eval.motion import grid_edge, motion_scores  # noqa: E402


class RolloutStub(StubModel):
    """`generate` continuing a prefix with the true video (oracle) or its last prefix frame."""

    codec = SimpleNamespace(spatial_factor=4)
    dit = SimpleNamespace(patch=(1, 2, 2))

    def __init__(self, video: torch.Tensor, frames: int, frozen: bool = False) -> None:
        super().__init__(video, frames)
        self.frozen = frozen

    def generate(
        self, image, captions, num_segments, generator=None, frames_per_segment=None, prefix=None
    ):  # noqa: ANN001
        out = super().generate(image, captions, num_segments, generator, frames_per_segment,
                               prefix)[0]  # fmt: skip
        if self.frozen:
            k = prefix.shape[1]
            out[k:] = out[k - 1 : k]
        return out[None]


def test_grid_edge_is_one_without_a_grid_and_large_with_seams() -> None:
    ramp = torch.arange(32, dtype=torch.uint8).expand(2, 3, 32, 32) * 4  # every step equal
    assert grid_edge(ramp, 8) == pytest.approx(1.0)
    blocks = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    for i in range(4):
        blocks[..., 8 * i : 8 * i + 8] = 60 * i  # flat 8-pixel blocks: edges only on the grid
    blocks = blocks + torch.randint(0, 3, blocks.shape, generator=torch.Generator().manual_seed(0))
    assert grid_edge(blocks.to(torch.uint8), 8) > 50
    assert grid_edge(blocks.to(torch.uint8), 4) < grid_edge(blocks.to(torch.uint8), 8)
    with pytest.raises(ValueError, match="grid"):
        grid_edge(ramp, 32)


def test_motion_scores_see_motion_not_stillness_or_noise() -> None:
    video = held_out_videos(1, 2, 4, (32, 32))[0]["video"]
    frames = to_uint8(video.flatten(0, 1))
    moving = motion_scores(frames, 8)
    still = motion_scores(frames[:1].expand(8, -1, -1, -1).contiguous(), 8)
    noise = torch.randint(0, 256, frames.shape, generator=torch.Generator().manual_seed(0))
    noisy = motion_scores(noise.to(torch.uint8), 8)
    assert moving["flow_share"] > 0.05 and moving["dynamic_fraction"] > 0
    assert still["flow_share"] == 0 and still["dynamic_fraction"] == 0
    assert noisy["flow_share"] < 0.2 * moving["flow_share"]  # redrawn noise is not motion
    assert 0.5 < moving["grid_edge"] < 1.5  # a rendered scene has no 8-pixel grid


def test_rollout_quality_oracle_matches_truth_and_a_frozen_model_the_static_copy() -> None:
    items = held_out_videos(2, 4, 4, (32, 32), seed=3)
    oracle = [rollout_quality(RolloutStub(e["video"], 4), [e], 4, depth=3) for e in items]
    frozen = [rollout_quality(RolloutStub(e["video"], 4, True), [e], 4, depth=3) for e in items]
    for o, f in zip(oracle, frozen, strict=True):
        assert o["psnr_by_depth"] == pytest.approx([100.0] * 3)
        assert f["psnr_by_depth"] == pytest.approx(f["static_by_depth"])
        assert o["flow_share"] == pytest.approx(o["flow_share_truth"]) and o["flow_share"] > 0
        assert f["flow_share"] == 0 and f["dynamic_fraction"] == 0
        assert o["grid_edge"] == pytest.approx(o["grid_edge_truth"])
    assert len(oracle[0]["static_by_depth"]) == 3 and oracle[0]["rollout_videos"] == 1
    # From the true history: the oracle moves as the truth does, the frozen model not at all.
    e = items[0]
    o = rollout_quality(RolloutStub(e["video"], 4), [e], 4, depth=3, true_history=True)
    f = rollout_quality(RolloutStub(e["video"], 4, True), [e], 4, depth=3, true_history=True)
    assert o["true_history_flow_share_by_depth"] == pytest.approx(o["flow_share_by_depth_truth"])
    assert min(o["true_history_flow_share_by_depth"]) > 0
    assert f["true_history_flow_share_by_depth"] == [0.0] * 3
    assert o["true_history_grid_edge_by_depth"] == pytest.approx(o["grid_edge_by_depth_truth"])
    with pytest.raises(ValueError, match="segments"):
        rollout_quality(RolloutStub(items[0]["video"], 4), items, 4, depth=4)  # needs 5


def test_held_out_videos_are_seeded_and_whole() -> None:
    a, b = held_out_videos(2, 3, 4, (32, 32)), held_out_videos(2, 3, 4, (32, 32))
    assert a[0]["video"].shape == (3, 4, 3, 32, 32) and torch.equal(a[1]["video"], b[1]["video"])
    assert not torch.equal(a[0]["video"], a[1]["video"])
    assert torch.equal(a[0]["image"], a[0]["video"][0, 0])


class LoggedStub(RolloutStub):
    """A RolloutStub that records what a callback logs."""

    def __init__(self, video: torch.Tensor, frames: int, frozen: bool = False) -> None:
        super().__init__(video, frames, frozen)
        self.logged: dict[str, float] = {}

    def log(self, key: str, value: float, **kwargs: object) -> None:
        self.logged[key] = value


def test_callback_logs_rollout_quality_beside_the_static_copy_and_the_truth() -> None:
    from callbacks.generation_quality import GenerationQualityCallback

    items = held_out_videos(3, 4, 4, (32, 32), seed=3)
    short = held_out_videos(1, 2, 4, (32, 32), seed=4)  # 2 segments: too short for depth 3
    dm = SimpleNamespace(val_set=[short[0], items[0], items[1]], segment_frames=4)
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, datamodule=dm)
    callback = GenerationQualityCallback(depth=3, num_videos=1)
    logged = {}
    for name, frozen in (("oracle", False), ("frozen", True)):
        module = LoggedStub(items[0]["video"], 4, frozen)
        callback.on_validation_epoch_end(trainer, module)
        logged[name] = module.logged
    oracle, frozen = logged["oracle"], logged["frozen"]
    assert oracle["quality/videos"] == 1  # the 2-segment one passed over, the third not needed
    assert oracle["quality/psnr/d2"] == pytest.approx(100.0)
    assert oracle["quality/margin_over_static"] > 20
    assert frozen["quality/margin_over_static"] == pytest.approx(0.0, abs=1e-6)
    assert frozen["quality/psnr/d3"] == pytest.approx(frozen["quality/static/d3"])
    assert oracle["quality/flow_share"] == pytest.approx(oracle["quality/flow_share_truth"])
    assert oracle["quality/flow_share"] > 0
    assert frozen["quality/flow_share"] == 0 < frozen["quality/flow_share_truth"]
    assert set(oracle) == set(frozen) and "quality/grid_edge_first_truth" in oracle
    dm.val_set = [None, short[0]]
    with (
        pytest.warns(UserWarning, match=r"val_set\[0\] is None; skipped"),
        pytest.warns(UserWarning, match="no held-out video has 4 segments"),
    ):
        callback.on_validation_epoch_end(trainer, LoggedStub(items[0]["video"], 4))
