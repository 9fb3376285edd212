"""The folder dataset on files made the way users' files are (PyAV, not our own writer).

NTSC 29.97 fps mp4, variable-frame-rate mkv whose nominal rate is not its real one, a WebM
recorded "live" (no duration or frame count in its header, as browsers write them), MPEG-4 Part 2
with B-frames in AVI, a truncated download, absolute paths, and metadata lines that are not
usable. Frame i of a fixture shows i as two flat greys (left: i mod 40, right: i div 40, in steps of
6 from 8), so a decoded frame names its source.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from datamodules.curriculum import CurriculumBatchSampler, LengthCurriculum
from datamodules.video_dataset import VideoFolderDataset, collate_videos
from datamodules.video_io import probe_video, read_video

FPS, SEG, SIZE = 8.0, 4, (32, 32)
MS = Fraction(1, 1000)
# Variable frame rate: irregular gaps (mean 75 ms, 13.3 fps) under a nominal rate of 30 fps.
VFR_PTS_MS = np.concatenate([[0], np.cumsum([33, 100, 50, 117] * 9)])[:36]


def encode(
    path: Path, codec: str, rate: Fraction | int, n: int, pts_ms: np.ndarray | None = None,
    container_options: dict | None = None, codec_options: dict | None = None,
) -> Path:  # fmt: skip
    """Frames 0..n-1 (`frame_image(i)`), through `codec` into `path`'s container."""
    container = av.open(str(path), "w", options=container_options or {})
    stream = container.add_stream(codec, rate=rate, options=codec_options or {})
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    stream.bit_rate = 4_000_000  # MPEG-4 Part 2's default rate blurs the greys that name frames
    if pts_ms is not None:  # explicit, irregular timestamps in milliseconds
        stream.codec_context.time_base = stream.time_base = MS
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(frame_image(i), "rgb24")
        if pts_ms is not None:
            frame.pts, frame.time_base = int(pts_ms[i]), MS
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
    container.close()
    return path


