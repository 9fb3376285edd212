"""Per-frame network outputs of one video, computed chunk by chunk in bounded memory.

`PerFrameAccumulator` takes a video as consecutive chunks of uint8 frames (from a tensor or straight
from a decoder) and keeps only what the formulas need: per-frame features / scores, the top-5% flow
magnitude of each subsampled pair and the motion-smoothness error of each midpoint. Flow and
interpolation pairs that straddle two chunks are handled by carrying the last frame(s) over, so
the outputs are identical to processing the whole video at once, while memory holds one chunk
(at most `max_pixels` frames x H x W) plus the per-frame outputs, whatever the video's length.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from eval.backends.registry import BackendSet
from eval.formulas import dynamic_stride, dynamic_threshold, smoothness_error, top5_mean
from eval.preprocess import MAX_BATCH_PIXELS, check_frames, pixel_batches

__all__ = [
    "PerFrameAccumulator",
    "PerFrameOutputs",
    "compute_per_frame",
    "compute_per_frame_stream",
]


@dataclass
class PerFrameOutputs:
    """Everything the formulas need, computed once per video (None = backend unavailable)."""

    num_frames: int
    subject: torch.Tensor | None  # [T, d]
    background: torch.Tensor | None  # [T, d]
    aesthetic: torch.Tensor | None  # [T]
    imaging: torch.Tensor | None  # [T]
    flow_pairs: torch.Tensor | None  # [T'-1] top-5% magnitudes of frames[::stride] pairs
    flow_stride: int
    flow_threshold: float
    smooth_errors: torch.Tensor | None  # [K], pair k predicts frame 2k + 1


class PerFrameAccumulator:
    """Feed a video's frames in order with `add(chunk)`, then `finish()` -> PerFrameOutputs."""

    def __init__(
        self, backends: BackendSet, fps: float, max_pixels: int = MAX_BATCH_PIXELS
    ) -> None:
        if max_pixels < 1:
            raise ValueError(f"PerFrameAccumulator: max_pixels must be >= 1, got {max_pixels!r}")
        self.backends = backends
        self.fps = fps
        self.stride = dynamic_stride(fps)
        self.max_pixels = max_pixels
        self.num_frames = 0
        self._size: tuple[int, int] | None = None
        # Subject and background may share one backend instance: its features are computed once.
        self._features: dict[int, list[torch.Tensor]] = {}
        self._aesthetic: list[torch.Tensor] = []
        self._imaging: list[torch.Tensor] = []
        self._pairs: list[float] = []
        self._errors: list[float] = []
        self._flow_last: np.ndarray | None = None  # last subsampled frame (HWC)
        self._even: np.ndarray | None = None  # frame 2k, first end of the next midpoint pair
        self._odd: np.ndarray | None = None  # frame 2k + 1, the frame that midpoint predicts

    def add(self, frames: torch.Tensor) -> None:
        """Process the next uint8 frames [t, 3, H, W] (same H, W as every earlier chunk)."""
        check_frames(frames, "PerFrameAccumulator.add")
        size = (int(frames.shape[-2]), int(frames.shape[-1]))
        if self._size is None:
            self._size = size
        elif size != self._size:
            raise ValueError(
                f"PerFrameAccumulator.add: frame size {size} differs from the video's {self._size}"
            )
        for batch in pixel_batches(frames.cpu(), self.max_pixels):
            self._add_batch(batch)

    def _add_batch(self, frames: torch.Tensor) -> None:
        b = self.backends
        for backend in {id(x): x for x in (b.subject, b.background) if x is not None}.values():
            self._features.setdefault(id(backend), []).append(backend.features(frames).double())
        if b.aesthetic is not None:
            self._aesthetic.append(b.aesthetic.scores(frames).double())
        if b.imaging is not None:
            self._imaging.append(b.imaging.scores(frames).double())
        if b.flow is None and b.interpolation is None:
            self.num_frames += frames.shape[0]
            return
        for frame in frames.permute(0, 2, 3, 1).contiguous().numpy():
            index = self.num_frames
            self.num_frames += 1
            if b.flow is not None and index % self.stride == 0:
                if self._flow_last is not None:
                    self._pairs.append(top5_mean(b.flow.flow_magnitude(self._flow_last, frame)))
                self._flow_last = frame.copy()
            if b.interpolation is not None:
                if index % 2 == 1:
                    self._odd = frame.copy()
                    continue
                if self._even is not None and self._odd is not None:
                    mid = b.interpolation.interpolate(self._even, frame)
                    self._errors.append(smoothness_error(self._odd, mid))
                self._even = frame.copy()

    def finish(self) -> PerFrameOutputs:
        """The outputs of every frame added so far (raises for a video without frames)."""
        if self._size is None:
            raise ValueError("PerFrameAccumulator.finish: no frames were added")
        b = self.backends

        def features(backend: object | None) -> torch.Tensor | None:
            return None if backend is None else torch.cat(self._features[id(backend)])

        return PerFrameOutputs(
            num_frames=self.num_frames,
            subject=features(b.subject),
            background=features(b.background),
            aesthetic=None if b.aesthetic is None else torch.cat(self._aesthetic),
            imaging=None if b.imaging is None else torch.cat(self._imaging),
            flow_pairs=None if b.flow is None else torch.tensor(self._pairs, dtype=torch.float64),
            flow_stride=self.stride,
            flow_threshold=dynamic_threshold(*self._size, fps=self.fps),
            smooth_errors=None
            if b.interpolation is None
            else torch.tensor(self._errors, dtype=torch.float64),
        )


def compute_per_frame_stream(
    chunks: Iterable[torch.Tensor],
    backends: BackendSet,
    fps: float,
    max_pixels: int = MAX_BATCH_PIXELS,
) -> PerFrameOutputs:
    """Run every available backend once over a video given as consecutive uint8 chunks."""
    acc = PerFrameAccumulator(backends, fps, max_pixels)
    for chunk in chunks:
        acc.add(chunk)
    return acc.finish()


def compute_per_frame(frames: torch.Tensor, backends: BackendSet, fps: float) -> PerFrameOutputs:
    """Run every available backend once over uint8 frames [T, 3, H, W] at `fps`."""
    check_frames(frames, "compute_per_frame")
    return compute_per_frame_stream([frames], backends, fps)
