"""benchmarks/motion_diagnosis.py: its figures mean what they say on a model whose answer is known."""

import math

import torch

from benchmarks.motion_diagnosis import TIMES, diagnose
from datamodules.synthetic import held_out_videos
from tests.helpers.tiny import tiny_module


def test_diagnosis_of_an_untrained_model_and_the_trivial_predictors(one_thread: None) -> None:
    model = tiny_module(sample_steps=2)  # zero-initialised head: v = 0, so x~ = x_t exactly
    videos = held_out_videos(2, 3, 2, (16, 16), seed=5)
    out = diagnose(model, videos, segment_frames=2, many_steps=4)
    assert out["targets"] == 2 * 2  # segments 1 and 2 of each video
    psnr = [r["psnr"] for r in out["one_step"]]
    assert [r["t"] for r in out["one_step"]] == list(TIMES)
    assert psnr == sorted(psnr)  # x~ = x_t moves from noise to the data as t grows
    assert out["one_step"][-1]["explained_moving"] > 0.9 > out["one_step"][0]["explained_moving"]
    # With v = 0 the estimate ignores the history: ablating it changes nothing.
    ablation = out["ablation_t0"]
    assert math.isclose(ablation["1x_frames_all_last"], ablation["full"], abs_tol=1e-4)
    # Moving the last frame along the measured flow beats repeating it on moving scenes.
    assert out["flow_extrapolation_psnr"] > out["copy_last_pixel_psnr"]
    assert len(out["by_frame_ahead"]["copy_last"]) == 2 and out["token_px"] == 4
    copy = out["by_frame_ahead"]["copy_last"]
    assert copy[0] > copy[1]  # the further ahead, the more copying loses
    assert set(out["sampled_psnr"]) == {2, 4} and torch.isfinite(torch.tensor(psnr)).all()
    # With v = 0 a sample stays the noise it started from: it changes from frame to frame far
    # more than the truth, which moves by a pixel or so per frame.
    change = out["frame_change"]
    assert all(len(c) == 2 for c in change.values())
    assert min(change["sampled"]) > 5 * max(change["truth"]) > 0
    assert min(change["estimate"]) > 5 * max(change["truth"])
