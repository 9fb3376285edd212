"""A folder of captioned videos, each returned as a chronological stack of whole segments.

Layout: `root/metadata.jsonl` with one JSON object per line,
`{"path": "videos/a.mp4", "caption": "...", "split": "train"}`; `path` is relative to `root` (or
absolute), `split` is optional and entries without it belong to the "train" split.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from datamodules.video_io import probe_video, read_video, resampled_length

__all__ = ["DEFAULT_SPLIT", "VideoFolderDataset", "collate_videos", "read_metadata"]

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
DEFAULT_SPLIT = "train"


def read_metadata(root: Path) -> list[dict[str, str]]:
    """Parse and validate `root/metadata.jsonl`; errors name the file and line."""
    if not root.is_dir():
        raise FileNotFoundError(f"data directory does not exist: {root}")
    metadata = root / METADATA_FILE
    if not metadata.is_file():
        raise FileNotFoundError(f"metadata file not found: {metadata}")
    entries = []
    with metadata.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{metadata}, line {number}: invalid JSON ({err.msg})") from err
            if not isinstance(entry, dict):
                raise ValueError(f"{metadata}, line {number}: expected a JSON object")
            for key in ("path", "caption"):
                if not isinstance(entry.get(key), str):
                    raise ValueError(f"{metadata}, line {number}: missing string field {key!r}")
            split = entry.get("split", DEFAULT_SPLIT)
            if not isinstance(split, str):
                raise ValueError(f"{metadata}, line {number}: 'split' must be a string")
            entries.append({"path": entry["path"], "caption": entry["caption"], "split": split})
    if not entries:
        raise ValueError(f"metadata file is empty: {metadata}")
    return entries


class VideoFolderDataset(Dataset):
    """Captioned videos cut into whole segments of `segment_frames` frames (tail dropped).

    Files that cannot be probed, or that are shorter than one segment after resampling to `fps`, are
    skipped at construction with a warning and recorded in `skipped` (path -> reason). Files that fail
    later, at decode time, are recorded too and `__getitem__` returns None for them. With
    `num_workers > 0` the decode-time records live in the worker processes, so only warnings reach the
    main process for those.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None,
        segment_frames: int,
        fps: float | None,
        size: tuple[int, int],
    ) -> None:
        if segment_frames <= 0:
            raise ValueError(f"segment_frames must be positive, got {segment_frames}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive or None, got {fps!r}")
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"size must be a (height, width) pair of positive ints, got {size!r}")
        self.root = Path(root)
        self.split = split
        self.segment_frames = segment_frames
        self.fps = fps
        self.size = (int(size[0]), int(size[1]))
        self.skipped: dict[str, str] = {}
        self.paths: list[Path] = []
        self.captions: list[str] = []
        self.lengths: list[int] = []

        entries = read_metadata(self.root)
        selected = [e for e in entries if split is None or e["split"] == split]
        if not selected:
            raise ValueError(f"no entries with split {split!r} in {self.root / METADATA_FILE}")
        for entry in selected:
            path = self.root / entry["path"]
            try:
                native_frames, native_fps = probe_video(path)
            except (OSError, RuntimeError, ValueError) as err:
                self._skip(path, f"unreadable: {err}")
                continue
            segments = resampled_length(native_frames, native_fps, fps) // segment_frames
            if segments < 1:
                self._skip(path, f"too short: {native_frames} frames at {native_fps:g} fps")
                continue
            self.paths.append(path)
            self.captions.append(entry["caption"])
            self.lengths.append(segments)
        if not self.paths:
            raise ValueError(
                f"no usable videos for split {split!r} in {self.root}: "
                f"all {len(self.skipped)} were skipped ({self.skipped})"
            )
        if self.skipped:
            log.warning(
                "split %r of %s: kept %d videos, skipped %d",
                split,
                self.root,
                len(self.paths),
                len(self.skipped),
            )

    @property
    def num_skipped(self) -> int:
        """Number of videos skipped so far (at construction and at decode time)."""
        return len(self.skipped)

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped[str(path)] = reason
        warnings.warn(f"skipping video {path}: {reason}", stacklevel=3)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        path = self.paths[index]
        try:
            frames = read_video(path, fps=self.fps, size=self.size)
        except (OSError, RuntimeError, ValueError) as err:
            self._skip(path, f"decode failed: {err}")
            return None
        segments = frames.shape[0] // self.segment_frames
        if segments < 1:
            self._skip(path, f"decoded only {frames.shape[0]} frames, need {self.segment_frames}")
            return None
        frames = frames[: segments * self.segment_frames]
        # uint8 [0, 255] -> float [-1, 1], the range the VAE/latent code expects.
        video = frames.float().div_(127.5).sub_(1.0)
        video = video.reshape(segments, self.segment_frames, *video.shape[1:])
        return {
            "video": video,
            "image": video[0, 0].clone(),
            "caption": self.captions[index],
            "num_segments": segments,
            "name": path.stem,
        }


def collate_videos(items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Batch dataset items, dropping Nones and zero-padding the segment axis to the longest video."""
    kept = [item for item in items if item is not None]
    if not kept:
        return None
    longest = max(item["num_segments"] for item in kept)
    first = kept[0]["video"]
    video = first.new_zeros((len(kept), longest, *first.shape[1:]))
    for row, item in enumerate(kept):
        video[row, : item["num_segments"]] = item["video"]
    return {
        "video": video,
        "num_segments": torch.tensor([item["num_segments"] for item in kept], dtype=torch.long),
        "image": torch.stack([item["image"] for item in kept]),
        "caption": [item["caption"] for item in kept],
        "name": [item["name"] for item in kept],
    }
