"""Decode a video file in chunks of frames, so scoring a long high-resolution clip stays in bounded
memory (`python -m eval`). Same frames as `datamodules.video_io.read_video`, never all at once.

`iter_video_chunks(path, fps=None, size=None, max_frames=None)` yields uint8 [t, 3, h, w] chunks of
at most `max_pixels` pixels. Resampling to `fps` follows `read_video`: output frame k is the source
frame whose timestamp is nearest to k / fps (ties to the earlier one), and the clip gives
floor(duration * fps) frames, duration = last timestamp - first + the last frame's length. `size`
resizes so the frame covers (h, w) and centre crops, as the dataset does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import torch

from datamodules.video_io import (
    _native_fps,
    _open_video,
    _resize_cover_crop,
    resampled_length,
    to_rgb,
)
from eval.preprocess import MAX_BATCH_PIXELS

__all__ = ["iter_video_chunks"]


def _to_chunk(arrays: list[np.ndarray], size: tuple[int, int] | None) -> torch.Tensor:
    frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return frames if size is None else _resize_cover_crop(frames, size)


def _decoded(path: Path) -> Iterator[tuple[np.ndarray, float | None, float | None, float]]:
    """(RGB frame, timestamp, frame length, native fps) for each decoded frame, in order."""
    container, stream = _open_video(path)
    stream.thread_type = "AUTO"
    try:
        native = _native_fps(stream, path)
        for frame in container.decode(stream):
            length = None
            if frame.duration and frame.time_base is not None:
                length = float(frame.duration * frame.time_base)
            yield to_rgb(frame), frame.time, length, native
    except av.FFmpegError as err:
        raise RuntimeError(f"cannot decode video {path}: {err}") from err
    finally:
        container.close()


def _resampled(path: Path, fps: float) -> Iterator[np.ndarray]:
    """Frames at `fps` by nearest timestamp, decided as the decode goes (one frame of lookahead)."""
    previous: np.ndarray | None = None
    prev_time = first = 0.0
    length: float | None = None
    native = 0.0
    emitted = 0
    for decoded in _decoded(path):
        image, time, length, native = decoded  # length / native of the last frame are used below
        if time is None:
            raise RuntimeError(
                f"video {path} has frames without timestamps: decode it with read_video, which "
                "assumes the nominal rate"
            )
        if previous is None:
            first = time
        elif time < prev_time:
            raise RuntimeError(
                f"video {path}: frame timestamps go backwards ({time} < {prev_time})"
            )
        else:
            # Targets up to the midpoint belong to the previous frame (ties to the earlier one).
            midpoint = (prev_time - first + time - first) / 2
            while emitted / fps <= midpoint:
                yield previous
                emitted += 1
        previous, prev_time = image, time
    if previous is None:
        raise RuntimeError(f"video {path} decoded to zero frames")
    duration = prev_time - first + (length or 1 / native)
    count = resampled_length(duration, fps)
    if count < 1:
        raise RuntimeError(f"video {path} has no frames left after resampling to {fps} fps")
    while emitted < count:
        yield previous
        emitted += 1


def iter_video_chunks(
    path: str | Path,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
    max_pixels: int = MAX_BATCH_PIXELS,
) -> Iterator[torch.Tensor]:
    """uint8 [t, 3, h, w] chunks of the video at `path` (native rate, or resampled to `fps`)."""
    path = Path(path)
    if fps is not None and not fps > 0:
        raise ValueError(f"iter_video_chunks: fps must be positive, got {fps!r}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"iter_video_chunks: max_frames must be >= 1, got {max_frames!r}")
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"iter_video_chunks: size must be (height, width) > 0, got {size!r}")
    frames = (f for f, *_ in _decoded(path)) if fps is None else _resampled(path, fps)
    pending: list[np.ndarray] = []
    total = 0
    for image in frames:
        pending.append(image)
        total += 1
        per_chunk = max(1, max_pixels // (image.shape[0] * image.shape[1]))
        if len(pending) >= per_chunk:
            yield _to_chunk(pending, size)
            pending = []
        if max_frames is not None and total >= max_frames:
            break
    if pending:
        yield _to_chunk(pending, size)
    if total == 0:
        raise RuntimeError(f"video {path} decoded to zero frames")
