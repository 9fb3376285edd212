"""Controlled degradations of a clean uint8 video [T, 3, H, W], for the metric validity suite.

Each takes the clean video, a strength and a seed and returns a new uint8 video of the same shape;
strength 0 (where defined) returns the video unchanged. They are the failure modes a metric must
see: per-frame noise, blur, compression blockiness (JPEG per frame, H.264 over the clip),
"model-like" blocky colour noise redrawn every frame, frozen, shuffled and dropped (held) frames, a
colour drift that grows along the video, a subject that changes identity mid-video, and a
degradation confined to the second half (Eq. 8 drift).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
import torch

from eval.preprocess import check_frames

__all__ = [
    "Degradation",
    "blocky_noise",
    "colour_drift",
    "freeze",
    "gaussian_blur",
    "drop_frames",
    "gaussian_noise",
    "h264",
    "identity_change",
    "jpeg",
    "second_half",
    "shuffle_frames",
]

Degradation = Callable[[torch.Tensor, float, int], torch.Tensor]


def _hwc(video: torch.Tensor) -> np.ndarray:
    return video.permute(0, 2, 3, 1).contiguous().numpy()


def _from_hwc(frames: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def gaussian_noise(video: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Add i.i.d. N(0, sigma^2) noise (0..255 scale) to every pixel of every frame."""
    check_frames(video, "gaussian_noise")
    gen = torch.Generator().manual_seed(seed)
    noisy = video.float() + sigma * torch.randn(video.shape, generator=gen)
    return noisy.round().clamp(0, 255).to(torch.uint8)


