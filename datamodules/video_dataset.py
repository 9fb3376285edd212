"""A folder of captioned videos, each returned as a chronological stack of whole segments.

Layout: `root/metadata.jsonl` with one JSON object per line,
`{"path": "videos/a.mp4", "caption": "...", "split": "train"}`; `path` is relative to `root` (or
absolute), `split` is optional and entries without it belong to the "train" split. A caption may
be empty (the unconditional prompt) but must be present.

What is skipped (each with a warning naming it, and counted in `skipped` / `num_skipped`):
- a metadata line that is not valid JSON, not a JSON object, or lacks a string `path` or
  `caption` (or has a non-string `split`): named by file and line number;
- a video that cannot be probed (missing, unreadable, truncated: fewer frames than its header
  lists) or that is shorter than one segment after resampling: named by path, at construction;
- a video that decodes to fewer frames than probed (it changed, or its data is damaged past the
  header): named by path, at decode time, where `__getitem__` returns None.
Every item has exactly `lengths[i]` segments, the probed length that curriculum and DDP batching
rely on: frames beyond it are dropped, never a shorter video returned.
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


def read_metadata(root: Path) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Parse `root/metadata.jsonl`: (usable entries, {"<file>:<line>": why} for skipped lines).

    Unusable lines are skipped with a warning naming the file and line; a file with no usable
    line is an error.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"data directory does not exist: {root}")
    metadata = root / METADATA_FILE
    if not metadata.is_file():
        raise FileNotFoundError(f"metadata file not found: {metadata}")
    entries = []
    skipped: dict[str, str] = {}
    with metadata.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            problem = None
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                entry, problem = None, f"invalid JSON ({err.msg})"
            if problem is None and not isinstance(entry, dict):
                problem = f"expected a JSON object, got {type(entry).__name__}"
            for key in ("path", "caption"):
                if problem is None and not isinstance(entry.get(key), str):
                    problem = f"missing string field {key!r}"
            if problem is None and not isinstance(entry.get("split", DEFAULT_SPLIT), str):
                problem = "'split' must be a string"
            focus = entry.get("focus_segment", -1) if problem is None else -1
            source = entry.get("focus_memory", -1) if problem is None else -1
            for key, value in (("focus_segment", focus), ("focus_memory", source)):
                if problem is None and (not isinstance(value, int) or value < -1):
                    problem = f"{key!r} must be a segment index >= 0, got {value!r}"
            if problem is not None:
                skipped[f"{metadata}:{number}"] = problem
                warnings.warn(f"skipping {metadata}, line {number}: {problem}", stacklevel=3)
                continue
            split = entry.get("split", DEFAULT_SPLIT)
            entries.append({"path": entry["path"], "caption": entry["caption"], "split": split,
                            "focus_segment": focus, "focus_memory": source})  # fmt: skip
    if not entries:
        reasons = f": {skipped}" if skipped else ""
        raise ValueError(f"metadata file has no usable entries: {metadata}{reasons}")
    return entries, skipped


class VideoFolderDataset(Dataset):
    """Captioned videos cut into whole segments of `segment_frames` frames (tail dropped).

    Unusable metadata lines and files that cannot be probed, or that are shorter than one segment
    after resampling to `fps`, are skipped at construction with a warning and recorded in `skipped`
    ("<metadata>:<line>" or path -> reason). Files that fail later, at decode time (including
    decoding to fewer frames than probed), are recorded too and `__getitem__` returns None for
    them. With `num_workers > 0` the decode-time records live in the worker processes, so only
    warnings reach the main process for those. `lengths[i]` (segments) comes from the probed
    duration (`probe_video`), and item i has exactly that many segments.

    `keep_decoded`: keep each video's decoded uint8 frames in memory after its first read (per
    process; with loader workers, per worker). Decoding an mp4 costs far more than a small model's
    step (the demo: ~0.1 s per 32 x 32 video, ~1 s per batch of 8, against ~0.1 s per step), so
    small datasets should be decoded once; large ones leave it off.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None,
        segment_frames: int,
        fps: float | None,
        size: tuple[int, int],
        keep_decoded: bool = False,
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
        self.paths: list[Path] = []
        self.captions: list[str] = []
        self.lengths: list[int] = []
        # A segment that needs long-term memory (-1: none) and the segments before it that hold
        # what it needs (a probe's prefix): `VideoModule.memory_focus` / `memory_oracle`.
        self.focus: list[tuple[int, int]] = []
        self.keep_decoded = keep_decoded
        self._decoded: dict[int, torch.Tensor] = {}

        entries, skipped_lines = read_metadata(self.root)
        self.skipped: dict[str, str] = dict(skipped_lines)
        selected = [e for e in entries if split is None or e["split"] == split]
        if not selected:
            raise ValueError(f"no entries with split {split!r} in {self.root / METADATA_FILE}")
        for entry in selected:
            path = self.root / entry["path"]
            try:
                probe = probe_video(path)
            except (OSError, RuntimeError, ValueError) as err:
                self._skip(path, f"unreadable: {err}")
                continue
            frames = probe.frames if fps is None else resampled_length(probe.duration, fps)
            segments = frames // segment_frames
            if segments < 1:
                self._skip(path, f"too short: {probe.duration:.3f} s, {frames} frames")
                continue
            self.paths.append(path)
            self.captions.append(entry["caption"])
            self.lengths.append(segments)
            focus = entry["focus_segment"] if entry["focus_segment"] < segments else -1
            self.focus.append((focus, entry["focus_memory"] if focus >= 0 else -1))
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
        segments = self.lengths[index]
        frames = self._decoded.get(index)
        if frames is None:
            try:  # exactly the probed length, or an error: batches rely on `lengths`
                frames = read_video(path, self.fps, self.size, segments * self.segment_frames)
            except (OSError, RuntimeError, ValueError) as err:
                self._skip(path, f"decode failed: {err}")
                return None
            if self.keep_decoded:
                self._decoded[index] = frames
        # uint8 [0, 255] -> float [-1, 1], the range the VAE/latent code expects.
        video = frames.float().div_(127.5).sub_(1.0)
        video = video.reshape(segments, self.segment_frames, *video.shape[1:])
        return {
            "video": video,
            "image": video[0, 0].clone(),
            "caption": self.captions[index],
            "num_segments": segments,
            "name": path.stem,
            "focus_segment": self.focus[index][0],
            "focus_memory": self.focus[index][1],
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
        "focus_segment": torch.tensor([item.get("focus_segment", -1) for item in kept]),
        "focus_memory": torch.tensor([item.get("focus_memory", -1) for item in kept]),
    }
