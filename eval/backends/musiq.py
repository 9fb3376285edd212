"""Imaging-quality backend `musiq_spaq`: MUSIQ trained on SPAQ from a local checkpoint (VBench).

Spec: `imaging=musiq_spaq:<path>` (alias `musiq`), the file pyiqa converts and publishes as
`musiq_spaq_ckpt-358bb6af.pth` (a state dict in pyiqa's names; `{"params": ...}` wrappers are
unwrapped). It loads with `strict=True` into `eval/backends/musiq_net.py: MUSIQ`.

Preprocessing as VBench's imaging quality ("longer" mode, its default): a frame whose longer side
exceeds 512 is resized to (int(s H), int(s W)), s = 512 / max(H, W), bilinear without antialiasing
and re-quantised to uint8 (torchvision's `Resize(antialias=False)` on a uint8 video), then / 255;
score = MUSIQ / 100 per frame (about 0..1, higher is better). Frames are scored a few at a time:
at most 512 px per side, a frame is at most 337 patches, so memory is bounded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from eval.backends.base import TorchBackend, load_strict
from eval.backends.musiq_net import MUSIQ
from eval.preprocess import check_frames, resize_longer

__all__ = ["MusiqQuality", "load_musiq"]

MAX_SIDE = 512  # VBench imaging_quality_preprocessing_mode="longer"


def load_musiq(path: str | Path) -> MUSIQ:
    """MUSIQ (one output: SPAQ / KonIQ / PaQ-2-PiQ; ten: AVA) with a local pyiqa checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MUSIQ checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "params" in state and isinstance(state["params"], dict):
        state = state["params"]
    if not isinstance(state, dict) or ("head.weight" not in state and "head.0.weight" not in state):
        raise ValueError(f"{path} is not a pyiqa MUSIQ state dict (no 'head.weight' key)")
    num_class = int(state.get("head.weight", state.get("head.0.weight")).shape[0])
    net = MUSIQ(num_class=num_class)
    load_strict(net, state, f"MUSIQ checkpoint {path}")
    return net


class MusiqQuality(TorchBackend):
    """Per-frame MUSIQ / 100 (ScoreBackend), VBench's imaging quality."""

    batch_size = 4

    def __init__(
        self,
        checkpoint: str | Path | MUSIQ,
        device: str | torch.device | None = None,
        name: str = "musiq_spaq",
    ) -> None:
        net = checkpoint if isinstance(checkpoint, MUSIQ) else load_musiq(checkpoint)
        super().__init__(net, device)
        self.name = name

    @torch.no_grad()
    def scores(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> [T] (MUSIQ / 100)."""
        check_frames(frames, f"{self.name}.scores")
        out = []
        for chunk in self._chunks(frames):
            x = chunk.to(self.device).float()
            if max(x.shape[-2:]) > MAX_SIDE:
                x = resize_longer(x, MAX_SIDE, mode="bilinear", antialias=False)
                x = x.round().clamp(0, 255)  # back to uint8 levels, as VBench's uint8 resize
            out.append(self.module(x / 255.0)[:, 0].double().cpu() / 100.0)
        return torch.cat(out)
