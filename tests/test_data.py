"""Tests for datamodules/: PyAV I/O, the synthetic generator, the folder dataset and the DataModule."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.synthetic import generate_dataset, held_out_videos, render_video
from datamodules.video_datamodule import VideoDataModule
from datamodules.video_dataset import VideoFolderDataset, collate_videos
from datamodules.video_io import as_stored, probe_video, read_video, write_video

SEG = 8
SIZE = (32, 32)


def _write_synthetic(path: Path, seed: int, num_frames: int, size: tuple[int, int] = SIZE) -> str:
    frames, caption = render_video(seed, num_frames, size)
    write_video(path, frames, fps=8.0)
    return caption


def _write_metadata(root: Path, entries: list[dict[str, str]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))


@pytest.mark.parametrize("size", [(32, 32), (31, 45), (2, 2)])
def test_write_read_roundtrip_keeps_frame_count_and_size(tmp_path: Path, size: tuple) -> None:
    frames, _ = render_video(3, 13, size)
    path = tmp_path / "nested" / "dir" / "clip.mp4"
    write_video(path, frames, fps=8.0)
    decoded = read_video(path)
    assert decoded.dtype == torch.uint8
    assert tuple(decoded.shape) == (13, 3, *size)
    assert probe_video(path) == (13, 8.0, 13 / 8.0)  # frames, fps, duration
    if size[0] >= 8:  # high-quality encode: decoded pixels stay close to the originals
        assert (decoded.float() - frames.float()).abs().mean() < 8.0


def test_synthetic_dataset_decodes_with_metadata_lengths_and_captions(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "d", 3, 2, 1, 3, SEG, 8.0, SIZE, seed=1)
    entries = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert [e["split"] for e in entries] == ["train"] * 3 + ["val"] * 2
    for entry in entries:
        video = read_video(root / entry["path"])
        assert video.shape[1:] == (3, *SIZE)
        segments, remainder = divmod(video.shape[0], SEG)
        assert 1 <= segments <= 3 and 0 <= remainder < SEG
        assert probe_video(root / entry["path"])[0] == video.shape[0]
        assert " bounce past " in entry["caption"]
    dataset = VideoFolderDataset(root, "val", SEG, 8.0, SIZE)
    item = dataset[0]
    assert item is not None
    assert item["caption"] == entries[3]["caption"]
    assert item["name"] == Path(entries[3]["path"]).stem


def test_render_objects_visible_and_camera_pans() -> None:
    frames, caption = render_video(5, 16, SIZE)
    assert tuple(frames.shape) == (16, 3, *SIZE)
    assert caption.count(" a ") + caption.count(" an ") + 1 >= 2  # at least two objects named
    # The pan moves the background, so consecutive frames differ everywhere-ish, not just at objects.
    changed = (frames[1:].float() - frames[:-1].float()).abs().sum(1) > 0
    assert changed.float().mean() > 0.3
    # Saturated object colours must cover a visible area (radius >= 12% of the frame).
    saturation = frames.float().amax(1) - frames.float().amin(1)
    assert (saturation[0] > 150).sum() >= 20


def test_segments_drop_tail_remainder(tmp_path: Path) -> None:
    _write_synthetic(tmp_path / "v.mp4", 0, 3 * SEG + 5)
    _write_metadata(tmp_path, [{"path": "v.mp4", "caption": "c"}])
    dataset = VideoFolderDataset(tmp_path, "train", SEG, None, SIZE)  # no split field -> train
    assert dataset.lengths == [3]
    item = dataset[0]
    assert item is not None
    assert item["num_segments"] == 3
    assert tuple(item["video"].shape) == (3, SEG, 3, *SIZE)
    assert item["video"].dtype == torch.float32
    assert -1.0 <= item["video"].min() and item["video"].max() <= 1.0
    assert torch.equal(item["image"], item["video"][0, 0])


def test_fps_resampling_halves_frame_count(tmp_path: Path) -> None:
    frames = torch.arange(24, dtype=torch.uint8).mul(10).view(24, 1, 1, 1).expand(24, 3, 16, 16)
    write_video(tmp_path / "ramp.mp4", frames.contiguous(), fps=8.0)
    half = read_video(tmp_path / "ramp.mp4", fps=4.0)
    assert half.shape[0] == 12
    # Nearest-timestamp picking keeps every other frame: 0, 2, 4, ... (levels 0, 20, 40, ...).
    levels = half[:, 0, 8, 8].float()
    assert torch.allclose(levels, torch.arange(12).float() * 20, atol=3)
    assert read_video(tmp_path / "ramp.mp4", fps=16.0).shape[0] == 48


def test_resize_and_centre_crop_to_configured_size(tmp_path: Path) -> None:
    frames = torch.zeros(4, 3, 24, 48, dtype=torch.uint8)
    frames[:, 0, :, 12:36] = 255  # red centre band survives the centre crop, blue borders do not
    frames[:, 2, :, :12] = 255
    frames[:, 2, :, 36:] = 255
    write_video(tmp_path / "wide.mp4", frames, fps=8.0)
    out = read_video(tmp_path / "wide.mp4", size=(16, 16))
    assert tuple(out.shape) == (4, 3, 16, 16)
    assert out[:, 0].float().mean() > 200 and out[:, 2].float().mean() < 40


def test_generator_is_deterministic(tmp_path: Path) -> None:
    args = dict(num_train=2, num_val=1, min_segments=1, max_segments=2, segment_frames=SEG)
    a = generate_dataset(tmp_path / "a", **args, fps=8.0, size=SIZE, seed=7)
    b = generate_dataset(tmp_path / "b", **args, fps=8.0, size=SIZE, seed=7)
    c = generate_dataset(tmp_path / "c", **args, fps=8.0, size=SIZE, seed=8)
    meta_a = (a / "metadata.jsonl").read_bytes()
    assert meta_a == (b / "metadata.jsonl").read_bytes()
    assert meta_a != (c / "metadata.jsonl").read_bytes()
    assert torch.equal(render_video(11, 9, SIZE)[0], render_video(11, 9, SIZE)[0])
    for entry in map(json.loads, meta_a.decode().splitlines()):
        # Rendering is exact, but libx264 in this PyAV build is not always bit-reproducible, so
        # decoded frames are compared with a tolerance far below any content difference.
        frames_a, frames_b = read_video(a / entry["path"]), read_video(b / entry["path"])
        assert frames_a.shape == frames_b.shape
        assert (frames_a.float() - frames_b.float()).abs().mean() < 3.0


def test_generator_reuses_then_regenerates_on_new_args(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path, 2, 1, 1, 2, SEG, 8.0, SIZE, seed=0)
    stamp = (root / "metadata.jsonl").stat().st_mtime_ns
    generate_dataset(tmp_path, 2, 1, 1, 2, SEG, 8.0, SIZE, seed=0)
    assert (root / "metadata.jsonl").stat().st_mtime_ns == stamp  # reused, not rewritten
    generate_dataset(tmp_path, 3, 1, 1, 2, SEG, 8.0, SIZE, seed=0)
    assert len((root / "metadata.jsonl").read_text().splitlines()) == 4
    assert json.loads((root / ".synthetic.json").read_text())["num_train"] == 3


def test_concurrent_generators_render_a_shared_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs started together on one data_dir (a parallel study): one renders, the other waits
    and reuses it, instead of deleting and rewriting the videos the first is about to read."""
    import datamodules.synthetic.dataset as synthetic

    written: list[str] = []

    def slow_write(path: Path, frames: torch.Tensor, fps: float) -> None:
        written.append(Path(path).name)
        time.sleep(0.05)  # the two generators overlap for the whole render
        write_video(path, frames, fps)

    monkeypatch.setattr(synthetic, "write_video", slow_write)
    threads = [
        threading.Thread(target=generate_dataset, args=(tmp_path, 3, 1, 1, 2, SEG, 8.0, SIZE, 0))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(written) == sorted(set(written)) and len(written) == 4
    assert len(VideoFolderDataset(tmp_path, "train", SEG, 8.0, SIZE)) == 3


def test_generator_refuses_to_overwrite_foreign_metadata(tmp_path: Path) -> None:
    _write_metadata(tmp_path, [{"path": "mine.mp4", "caption": "real data"}])
    with pytest.raises(FileExistsError, match="metadata.jsonl"):
        generate_dataset(tmp_path, 1, 1, 1, 1, SEG, 8.0, SIZE, seed=0)


def test_corrupt_and_short_videos_are_skipped_and_counted(tmp_path: Path) -> None:
    _write_synthetic(tmp_path / "good.mp4", 0, 2 * SEG)
    _write_synthetic(tmp_path / "short.mp4", 1, SEG - 3)
    rng = np.random.default_rng(0)
    (tmp_path / "corrupt.mp4").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    names = ["good", "short", "corrupt"]
    _write_metadata(tmp_path, [{"path": f"{n}.mp4", "caption": n, "split": "train"} for n in names])
    with pytest.warns(UserWarning) as record:
        dataset = VideoFolderDataset(tmp_path, "train", SEG, 8.0, SIZE)
    messages = " ".join(str(w.message) for w in record)
    assert "short.mp4" in messages and "corrupt.mp4" in messages
    assert dataset.num_skipped == 2
    assert set(dataset.skipped) == {str(tmp_path / "short.mp4"), str(tmp_path / "corrupt.mp4")}
    assert len(dataset) == 1 and dataset.lengths == [2]


def test_file_corrupted_after_probe_returns_none(tmp_path: Path) -> None:
    _write_synthetic(tmp_path / "a.mp4", 0, SEG)
    _write_synthetic(tmp_path / "b.mp4", 1, SEG)
    _write_metadata(tmp_path, [{"path": p, "caption": p} for p in ("a.mp4", "b.mp4")])
    dataset = VideoFolderDataset(tmp_path, "train", SEG, None, SIZE)
    (tmp_path / "b.mp4").write_bytes(b"\x00" * 512)
    with pytest.warns(UserWarning, match="b.mp4"):
        assert dataset[1] is None
    assert dataset.num_skipped == 1
    batch = collate_videos([dataset[0], None])
    assert batch is not None and batch["name"] == ["a"]
    assert collate_videos([None, None]) is None


def test_missing_data_dir_error_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        VideoFolderDataset(missing, "train", SEG, None, SIZE)


def test_empty_metadata_error_names_file(tmp_path: Path) -> None:
    (tmp_path / "metadata.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=str(tmp_path / "metadata.jsonl")):
        VideoFolderDataset(tmp_path, "train", SEG, None, SIZE)


def test_malformed_metadata_line_is_skipped_naming_file_and_line(tmp_path: Path) -> None:
    _write_synthetic(tmp_path / "a.mp4", 0, SEG)
    (tmp_path / "metadata.jsonl").write_text('{"path": "a.mp4", "caption": "x"}\n{oops\n')
    with pytest.warns(UserWarning, match=r"metadata\.jsonl, line 2: invalid JSON"):
        dataset = VideoFolderDataset(tmp_path, "train", SEG, None, SIZE)
    assert len(dataset) == 1 and set(dataset.skipped) == {f"{tmp_path / 'metadata.jsonl'}:2"}


def test_collate_pads_segments_and_reports_counts() -> None:
    def item(segments: int, name: str) -> dict:
        video = torch.ones(segments, SEG, 3, 4, 4)
        return {
            "video": video,
            "image": video[0, 0],
            "caption": name,
            "num_segments": segments,
            "name": name,
        }

    batch = collate_videos([item(1, "a"), None, item(3, "b")])
    assert batch is not None
    assert tuple(batch["video"].shape) == (2, 3, SEG, 3, 4, 4)
    assert batch["num_segments"].tolist() == [1, 3]
    assert batch["num_segments"].dtype == torch.long
    assert batch["video"][0, 1:].abs().sum() == 0 and batch["video"][0, 0].min() == 1
    assert tuple(batch["image"].shape) == (2, 3, 4, 4)
    assert batch["caption"] == ["a", "b"] and batch["name"] == ["a", "b"]


def test_datamodule_prepare_setup_and_batch_shapes(tmp_path: Path) -> None:
    dm = VideoDataModule(
        data_dir=str(tmp_path / "synth"),
        batch_size=3,
        num_train_videos=4,
        num_val_videos=3,
        max_segments=3,
        num_predict_videos=2,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_skipped == 0
    assert len(dm.train_set) == 4 and len(dm.val_set) == 3
    batch = next(iter(dm.train_dataloader()))
    longest = int(batch["num_segments"].max())
    assert tuple(batch["video"].shape) == (3, longest, SEG, 3, *SIZE)
    assert tuple(batch["image"].shape) == (3, 3, *SIZE)
    assert len(batch["caption"]) == 3 and all(isinstance(c, str) for c in batch["caption"])
    assert longest == max(
        dm.train_set.lengths[i] for i in range(4) if dm.train_set.paths[i].stem in batch["name"]
    )
    order = [b["name"] for b in dm.train_dataloader()]
    assert order == [b["name"] for b in dm.train_dataloader()]  # seeded shuffle is reproducible
    predict = list(dm.predict_dataloader())
    assert len(predict) == 2 and all(len(b["name"]) == 1 for b in predict)


def test_predict_continuation_takes_videos_long_enough_for_the_prefix(tmp_path: Path) -> None:
    """predict_prefix_segments=2: batches carry prefix_segments; the predict set is the first
    val videos with >= 2 segments, the shorter ones before them named in a warning and counted."""
    entries = []
    for index, segments in enumerate([1, 3, 1, 2, 4]):  # val lengths in segments of SEG frames
        _write_synthetic(tmp_path / f"v{index}.mp4", index, segments * SEG)
        entries.append({"path": f"v{index}.mp4", "caption": "c", "split": "val"})
    _write_metadata(tmp_path, entries)
    dm = VideoDataModule(
        data_dir=str(tmp_path), source="folder", segment_frames=SEG, num_predict_videos=2,
        predict_prefix_segments=2,
    )  # fmt: skip
    dm.setup("predict")
    with pytest.warns(UserWarning, match=r"v0.mp4 has 1 segments, fewer than") as caught:
        batches = list(dm.predict_dataloader())
    assert [b["name"] for b in batches] == [["v1"], ["v3"]]
    assert all(b["prefix_segments"] == 2 for b in batches)
    assert [Path(p).name for p in dm.predict_skipped] == ["v0.mp4", "v2.mp4"]
    assert sum("fewer than predict_prefix_segments" in str(w.message) for w in caught) == 2
    dm.predict_prefix_segments = 5
    with pytest.raises(ValueError, match="no val video has predict_prefix_segments=5"):
        with pytest.warns(UserWarning):
            dm.predict_dataloader()


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [({"source": "web"}, "web"), ({"fps": 0.0}, "fps"), ({"max_segments": 0}, "max_segments")],
)
def test_datamodule_rejects_bad_arguments(kwargs: dict, text: str) -> None:
    with pytest.raises(ValueError, match=text):
        VideoDataModule(**kwargs)


def test_datamodule_counts_a_skipped_metadata_line_once(tmp_path: Path) -> None:
    """Both splits read the whole metadata file; its bad line is one skipped entry, not two."""
    _write_synthetic(tmp_path / "t.mp4", 0, SEG)
    _write_synthetic(tmp_path / "v.mp4", 1, SEG)
    lines = [
        json.dumps({"path": "t.mp4", "caption": "t"}),
        json.dumps({"path": "v.mp4", "caption": "v", "split": "val"}),
        json.dumps({"path": "v.mp4", "split": "val"}),  # no caption
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    dm = VideoDataModule(data_dir=str(tmp_path), source="folder", segment_frames=SEG)
    with pytest.warns(UserWarning, match="line 3"):
        dm.setup("fit")
    assert len(dm.train_set) == 1 and len(dm.val_set) == 1
    assert dm.num_skipped == 1


def test_keep_decoded_reads_each_video_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datamodules.video_dataset as vd

    root = generate_dataset(tmp_path, 2, 0, 1, 2, 2, 8.0, (16, 16), seed=0)
    reads: list[Path] = []
    real = vd.read_video
    monkeypatch.setattr(vd, "read_video", lambda path, *a: reads.append(path) or real(path, *a))
    kept = vd.VideoFolderDataset(root, "train", 2, 8.0, (16, 16), keep_decoded=True)
    plain = vd.VideoFolderDataset(root, "train", 2, 8.0, (16, 16))
    first = kept[1]
    first["video"].add_(1.0)  # what a caller does to an item must not reach the kept frames
    assert torch.equal(kept[1]["video"], plain[1]["video"])
    assert len(reads) == 2  # kept: one read of video 1; plain: one read


def test_the_mp4_round_trip_is_reproducible() -> None:
    """One render stored 100 times gives one video. With x264's SIMD code, a few calls in a
    hundred gave another (PyAV 18.1); `write_video` encodes with its C code and converts pixel
    formats on one thread."""
    frames, _ = render_video(3, 16, (32, 32))
    first = as_stored(frames, 8.0)
    differ = sum(not torch.equal(first, as_stored(frames, 8.0)) for _ in range(99))
    assert differ == 0, f"{differ} of 99 round trips differ from the first"


def test_rendered_evaluation_videos_look_like_the_stored_training_videos(tmp_path: Path) -> None:
    """Held-out videos rendered in memory go through the mp4 round trip that every stored
    training video went through: exactly what the dataset would read, not the crisper render."""
    frames, _ = render_video(11, 8, (32, 32))
    write_video(tmp_path / "clip.mp4", frames, 8.0)
    stored = as_stored(frames, 8.0)
    assert torch.equal(stored, read_video(tmp_path / "clip.mp4"))
    error = (stored.float() - frames.float()).square().mean()
    assert 1.0 < float(error) < 200.0  # changed (chroma, quantisation), still the same scene
    # held_out_videos' first render seed (its own stream), stored, is the video it returns.
    seed = int(np.random.default_rng([0, 7919]).integers(2**31, size=1)[0])
    raw, _ = render_video(seed, 8, (32, 32))
    video = held_out_videos(1, 2, 4, (32, 32))[0]["video"].flatten(0, 1)
    assert torch.equal(video, as_stored(raw, 8.0).float().div(127.5).sub(1.0))
