"""What a metric backend is: a named network producing per-frame outputs for one formula.

Four kinds, one per kind of per-frame output the formulas in `eval/formulas.py` consume. Every backend
has a `name` that is appended to the metric name (`subject_consistency@<name>`), so a proxy can never
be mistaken for a VBench number.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from eval.preprocess import MAX_BATCH_PIXELS

__all__ = [
    "FeatureBackend",
    "FlowBackend",
    "InterpolationBackend",
    "ScoreBackend",
    "TorchBackend",
    "load_strict",
]


@runtime_checkable
class FeatureBackend(Protocol):
    """Per-frame embeddings for subject / background consistency."""

    name: str

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> float [T, d] (on CPU)."""
        ...


@runtime_checkable
class ScoreBackend(Protocol):
    """Per-frame quality scores for aesthetic / imaging quality, already on VBench's 0..1 scale."""

    name: str

    def scores(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> float [T] (on CPU)."""
        ...


@runtime_checkable
class FlowBackend(Protocol):
    """Dense optical flow magnitude for dynamic degree."""

    name: str

    def flow_magnitude(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Two uint8 RGB [H, W, 3] frames -> per-pixel flow magnitude [H, W] in input pixels."""
        ...


@runtime_checkable
class InterpolationBackend(Protocol):
    """Midpoint frame interpolation for motion smoothness."""

    name: str

    def interpolate(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Two uint8 RGB [H, W, 3] frames -> the uint8 [H, W, 3] frame halfway between them."""
        ...


class TorchBackend:
    """Mixin for backends that own an `nn.Module`: device placement and chunked inference."""

    name: str = "torch"
    batch_size: int = 16

    def __init__(self, module: torch.nn.Module, device: str | torch.device | None = None) -> None:
        self.module = module.eval()
        for param in module.parameters():  # per parameter: ScriptModules lack requires_grad_
            param.requires_grad_(False)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.module.to(self.device)

    def to(self, device: str | torch.device) -> TorchBackend:
        """Move the network (the callback moves it next to the model being evaluated)."""
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    def _chunks(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """At most `batch_size` frames and MAX_BATCH_PIXELS input pixels per network call."""
        per_pixels = MAX_BATCH_PIXELS // max(1, frames.shape[-2] * frames.shape[-1])
        return list(frames.split(max(1, min(self.batch_size, per_pixels))))


def load_strict(net: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """`net.load_state_dict(state, strict=True)`, raising one short message that names `what`
    and the first missing, unexpected and mis-shaped keys (torch lists every key)."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise RuntimeError(
            f"{what} does not fit the network: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(shapes)} shape mismatches "
            f"{shapes[:3]}"
        )
    net.load_state_dict(state, strict=True)
