"""Real-imagery clips for the metric validity suite: photographs panned and zoomed into short videos.

The photographs are scikit-image's bundled samples (`skimage.data`: astronaut, coffee, chelsea,
rocket and the left view of stereo_motorcycle), which ship inside the scikit-image wheel from PyPI
(its `eval` / `dev` extra): nothing is downloaded. Each clip moves a virtual camera over one
photograph: the crop window pans at a constant speed and zooms out along the clip, and every frame
is resampled from the photograph (area-averaged once to the clip's scale, then bilinear at subpixel
offsets), so the frames carry natural-image statistics, sensor noise and JPEG history of a real
photo, and the motion is known. They serve the per-frame metrics (imaging, aesthetic, subject,
background) and dynamic degree / smoothness on a smooth camera move; real recorded clips come from
`load_clip_folder` (`benchmarks/metric_validity.py --videos DIR`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch

__all__ = ["PHOTOS", "load_clip_folder", "photo", "photo_clip", "photo_clips", "skimage_available"]

# skimage.data loaders of photographs bundled in the wheel (others need a pooch download).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")
# Pan speed in clip pixels per frame (x, y) and the window's zoom-out factor over the clip.
_PAN = (7.0, 2.0)
_ZOOM = 1.2


def skimage_available() -> bool:
    """Whether scikit-image (the source of the photographs) is installed."""
    return importlib.util.find_spec("skimage") is not None


def photo(name: str) -> np.ndarray:
    """One bundled photograph as uint8 RGB [H, W, 3]."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photograph {name!r}; expected one of {PHOTOS}")
    if not skimage_available():
        raise ModuleNotFoundError(
            "real-image clips need scikit-image (pip install 'memorypack[eval]'): its wheel "
            "bundles the photographs"
        )
    import skimage.data

    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        image = image[0]  # (left, right, disparity): the left view
    return np.ascontiguousarray(image[..., :3])


def photo_clip(name: str, frames: int = 16, size: tuple[int, int] = (192, 256)) -> torch.Tensor:
    """uint8 [T, 3, h, w]: a camera panning right/down and zooming out over photograph `name`.

    Frame t shows the window of (h, w) * z_t clip pixels, z_t = 1 + (ZOOM - 1) t / (T - 1), whose
    top-left corner moves by PAN pixels per frame. The photograph is first area-resized so the
    whole path fits; a photograph too small for the path raises, naming the size.
    """
    if frames < 2:
        raise ValueError(f"photo_clip: need at least 2 frames, got {frames}")
    height, width = size
    if min(size) < 16:
        raise ValueError(f"photo_clip: size must be at least 16x16, got {size}")
    image = photo(name)
    need_w = _ZOOM * width + _PAN[0] * (frames - 1) + 2
    need_h = _ZOOM * height + _PAN[1] * (frames - 1) + 2
    # Largest scale at which the path fits (<= 1 clip pixel per photo pixel: never upsampled).
    scale = min(image.shape[1] / need_w, image.shape[0] / need_h)
    if scale < 1.0:
        raise ValueError(
            f"photo_clip: photograph {name!r} ({image.shape[1]}x{image.shape[0]}) is too small for "
            f"{frames} frames of {width}x{height} (needs {need_w:.0f}x{need_h:.0f})"
        )
    # Pre-shrink so the path just fits: the per-frame warp then resamples at about 1:1 to 1:ZOOM.
    scale = min(scale, 1.5)
    base = cv2.resize(
        image,
        (round(image.shape[1] / scale), round(image.shape[0] / scale)),
        interpolation=cv2.INTER_AREA,
    )
    out = []
    for t in range(frames):
        zoom = 1 + (_ZOOM - 1) * t / (frames - 1)
        left, top = 1 + _PAN[0] * t, 1 + _PAN[1] * t
        # Output pixel (x, y) samples base at (left + zoom x, top + zoom y).
        matrix = np.array([[zoom, 0.0, left], [0.0, zoom, top]], dtype=np.float64)
        frame = cv2.warpAffine(
            base,
            matrix,
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
        out.append(frame)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def photo_clips(
    count: int = len(PHOTOS), frames: int = 16, size: tuple[int, int] = (192, 256)
) -> list[torch.Tensor]:
    """The first `count` photographs of PHOTOS as clips (see `photo_clip`)."""
    if not 1 <= count <= len(PHOTOS):
        raise ValueError(f"photo_clips: count must be in 1..{len(PHOTOS)}, got {count}")
    return [photo_clip(name, frames, size) for name in PHOTOS[:count]]


def load_clip_folder(
    folder: str | Path, frames: int, size: tuple[int, int], fps: float
) -> list[torch.Tensor]:
    """Every .mp4 in `folder` decoded at `fps`, resized / centre-cropped to `size`, first `frames`
    (decoding stops there: a long clip is never held whole).

    A clip shorter than `frames` raises, naming it (every clip must give the same length so the
    identity-change degradation can splice neighbours).
    """
    from eval.video_stream import iter_video_chunks

    paths = sorted(Path(folder).glob("*.mp4"))
    if len(paths) < 2:
        raise ValueError(
            f"load_clip_folder: need at least 2 .mp4 files in {folder}, got {len(paths)}"
        )
    clips = []
    for path in paths:
        video = torch.cat(list(iter_video_chunks(path, fps=fps, size=size, max_frames=frames)))
        if video.shape[0] < frames:
            raise ValueError(
                f"load_clip_folder: {path} gives {video.shape[0]} frames at {fps:g} fps, "
                f"{frames} needed"
            )
        clips.append(video)
    return clips