def gaussian_blur(video: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Blur every frame with a Gaussian of `sigma` pixels (reflected borders)."""
    check_frames(video, "gaussian_blur")
    if sigma <= 0:
        return video.clone()
    return _from_hwc([cv2.GaussianBlur(f, (0, 0), sigma) for f in _hwc(video)])


def jpeg(video: torch.Tensor, quality: float, seed: int = 0) -> torch.Tensor:
    """JPEG-compress every frame at `quality` (1..100, lower = blockier)."""
    check_frames(video, "jpeg")
    if not 1 <= quality <= 100:
        raise ValueError(f"jpeg: quality must be in 1..100, got {quality!r}")
    out = []
    for frame in _hwc(video):
        ok, buf = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError(f"jpeg: OpenCV could not encode a {frame.shape} frame")
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return _from_hwc(out)


def h264(video: torch.Tensor, crf: float, seed: int = 0) -> torch.Tensor:
    """Encode the clip with H.264 (libx264, constant rate factor `crf`, 0..51) and decode it back:
    the blocking, ringing and smearing of a strongly compressed video (higher crf = worse)."""
    check_frames(video, "h264")
    if not 0 <= crf <= 51:
        raise ValueError(f"h264: crf must be in 0..51, got {crf!r}")
    import av

    from datamodules.video_io import X264_PARAMS, from_rgb, to_rgb

    if "libx264" not in av.codecs_available:
        raise RuntimeError("h264: this PyAV build has no libx264 encoder")
    num, _, height, width = video.shape
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv444p"  # any size, and chroma is degraded by the codec, not by 4:2:0
        # The stored videos' reproducible x264 settings (its SIMD code also changed these 4:4:4
        # clips in a few calls in a hundred).
        stream.options = {"crf": str(int(crf)), "preset": "medium", "x264-params": X264_PARAMS}
        stream.codec_context.thread_count = 1
        for frame in _hwc(video):
            container.mux(stream.encode(from_rgb(frame, stream.pix_fmt)))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer, mode="r") as container:
        out = [to_rgb(f) for f in container.decode(video=0)]
    if len(out) != num:
        raise RuntimeError(f"h264: decoded {len(out)} frames from {num}")
    return _from_hwc(out)


def drop_frames(video: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Drop `fraction` of the frames after the first, each shown as a repeat of the frame before
    it (a stalled stream: the motion stops, then jumps)."""
    check_frames(video, "drop_frames")
    if not 0 <= fraction < 1:
        raise ValueError(f"drop_frames: fraction must be in [0, 1), got {fraction!r}")
    num = video.shape[0]
    gen = torch.Generator().manual_seed(seed)
    dropped = 1 + torch.randperm(num - 1, generator=gen)[: round(fraction * (num - 1))]
    shown = torch.arange(num)
    for index in sorted(dropped.tolist()):
        shown[index] = shown[index - 1]  # a run of drops holds the last frame that arrived
    return video[shown].contiguous()


def blocky_noise(video: torch.Tensor, patch: float, seed: int = 0) -> torch.Tensor:
    """Replace the video by random colours per `patch` x `patch` block, redrawn every frame.

    What an untrained or collapsed generator emits (the demo's rollouts): flickering colour blocks.
    """
    check_frames(video, "blocky_noise")
    num, _, height, width = video.shape
    p = int(patch)
    if p < 1:
        raise ValueError(f"blocky_noise: patch must be >= 1, got {patch!r}")
    gen = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (num, 3, -(-height // p), -(-width // p)), generator=gen)
    big = small.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
    return big[..., :height, :width].to(torch.uint8).contiguous()


def freeze(video: torch.Tensor, sigma: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Every frame is the first frame (a stationary video), plus per-frame noise of `sigma`."""
    check_frames(video, "freeze")
    frozen = video[:1].expand_as(video).contiguous()
    return gaussian_noise(frozen, sigma, seed) if sigma > 0 else frozen


def shuffle_frames(video: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Swap `fraction` of the disjoint neighbouring pairs (2k, 2k + 1): the motion jitters."""
    check_frames(video, "shuffle_frames")
    if not 0 <= fraction <= 1:
        raise ValueError(f"shuffle_frames: fraction must be in [0, 1], got {fraction!r}")
    pairs = video.shape[0] // 2
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(pairs, generator=gen)[: round(fraction * pairs)]
    order = torch.arange(video.shape[0])
    order[2 * chosen], order[2 * chosen + 1] = 2 * chosen + 1, 2 * chosen
    return video[order].contiguous()


def colour_drift(video: torch.Tensor, amount: float, seed: int = 0) -> torch.Tensor:
    """A colour cast that grows linearly along the video: frame t is mixed with a flat tint by
    amount * t / (T - 1) (at the end `amount` of every pixel is the tint, a washed-out frame)."""
    check_frames(video, "colour_drift")
    if not 0 <= amount <= 1:
        raise ValueError(f"colour_drift: amount must be in [0, 1], got {amount!r}")
    num = video.shape[0]
    tint = torch.tensor([230.0, 200.0, 60.0]).view(1, 3, 1, 1)  # a yellow cast
    mix = amount * torch.arange(num, dtype=torch.float32) / max(1, num - 1)
    mix = mix.view(-1, 1, 1, 1)
    return ((1 - mix) * video.float() + mix * tint).round().clamp(0, 255).to(torch.uint8)


def identity_change(
    video: torch.Tensor, other: torch.Tensor, at: float = 0.5, seed: int = 0
) -> torch.Tensor:
    """From frame round(at * T) on, show `other` (a different scene / subject) instead."""
    check_frames(video, "identity_change")
    check_frames(other, "identity_change(other)")
    if other.shape != video.shape:
        raise ValueError(
            f"identity_change: other must have shape {tuple(video.shape)}, got {tuple(other.shape)}"
        )
    cut = round(at * video.shape[0])
    return torch.cat([video[:cut], other[cut:]]).contiguous()


def second_half(
    video: torch.Tensor, degrade: Degradation, strength: float, seed: int = 0
) -> torch.Tensor:
    """Apply `degrade` to the second half of the frames only (the start stays clean)."""
    check_frames(video, "second_half")
    cut = video.shape[0] // 2
    return torch.cat([video[:cut], degrade(video[cut:], strength, seed)]).contiguous()
