"""Video decoding, probing and encoding with PyAV.

Every video the framework touches (real folders, the synthetic set, rollouts written at predict time)
goes through these three functions, so training sees exactly the same decode path for all data.

Time comes from the frames' timestamps, not from a frame count and a nominal rate: a clip lasts
from its first frame's timestamp to the end of its last frame, and resampling to `fps` picks, for
output frame k, the source frame whose timestamp is nearest to k / fps. Variable-frame-rate files
(phones, screen and browser recordings), whose nominal rate can be far from the real one, and
containers that store no frame count or duration (WebM written live) are read correctly.
"""

from __future__ import annotations

import math
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "X264_PARAMS", "VideoProbe", "as_stored", "from_rgb", "probe_video", "read_video",
    "resampled_length", "to_rgb", "write_video",
]  # fmt: skip

# Frames are resized in chunks so a long high-resolution clip never needs all float frames at once.
_RESIZE_CHUNK = 32
# Tolerance for float fps ratios such as 8.0 / 8.0 that should give an exact frame count.
_EPS = 1e-6


# x264 on one thread, without lookahead threads and without its assembly: threaded encoding is not
# bit-reproducible, and on PyAV 18.1 the SIMD code encoded a 16-frame 32 x 32 clip differently in
# about 1 call in 20 (the C code is 3x slower: 43 ms for 32 such frames; clips here are small).
X264_PARAMS = "threads=1:lookahead-threads=1:sliced-threads=0:asm=0"


# Pixel-format conversions (swscale) run on one thread: since PyAV 17 they split a frame across
# threads by default, and a stored video must not depend on how threads were scheduled
# (`tests/test_data.py` stores one render 100 times and expects one video).
def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as uint8 [h, w, 3] RGB, reproducibly."""
    return frame.to_ndarray(format="rgb24", threads=1)


def from_rgb(image: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """uint8 [h, w, 3] RGB as a frame in the encoder's `pix_fmt`, reproducibly."""
    return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt, threads=1)


