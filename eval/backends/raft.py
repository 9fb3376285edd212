"""Dynamic-degree flow backends `raft_large` / `raft_small`: RAFT from a local checkpoint (VBench).

Spec: `flow=raft_large:<path>` (alias `raft`) or `flow=raft_small:<path>`. The file is either a
torchvision state dict (`raft_large_C_T_V2-1bb1363a.pth`, `raft_small_C_T_V2-01064c6d.pth`, ...)
or, for the large model, the original princeton-vl checkpoint VBench uses (`raft-things.pth`,
renamed by `convert_princeton_state_dict`). It loads with `strict=True`: a wrong architecture or a
truncated file fails naming the keys, never silently.

Preprocessing as VBench's `DynamicDegree`: RGB frames as float, 2 x / 255 - 1, replicate-padded to
multiples of 8 (centred, princeton-vl's InputPadder "sintel" mode), 20 flow updates; the top-5%
magnitude is taken over the padded flow map as VBench does. Bounded memory: the all-pairs
correlation volume grows with (H W / 64)^2 (4.2 GB for one 1080p pair), so frames whose longer
side exceeds `max_side` (1024 by default: VBench's own video sizes pass unchanged) are resized
first (bilinear, antialiased) and the magnitudes rescaled to input pixels. Frames whose shorter
side is below 128 (RAFT's minimum, e.g. the 32-64 px demo renders) are upsampled to 128 alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eval.backends.base import TorchBackend, load_strict
from eval.backends.raft_net import RAFT, convert_princeton_state_dict, raft_large, raft_small

__all__ = ["RaftFlow", "load_raft"]

MAX_SIDE = 1024
MIN_SIDE = 128  # RAFT's smallest input (the 1/64 correlation level needs 2 cells per side)
ITERATIONS = 20  # VBench: model(image1, image2, iters=20, test_mode=True)


def load_raft(path: str | Path, size: str = "large") -> RAFT:
    """RAFT `size` ('large' / 'small') with the weights of a local torchvision or princeton file."""
    if size not in ("large", "small"):
        raise ValueError(f"load_raft: size must be 'large' or 'small', got {size!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RAFT checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"RAFT checkpoint {path} holds a {type(state).__name__}, not a state dict")
    if any(k.removeprefix("module.").startswith("fnet.") for k in state):
        if size != "large":
            raise ValueError(
                f"{path} is a princeton-vl checkpoint; only the large one converts (raft_large)"
            )
        state = convert_princeton_state_dict(state)
    net = raft_large() if size == "large" else raft_small()
    load_strict(net, state, f"RAFT checkpoint {path} (raft_{size})")
    return net


class RaftFlow(TorchBackend):
    """Per-pixel RAFT flow magnitude for dynamic degree (FlowBackend)."""

    def __init__(
        self,
        checkpoint: str | Path | RAFT,
        size: str = "large",
        iterations: int = ITERATIONS,
        max_side: int = MAX_SIDE,
        device: str | torch.device | None = None,
    ) -> None:
        if iterations < 1:
            raise ValueError(f"RaftFlow: iterations must be >= 1, got {iterations!r}")
        if max_side < 64:
            raise ValueError(f"RaftFlow: max_side must be >= 64, got {max_side!r}")
        net = checkpoint if isinstance(checkpoint, RAFT) else load_raft(checkpoint, size)
        super().__init__(net, device)
        self.name = f"raft_{size}"
        self.iterations, self.max_side = iterations, max_side

    def _scale(self, image: np.ndarray) -> float:
        """Resize factor applied before the network: < 1 above max_side, > 1 below MIN_SIDE."""
        h, w = image.shape[:2]
        if min(h, w) < MIN_SIDE:
            return MIN_SIDE / min(h, w)
        return min(1.0, self.max_side / max(h, w))

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"RaftFlow: expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        h, w = image.shape[:2]
        scale = self._scale(image)
        if scale != 1.0:
            size = (max(MIN_SIDE, round(h * scale)), max(MIN_SIDE, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        pad_h, pad_w = (-x.shape[-2]) % 8, (-x.shape[-1]) % 8
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        x = F.pad(x, pads, mode="replicate")
        return (2 * (x / 255.0) - 1.0).to(self.device)

    @torch.no_grad()
    def flow(self, first: np.ndarray, second: np.ndarray) -> torch.Tensor:
        """Flow [2, H', W'] (padded, possibly resized grid) from `first` to `second`, on CPU."""
        a, b = self._prepare(first), self._prepare(second)
        return self.module(a, b, self.iterations, all_predictions=False)[-1][0].float().cpu()

    def flow_magnitude(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Per-pixel |flow| on the padded grid, in pixels of the input frames."""
        return (self.flow(first, second).norm(dim=0) / self._scale(first)).numpy()