def frame_image(i: int) -> np.ndarray:
    image = np.empty((32, 32, 3), np.uint8)
    image[:, :16], image[:, 16:] = 8 + 6 * (i % 40), 8 + 6 * (i // 40)
    return image


def source_index(frames: torch.Tensor) -> list[int]:
    """Which fixture frame each decoded frame (uint8 [t, 3, h, w] or [-1, 1] float) shows."""
    frames = frames.float() if frames.dtype == torch.uint8 else (frames + 1) * 127.5
    digit = lambda cols: ((frames[..., cols].mean(dim=(1, 2, 3)) - 8) / 6).round().long()  # noqa: E731
    return (digit(slice(2, 14)) + 40 * digit(slice(18, 30))).tolist()


def nearest(times: np.ndarray, count: int) -> list[int]:
    """Source frame with the timestamp nearest to k / FPS (ties: the earlier one)."""
    targets = np.arange(count) / FPS
    return [int(np.argmin(np.abs(times - t))) for t in targets]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("users")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    encode(elsewhere / "ntsc.mp4", "libx264", Fraction(30000, 1001), 75)  # 2.5025 s
    encode(root / "vfr.mkv", "libx264", 30, 36, pts_ms=VFR_PTS_MS)  # 2.616 s, 36 frames
    encode(root / "live.webm", "libvpx-vp9", 25, 50, container_options={"live": "1"})  # 2.0 s
    encode(root / "bframes.avi", "mpeg4", 15, 30, codec_options={"bf": "2"})  # 2.0 s
    options = {"movflags": "faststart"}  # index first, as for streaming: a cut file still opens
    data = encode(root / "full.mp4", "libx264", 30, 120, container_options=options).read_bytes()
    # An interrupted download: 67 of 120 frames' packets remain, the last ones undecodable.
    (root / "truncated.mp4").write_bytes(data[: len(data) * 4 // 5])
    lines = [
        json.dumps({"path": str(elsewhere / "ntsc.mp4"), "caption": "ntsc, absolute path"}),
        json.dumps({"path": "vfr.mkv", "caption": "variable frame rate"}),
        json.dumps({"path": "live.webm", "caption": "browser recording"}),
        json.dumps({"path": "bframes.avi", "caption": "mpeg-4 part 2 with b-frames"}),
        json.dumps({"path": "truncated.mp4", "caption": "cut short"}),
        json.dumps({"path": "full.mp4"}),  # line 6: no caption
        json.dumps(["full.mp4", "a list, not an object"]),  # line 7
        "",
        '{"path": "full.mp4", "caption": ',  # line 9: invalid JSON
    ]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def dataset(folder: Path) -> tuple[VideoFolderDataset, list[str]]:
    with pytest.warns(UserWarning) as record:
        data = VideoFolderDataset(folder, "train", SEG, FPS, SIZE)
    return data, [str(w.message) for w in record]


def test_usable_files_are_kept_with_lengths_from_their_real_duration(
    dataset: tuple[VideoFolderDataset, list[str]],
) -> None:
    data, _ = dataset
    names = [p.name for p in data.paths]
    assert names == ["ntsc.mp4", "vfr.mkv", "live.webm", "bframes.avi"]
    assert data.paths[0].is_absolute() and data.paths[0].parent.name.startswith("elsewhere")
    # floor(duration * 8) // 4: 2.5025 s -> 20 frames; VFR 2.616 s -> 20; 2.0 s -> 16.
    assert data.lengths == [5, 5, 4, 4]
    assert data.captions[0] == "ntsc, absolute path"


def test_bad_files_and_lines_are_skipped_named_and_counted(
    folder: Path, dataset: tuple[VideoFolderDataset, list[str]]
) -> None:
    data, messages = dataset
    metadata = folder / "metadata.jsonl"
    for line, what in ((6, "caption"), (7, "JSON object"), (9, "invalid JSON")):
        hits = [m for m in messages if f"{metadata}, line {line}" in m]
        assert len(hits) == 1 and what in hits[0], (line, messages)
    truncated = [m for m in messages if "truncated.mp4" in m]
    assert len(truncated) == 1 and "truncated.mp4 is truncated" in truncated[0]
    assert data.num_skipped == 4
    assert set(data.skipped) == {f"{metadata}:{n}" for n in (6, 7, 9)} | {
        str(folder / "truncated.mp4")
    }


def test_every_item_has_its_probed_length_and_the_frames_nearest_in_time(
    dataset: tuple[VideoFolderDataset, list[str]],
) -> None:
    data, _ = dataset
    ntsc = np.arange(75) * 1001 / 30000
    expected = [
        nearest(ntsc, 20),
        nearest(VFR_PTS_MS / 1000, 20),
        nearest(np.arange(50) / 25, 16),
        nearest(np.arange(30) / 15, 16),
    ]
    for i, want in enumerate(expected):
        item = data[i]
        assert item is not None and item["num_segments"] == data.lengths[i]
        video = item["video"]
        assert tuple(video.shape) == (data.lengths[i], SEG, 3, *SIZE)
        assert source_index(video.flatten(0, 1)) == want, data.paths[i].name


def test_vfr_probe_reports_real_duration_not_count_over_nominal_rate(folder: Path) -> None:
    probe = probe_video(folder / "vfr.mkv")
    assert (probe.frames, probe.fps) == (36, 30.0)
    assert probe.duration == pytest.approx(2.616)  # last timestamp + one 1/30 s frame
    frames = read_video(folder / "vfr.mkv", fps=FPS)
    assert len(frames) == 20 and source_index(frames) == nearest(VFR_PTS_MS / 1000, 20)


def test_curriculum_batches_hold_equal_lengths(
    dataset: tuple[VideoFolderDataset, list[str]],
) -> None:
    data, _ = dataset
    sampler = CurriculumBatchSampler(data.lengths, 2, LengthCurriculum(start_segments=5))
    for indices in list(sampler):
        batch = collate_videos([data[i] for i in indices])
        assert batch is not None
        assert batch["num_segments"].tolist() == [data.lengths[i] for i in indices]
        assert len(set(batch["num_segments"].tolist())) == 1


def test_video_shorter_than_probed_is_skipped_at_decode(tmp_path: Path) -> None:
    """The file changed after probing (decoded < probed): skipped, never a shorter item."""
    encode(tmp_path / "a.webm", "libvpx-vp9", 25, 50)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"path": "a.webm", "caption": "a"}))
    data = VideoFolderDataset(tmp_path, "train", SEG, FPS, SIZE)
    assert data.lengths == [4]
    encode(tmp_path / "a.webm", "libvpx-vp9", 25, 30)  # now 1.2 s: 9 frames, 2 segments
    with pytest.warns(UserWarning, match="a.webm"):
        assert data[0] is None
    assert data.num_skipped == 1
    with pytest.raises(RuntimeError, match=r"a\.webm"):
        read_video(tmp_path / "a.webm", fps=FPS, num_frames=16)