def _open_video(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open `path` and return (container, first video stream) or raise naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise RuntimeError(f"cannot open video {path}: {err}") from err
    if not container.streams.video:
        container.close()
        raise ValueError(f"no video stream in {path}")
    return container, container.streams.video[0]


def _native_fps(stream: av.video.stream.VideoStream, path: Path) -> float:
    """Native frame rate from stream metadata; raise if the container does not state one."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise RuntimeError(f"video {path} has no usable frame rate in its metadata")
    return float(rate)


class VideoProbe(NamedTuple):
    """What the dataset needs to know about a video before decoding it."""

    frames: int  # frames at the native rate (demuxed packets)
    fps: float  # nominal native rate from the metadata (may differ from the real one: VFR)
    duration: float  # seconds from the first frame's timestamp to the end of the last frame


def resampled_length(duration: float, fps: float) -> int:
    """Frames `read_video(fps=fps)` returns for a clip lasting `duration` seconds."""
    return int(math.floor(duration * fps + _EPS))


def probe_video(path: str | Path) -> VideoProbe:
    """Frame count, nominal rate and duration of the first video stream, without decoding.

    Demuxes every packet (reading the file, not decoding it): the frame count and the timestamps
    are those of the packets actually present, so a file whose header promises more than it holds
    (an interrupted download or copy) is refused here, naming both counts, instead of failing
    later at decode. A packet's duration falls back to 1 / nominal rate when not stored; packets
    without timestamps make the duration frames / nominal rate.
    """
    path = Path(path)
    container, stream = _open_video(path)
    starts: list[float] = []
    ends: list[float] = []
    count = 0
    try:
        fps = _native_fps(stream, path)
        promised = int(stream.frames or 0)
        for packet in container.demux(stream):
            if packet.size <= 0:  # the demuxer's end-of-stream flush packet
                continue
            count += 1
            if packet.pts is not None and packet.time_base is not None:
                start = float(packet.pts * packet.time_base)
                length = float(packet.duration * packet.time_base) if packet.duration else 1 / fps
                starts.append(start)
                ends.append(start + length)
    except av.FFmpegError as err:
        raise RuntimeError(f"cannot probe video {path}: {err}") from err
    finally:
        container.close()
    if count <= 0:
        raise RuntimeError(f"video {path} contains no frames")
    if promised > count:
        raise RuntimeError(
            f"video {path} is truncated: its header lists {promised} frames, the file holds "
            f"{count} (an interrupted download or copy?)"
        )
    duration = max(ends) - min(starts) if len(starts) == count else count / fps
    return VideoProbe(count, fps, duration)


def _check_size(size: tuple[int, int] | None) -> None:
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f"size must be a (height, width) pair of positive ints, got {size!r}")


def _resize_cover_crop(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 [t, c, h, w] so it covers `size` keeping aspect, then centre crop."""
    out_h, out_w = size
    in_h, in_w = frames.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return frames
    scale = max(out_h / in_h, out_w / in_w)
    # ceil guarantees the scaled frame covers the target even after float rounding.
    new_h = max(out_h, math.ceil(in_h * scale - _EPS))
    new_w = max(out_w, math.ceil(in_w * scale - _EPS))
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    chunks = []
    for start in range(0, frames.shape[0], _RESIZE_CHUNK):
        chunk = frames[start : start + _RESIZE_CHUNK].float()
        if (new_h, new_w) != (in_h, in_w):
            chunk = F.interpolate(
                chunk, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
            )
        chunk = chunk[..., top : top + out_h, left : left + out_w]
        chunks.append(chunk.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(chunks)


def _nearest_indices(times: np.ndarray, count: int, fps: float) -> np.ndarray:
    """For output times k / fps, k < count, the index of the source frame nearest in time."""
    targets = np.arange(count, dtype=np.float64) / fps
    if len(times) == 1:
        return np.zeros(count, dtype=np.int64)
    # searchsorted on sorted timestamps, then pick the closer neighbour.
    right = np.clip(np.searchsorted(times, targets), 1, len(times) - 1)
    left = right - 1
    pick_right = np.abs(times[right] - targets) < np.abs(targets - times[left])
    return np.where(pick_right, right, left)


def read_video(
    path: str | Path,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    num_frames: int | None = None,
) -> torch.Tensor:
    """Decode a video to uint8 [t, 3, h, w] RGB, optionally resampled to `fps` and resized to `size`.

    Resampling keeps the clip's duration (module docstring): output frame k shows the source frame
    whose timestamp is nearest to k / fps (frames are dropped or duplicated), and a clip of
    duration D gives `resampled_length(D, fps)` frames. `size=(h, w)` scales the shorter side to
    cover the target, then centre crops. `num_frames` asks for exactly that many frames (the
    dataset's probed length): later ones are dropped, and a clip too short to give them raises.
    """
    path = Path(path)
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames!r}")
    _check_size(size)
    container, stream = _open_video(path)
    stream.thread_type = "AUTO"
    arrays: list[np.ndarray] = []
    times: list[float | None] = []
    last_length = None
    try:
        native = _native_fps(stream, path)
        for frame in container.decode(stream):
            arrays.append(to_rgb(frame))
            times.append(frame.time)
            if frame.duration and frame.time_base is not None:
                last_length = float(frame.duration * frame.time_base)
            else:
                last_length = None
    except av.FFmpegError as err:
        raise RuntimeError(f"cannot decode video {path}: {err}") from err
    finally:
        container.close()
    if not arrays:
        raise RuntimeError(f"video {path} decoded to zero frames")

    if fps is None:
        count = len(arrays) if num_frames is None else num_frames
        if count > len(arrays):
            raise RuntimeError(
                f"video {path} decoded to {len(arrays)} frames, {num_frames} were expected"
            )
        arrays = arrays[:count]
    else:
        if any(t is None for t in times):
            # Without timestamps assume a constant native rate, which is what the metadata states.
            stamps = np.arange(len(arrays), dtype=np.float64) / native
        else:
            stamps = np.asarray(times, dtype=np.float64)
            stamps = stamps - stamps.min()
        duration = float(stamps.max()) + (last_length or 1 / native)
        count = resampled_length(duration, fps) if num_frames is None else num_frames
        # A frame's worth of slack: a header may round the last frame's length differently.
        if count / fps > duration + 1 / native + _EPS:
            raise RuntimeError(
                f"video {path} decoded to {duration:.3f} s, too short for {count} frames at "
                f"{fps:g} fps ({count / fps:.3f} s)"
            )
        if count < 1:
            raise RuntimeError(f"video {path} has no frames left after resampling to {fps} fps")
        order = np.argsort(stamps, kind="stable")
        picked = order[_nearest_indices(stamps[order], count, fps)]
        arrays = [arrays[i] for i in picked]

    frames = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if size is not None:
        frames = _resize_cover_crop(frames, size)
    return frames


def _to_fraction(fps: float) -> Fraction:
    # Denominator bound keeps NTSC rates such as 29.97 exact enough for the muxer.
    return Fraction(fps).limit_denominator(1001 * 1000)


def write_video(path: str | Path, frames: torch.Tensor, fps: float, *, crf: int = 12) -> None:
    """Encode uint8 [t, 3, h, w] RGB frames to `path` (parent directories are created).

    Uses H.264 (libx264, CRF `crf`): yuv420p for even sizes (plays everywhere) and yuv444p for odd
    sizes, which 4:2:0 cannot represent, so the decoded size always equals the input size. Falls back
    to MPEG-4 Part 2 at a high bitrate when this PyAV build has no libx264.
    """
    path = Path(path)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(
            f"write_video({path}): frames must be uint8 [t, 3, h, w], "
            f"got {frames.dtype} {tuple(frames.shape)}"
        )
    if frames.shape[0] == 0:
        raise ValueError(f"write_video({path}): no frames to write")
    if not fps > 0:
        raise ValueError(f"write_video({path}): fps must be positive, got {fps!r}")
    height, width = int(frames.shape[2]), int(frames.shape[3])
    path.parent.mkdir(parents=True, exist_ok=True)
    array = frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    container = av.open(str(path), mode="w")
    try:
        if "libx264" in av.codecs_available:
            stream = container.add_stream("libx264", rate=_to_fraction(fps))
            stream.width, stream.height = width, height
            even = height % 2 == 0 and width % 2 == 0
            stream.pix_fmt = "yuv420p" if even else "yuv444p"
            stream.options = {"crf": str(crf), "preset": "medium", "x264-params": X264_PARAMS}
        else:
            stream = container.add_stream("mpeg4", rate=_to_fraction(fps))
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            # Scale the bitrate with pixel count: ~8 bits/pixel/frame is near-lossless for MPEG-4.
            stream.bit_rate = max(1_000_000, int(8 * height * width * fps))
        stream.codec_context.thread_count = 1
        for image in array:
            container.mux(stream.encode(from_rgb(image, stream.pix_fmt)))
        container.mux(stream.encode())  # flush delayed (B-)frames
    except av.FFmpegError as err:
        raise RuntimeError(f"cannot encode video {path}: {err}") from err
    finally:
        container.close()


def as_stored(frames: torch.Tensor, fps: float) -> torch.Tensor:
    """uint8 frames [t, 3, h, w] as a dataset stores and reads them: through `write_video` and
    `read_video`. Videos rendered in memory for evaluation go through it so that they match the
    training videos, which were written as mp4. At 32 x 32, H.264's 4:2:0 chroma and CRF 12
    change a render by about 28 dB PSNR."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        write_video(path, frames, fps)
        return read_video(path, num_frames=frames.shape[0])
