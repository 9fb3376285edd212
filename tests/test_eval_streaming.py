"""Chunked scoring: same numbers as whole-video scoring, same frames as `read_video`, and peak
memory that does not grow with frame count or resolution beyond one chunk."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from datamodules.synthetic import render_video
from datamodules.video_io import read_video, write_video
from eval.backends.registry import FOOTAGE_SPECS, build_backends
from eval.per_frame import compute_per_frame_stream
from eval.real_clips import load_clip_folder
from eval.video_scores import score_video, scores_from_outputs
from eval.video_stream import iter_video_chunks

pytestmark = pytest.mark.usefixtures("one_thread")


def test_chunked_scores_equal_whole_video_scores() -> None:
    video = render_video(500, 13, (32, 32))[0]  # odd length: a trailing unpaired frame
    backends = build_backends({"aesthetic": "colorfulness", "subject": "pixel"})
    whole = score_video(video, backends, fps=16)  # stride 2: flow pairs straddle chunks
    # One frame per batch inside uneven chunks: every carried-over pair is exercised.
    out = compute_per_frame_stream(video.split(3), backends, fps=16, max_pixels=32 * 32)
    chunked = scores_from_outputs(out, backends)
    assert out.num_frames == 13 and out.flow_pairs.numel() == 6 and out.smooth_errors.numel() == 6
    for key, value in whole.items():
        assert chunked[key] == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), key
    with pytest.raises(ValueError, match="differs"):
        compute_per_frame_stream([video[:2], video[:2, :, :16]], backends, fps=8)


def test_stream_decode_matches_read_video(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    write_video(path, render_video(501, 20, (32, 48))[0], fps=10)
    for kwargs in ({}, {"fps": 4.0}, {"fps": 25.0, "size": (24, 24)}):
        chunks = list(iter_video_chunks(path, max_pixels=5 * 32 * 48, **kwargs))
        assert all(len(c) <= 5 for c in chunks)
        assert torch.equal(torch.cat(chunks), read_video(path, **kwargs)), kwargs
    first = torch.cat(list(iter_video_chunks(path, fps=4.0, max_frames=3)))
    assert torch.equal(first, read_video(path, fps=4.0)[:3])
    with pytest.raises(ValueError, match="fps must be positive"):
        next(iter_video_chunks(path, fps=0))


def test_clip_folder_loads_the_first_frames_and_names_a_short_clip(tmp_path: Path) -> None:
    for seed, frames in ((500, 12), (501, 10)):
        write_video(tmp_path / f"{seed}.mp4", render_video(seed, frames, (32, 48))[0], fps=8)
    clips = load_clip_folder(tmp_path, frames=10, size=(24, 32), fps=8)
    assert [tuple(c.shape) for c in clips] == [(10, 3, 24, 32)] * 2
    assert torch.equal(clips[0], read_video(tmp_path / "500.mp4", fps=8, size=(24, 32))[:10])
    with pytest.raises(ValueError, match="501.mp4 gives 10 frames"):
        load_clip_folder(tmp_path, frames=11, size=(24, 32), fps=8)


def _peak_mib() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux >= 4.0)


def _frames(count: int, height: int, width: int) -> Iterator[torch.Tensor]:
    """A textured pattern panning right, made 4 frames at a time (never one video tensor)."""
    ys = torch.arange(height).view(-1, 1)
    xs = torch.arange(width + 3 * count).view(1, -1)
    texture = torch.stack([(xs * 7 + ys * 13) % 251, (xs * ys) % 241, (xs + 2 * ys) % 256])
    for start in range(0, count, 4):
        chunk = [texture[..., 3 * t : 3 * t + width] for t in range(start, min(count, start + 4))]
        yield torch.stack(chunk).to(torch.uint8)


def test_peak_memory_does_not_grow_with_frames_or_resolution() -> None:
    try:
        _reset_peak()
    except OSError:
        pytest.skip("peak RSS cannot be reset here (/proc/self/clear_refs not writable)")
    backends = build_backends(defaults=FOOTAGE_SPECS)  # python -m eval's real-footage defaults
    budget = 4 * 96 * 128  # pixels per accumulator batch: 4 frames of the small size

    def growth(count: int, height: int, width: int) -> float:
        compute_per_frame_stream(_frames(2, height, width), backends, 8, budget)  # warm caches
        _reset_peak()
        base = _peak_mib()
        out = compute_per_frame_stream(_frames(count, height, width), backends, 8, budget)
        assert out.num_frames == count and not math.isnan(float(out.imaging.mean()))
        return _peak_mib() - base

    small = growth(8, 96, 128)
    longer = growth(48, 96, 128)  # 6x the frames
    larger = growth(8, 384, 512)  # 16x the pixels per frame (one frame per batch)
    # Scoring everything at once would add ~10 MiB per extra 96x128 frame (NIQE alone) and
    # ~0.6 GiB for the 384x512 video; chunked, only one batch's intermediates are alive.
    assert longer - small < 16, (small, longer)
    assert larger - small < 96, (small, larger)
