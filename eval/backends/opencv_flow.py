"""OpenCV dense optical flow (DIS or Farneback): weight-free dynamic degree and motion smoothness.

Stand-ins for RAFT (dynamic degree) and AMT-S (motion smoothness interpolation). Midpoint
interpolation warps both frames half-way along bidirectional flow: plain frame averaging gives the
same ghosted blend for smooth and for jittered motion, flow warping does not (it reproduces the true
middle frame only when the motion between the two frames is coherent).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["OpenCVFlow"]

_METHODS = ("dis", "farneback")


class OpenCVFlow:
    """Dense flow on grey frames; `max_side` downsizes first (magnitudes rescaled to input pixels)."""

    def __init__(self, method: str = "dis", max_side: int | None = None) -> None:
        if method not in _METHODS:
            raise ValueError(f"OpenCVFlow: method must be one of {_METHODS}, got {method!r}")
        if max_side is not None and max_side < 8:
            raise ValueError(f"OpenCVFlow: max_side must be >= 8 or None, got {max_side!r}")
        self.method = method
        self.max_side = max_side
        self.name = f"opencv_{method}"
        self._dis: cv2.DISOpticalFlow | None = None  # created lazily: no work at construction

    def _grey(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"OpenCVFlow: expected uint8 [H, W, 3], got {image.dtype} {image.shape}"
            )
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        scale = 1.0
        if self.max_side is not None and max(grey.shape) > self.max_side:
            scale = self.max_side / max(grey.shape)
            size = (max(8, round(grey.shape[1] * scale)), max(8, round(grey.shape[0] * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        return grey, scale

    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Flow [H', W', 2] from `first` to `second` in the (possibly downsized) grid's pixels."""
        a, _ = self._grey(first)
        b, _ = self._grey(second)
        if self.method == "dis":
            if self._dis is None:
                self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            return self._dis.calc(a, b, None)
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 3, 5, 1.2, 0)

    def flow_magnitude(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Per-pixel |flow| [H', W'] expressed in pixels of the input frames."""
        _, scale = self._grey(first)
        f = self.flow(first, second)
        return np.sqrt((f**2).sum(-1)) / scale

    def interpolate(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Midpoint frame: mean of both frames backward-warped half-way along their flows."""
        h, w = first.shape[:2]
        _, scale = self._grey(first)
        fwd = self.flow(first, second)
        bwd = self.flow(second, first)
        if scale != 1.0:
            fwd = cv2.resize(fwd, (w, h), interpolation=cv2.INTER_LINEAR) / scale
            bwd = cv2.resize(bwd, (w, h), interpolation=cv2.INTER_LINEAR) / scale
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        # Middle pixel x came from first at x - F_ab/2 and goes to second at x - F_ba/2 (flow fields
        # are assumed smooth enough that the flow at x approximates the flow of the moving point).
        from_first = cv2.remap(
            first,
            xs - 0.5 * fwd[..., 0],
            ys - 0.5 * fwd[..., 1],
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        from_second = cv2.remap(
            second,
            xs - 0.5 * bwd[..., 0],
            ys - 0.5 * bwd[..., 1],
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        mid = (from_first.astype(np.float32) + from_second.astype(np.float32)) / 2
        return mid.astype(np.uint8)  # truncation, as VBench casts the interpolated frame
