"""The embedded default dataset: procedurally rendered, captioned videos written as mp4 into a
folder (`metadata.jsonl` + `videos/`), read back like any real folder of videos.

Training videos are the bouncing-shapes scene (`scene.py`); `probe_train` adds memory-probe
events (`probe_scene.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datamodules.synthetic.probe_scene import render_probe_video
from datamodules.synthetic.scene import render_video
from datamodules.video_io import as_stored, write_video

__all__ = ["generate_dataset", "held_out_videos"]

log = logging.getLogger(__name__)

# Bumped whenever rendering changes, so cached datasets from an older generator are regenerated.
GENERATOR_VERSION = 1
ARGS_FILE = ".synthetic.json"
LOCK_FILE = ".synthetic.lock"
METADATA_FILE = "metadata.jsonl"


def _is_complete(root: Path, args: dict[str, object], expected: int) -> bool:
    """True if `root` holds a finished dataset of `expected` videos generated with `args`."""
    try:
        stored = json.loads((root / ARGS_FILE).read_text())
        lines = (root / METADATA_FILE).read_text().splitlines()
        if stored != args:
            return False
        paths = [json.loads(line)["path"] for line in lines if line.strip()]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return False  # unreadable or hand-edited files: regenerate rather than trust them
    return len(paths) == expected and all((root / p).is_file() for p in paths)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `path`, held for the `with` block."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def generate_dataset(
    root: str | Path,
    num_train: int,
    num_val: int,
    min_segments: int,
    max_segments: int,
    segment_frames: int,
    fps: float,
    size: tuple[int, int],
    seed: int,
    probe_train: int = 0,
) -> Path:
    """Write `root/videos/*.mp4`, `root/metadata.jsonl` and `root/.synthetic.json`; return root.

    `probe_train` adds that many training videos of memory-probe events (`probe_scene.py`:
    a landmark shown, hidden longer than FramePack's history, shown again), each as long as the
    probe (`ProbeSchedule().num_segments` segments), so a model can learn to remember.

    Reuses an existing dataset generated with identical arguments. A directory holding a previous
    synthetic dataset with different arguments (or an interrupted run, which has no metadata) is
    regenerated; a directory holding a metadata.jsonl that this generator did not write is refused
    with FileExistsError, so real data is never overwritten.
    """
    root = Path(root)
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(
            f"need num_train, num_val >= 0 and some videos, got {num_train}, {num_val}"
        )
    if not 1 <= min_segments <= max_segments:
        raise ValueError(
            f"need 1 <= min_segments <= max_segments, got {min_segments}, {max_segments}"
        )
    if probe_train < 0:
        raise ValueError(f"probe_train must be >= 0, got {probe_train}")
    if segment_frames <= 0 or not fps > 0:
        raise ValueError(f"segment_frames and fps must be positive, got {segment_frames}, {fps}")
    size = (int(size[0]), int(size[1]))
    args: dict[str, object] = dict(
        version=GENERATOR_VERSION,
        num_train=num_train,
        num_val=num_val,
        min_segments=min_segments,
        max_segments=max_segments,
        segment_frames=segment_frames,
        fps=float(fps),
        size=list(size),
        seed=seed,
    )
    if probe_train:  # only when used: datasets written before the option stay valid
        args["probe_train"] = probe_train
        args["probe_focus"] = True  # probe lines name their return segment (`focus_segment`)
    # Processes sharing a data_dir (a parallel study, several runs started at once) render it
    # once: the first holds the lock while it renders, the others then find it complete.
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / LOCK_FILE):
        metadata = root / METADATA_FILE
        if _is_complete(root, args, num_train + num_val + probe_train):
            log.info("reusing synthetic dataset in %s", root)
            return root
        if metadata.exists() and not (root / ARGS_FILE).exists():
            raise FileExistsError(
                f"{metadata} exists but was not written by the synthetic generator; "
                f"refusing to overwrite it (use source='folder' or another data_dir)"
            )
        log.info("generating synthetic dataset in %s (%d train, %d val)", root, num_train, num_val)
        # Remove the metadata first: if this run is interrupted the directory reads as incomplete.
        metadata.unlink(missing_ok=True)
        videos = root / "videos"
        videos.mkdir(parents=True, exist_ok=True)
        for stale in videos.glob("*.mp4"):
            if stale.name.startswith(("train_", "val_")):
                stale.unlink()
        (root / ARGS_FILE).write_text(json.dumps(args, indent=2) + "\n")

        lines = []
        splits = ["train"] * num_train + ["val"] * num_val
        for index, split in enumerate(splits):
            rng = np.random.default_rng([seed, index])
            num_segments = int(rng.integers(min_segments, max_segments + 1))
            remainder = int(rng.integers(0, segment_frames))
            frames, caption = render_video(
                int(rng.integers(2**31)), num_segments * segment_frames + remainder, size
            )
            relative = f"videos/{split}_{index:05d}.mp4"
            write_video(root / relative, frames, fps)
            lines.append(json.dumps({"path": relative, "caption": caption, "split": split}))
        for index in range(probe_train):
            rng = np.random.default_rng([seed, 7, index])
            probe = render_probe_video(2 * int(rng.integers(2**30)), size, segment_frames)  # even
            relative = f"videos/train_probe_{index:05d}.mp4"
            write_video(root / relative, probe.frames, fps)
            focus = probe.schedule.prefix_segments + probe.schedule.gap_segments  # the return
            lines.append(json.dumps({"path": relative, "caption": probe.caption, "split": "train",
                                     "focus_segment": focus,
                                     "focus_memory": probe.schedule.prefix_segments}))  # fmt: skip

        tmp = metadata.with_name(metadata.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, metadata)  # atomic on POSIX: readers see no metadata or the full file
        return root


def held_out_videos(
    count: int,
    num_segments: int,
    segment_frames: int,
    size: tuple[int, int],
    seed: int = 0,
    fps: float = 8.0,
) -> list[dict[str, object]]:
    """`count` training-scene videos of exactly `num_segments` segments, rendered in memory as
    dataset items (`video` [s, T, 3, H, W] and `image` [3, H, W] in [-1, 1], `caption`, `name`),
    through the mp4 round trip the stored training videos went through (`as_stored`).

    For evaluations that need videos longer than the split holds (rollouts by depth). The render
    seeds come from their own stream, rng([seed, 7919]), not the [seed, index] streams of
    `generate_dataset`'s videos, so they are held out (a shared seed has odds ~1e-7).
    """
    if count < 1 or num_segments < 1 or segment_frames < 1:
        raise ValueError(
            f"held_out_videos needs count, num_segments, segment_frames >= 1, got "
            f"{count}, {num_segments}, {segment_frames}"
        )
    rng = np.random.default_rng([seed, 7919])
    items = []
    for k, render_seed in enumerate(rng.integers(2**31, size=count).tolist()):
        frames, caption = render_video(int(render_seed), num_segments * segment_frames, size)
        video = as_stored(frames, fps).float().div(127.5).sub(1.0)
        video = video.reshape(num_segments, segment_frames, *video.shape[1:])
        items.append({"video": video, "image": video[0, 0].clone(), "caption": caption,
                      "num_segments": num_segments, "name": f"held_out_{k:04d}"})  # fmt: skip
    return items
