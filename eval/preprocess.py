"""Image preprocessing for the metric networks, in plain torch (no torchvision; METRICS.md).

VBench resizes the shorter side to 224 (bilinear for DINO, bicubic + centre crop for CLIP) and then
normalises with the network's mean/std. `antialias=True` matches PIL-style downscaling. Imaging
quality resizes so the longer side is at most 512 (VBench's default "longer" mode). Every backend
works through `pixel_batches`, so a chunk of full-resolution frames never meets a large
intermediate tensor at once (bounded memory whatever the input resolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "center_crop",
    "check_frames",
    "normalize",
    "pixel_batches",
    "resize_longer",
    "resize_shorter",
    "to_unit_float",
]

# Pixels (frames x H x W) a backend processes at once at input resolution: 4 frames of 1080p.
MAX_BATCH_PIXELS = 4 * 1920 * 1080
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_frames(frames: torch.Tensor, where: str) -> None:
    """Raise naming `where` unless `frames` is uint8 RGB [T, 3, H, W] with T >= 1."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(
            f"{where}: frames must be uint8 [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}"
        )
    if frames.shape[0] < 1:
        raise ValueError(f"{where}: video has no frames")


def to_unit_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, 3, H, W] -> float32 in [0, 1]."""
    return frames.float() / 255.0


def resize_shorter(images: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize float [B, C, H, W] so the shorter side is `size`, keeping the aspect ratio."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) == (h, w):
        return images
    out = F.interpolate(images, size=(new_h, new_w), mode=mode, antialias=True, align_corners=False)
    # Bicubic overshoots; clamp back to the input range as PIL does for uint8 images.
    return out.clamp(0.0, 1.0) if mode == "bicubic" else out


def resize_longer(
    images: torch.Tensor, size: int = 512, mode: str = "bilinear", antialias: bool = True
) -> torch.Tensor:
    """Resize float [B, C, H, W] so the longer side is `size` when it is longer (VBench "longer").

    Output (int(s H), int(s W)) with s = size / max(H, W), as VBench's imaging-quality transform;
    frames already within `size` are returned unchanged. VBench itself resizes with
    `antialias=False` (pass it for parity); the default antialiases, which keeps aliasing out of
    statistics that read fine texture (NIQE).
    """
    h, w = images.shape[-2:]
    if max(h, w) <= size:
        return images
    scale = size / max(h, w)
    out_size = (max(1, int(scale * h)), max(1, int(scale * w)))
    return F.interpolate(images, size=out_size, mode=mode, antialias=antialias, align_corners=False)


def pixel_batches(frames: torch.Tensor, max_pixels: int = MAX_BATCH_PIXELS) -> list[torch.Tensor]:
    """Split [T, C, H, W] along T into views of at most `max_pixels` T x H x W (>= 1 frame each)."""
    if max_pixels < 1:
        raise ValueError(f"pixel_batches: max_pixels must be >= 1, got {max_pixels!r}")
    per = max(1, max_pixels // max(1, frames.shape[-2] * frames.shape[-1]))
    return list(frames.split(per))


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop float [B, C, H, W] to size x size (H, W >= size)."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def normalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """(x - mean) / std per channel for float [B, 3, H, W]."""
    m = images.new_tensor(mean).view(1, -1, 1, 1)
    s = images.new_tensor(std).view(1, -1, 1, 1)
    return (images - m) / s
