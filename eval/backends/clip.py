"""Real backends from OpenAI CLIP TorchScript archives (`ViT-B-32.pt`, `ViT-L-14.pt`), local files only.

`clip_vitb32`: background consistency features (512-d image embedding).
`clip_vitl14_laion`: aesthetic quality = LAION linear head (768 -> 1) on the L2-normalised ViT-L/14
embedding, divided by 10 (METRICS.md). Preprocess: shorter side 224 bicubic, centre crop, CLIP norm.

The archives were traced on CUDA in fp16; like `clip.load(jit=True, device="cpu")` we rewrite the
graph's CUDA-device and fp16-cast constants to the target device and fp32 before running it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eval.backends.base import TorchBackend
from eval.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop,
    check_frames,
    normalize,
    resize_shorter,
    to_unit_float,
)

__all__ = ["ClipAesthetic", "ClipFeatures", "load_clip_jit", "load_laion_head"]

_FLOAT16 = 5  # ScalarType code of torch.float16 in TorchScript graphs


def _node_value(node: torch.Node) -> object:
    # Node["value"] was removed from the TorchScript API; dispatch on the attribute kind instead.
    return getattr(node, node.kindOf("value"))("value")


def _graphs(module: torch.jit.ScriptModule) -> list[torch.Graph]:
    graphs = []
    for sub in module.modules():
        if hasattr(sub, "graph"):
            graphs.append(sub.graph)
        if hasattr(sub, "forward1"):
            graphs.append(sub.forward1.graph)
    if hasattr(module, "encode_image"):
        graphs.append(module.encode_image.graph)
    return graphs


def _patch_constants(module: torch.jit.ScriptModule, device: torch.device) -> None:
    """Replace hard-coded CUDA devices and fp16 casts in the traced graphs (as clip.load does)."""
    device_holder = torch.jit.trace(lambda: torch.ones([]).to(device), example_inputs=[])
    device_node = next(
        n for n in device_holder.graph.findAllNodes("prim::Constant") if "Device" in repr(n)
    )
    float_holder = torch.jit.trace(lambda: torch.ones([]).float(), example_inputs=[])
    float_node = list(float_holder.graph.findNode("aten::to").inputs())[1].node()
    for graph in _graphs(module):
        for node in graph.findAllNodes("prim::Constant"):
            if "value" in node.attributeNames() and str(_node_value(node)).startswith("cuda"):
                node.copyAttributes(device_node)
        for node in graph.findAllNodes("aten::to"):
            inputs = list(node.inputs())
            for i in (
                1,
                2,
            ):  # dtype is the 2nd input of aten::to(x, dtype) / 3rd of (x, dev, dtype)
                if i < len(inputs):
                    const = inputs[i].node()
                    if "value" in const.attributeNames() and _node_value(const) == _FLOAT16:
                        const.copyAttributes(float_node)


def load_clip_jit(path: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """Load an OpenAI CLIP TorchScript archive on `device` (default CPU) in fp32."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP TorchScript archive not found: {path}")
    target = torch.device(device) if device is not None else torch.device("cpu")
    model = torch.jit.load(str(path), map_location=target).eval()
    if not hasattr(model, "encode_image"):
        raise ValueError(f"{path} is not a CLIP archive: it has no encode_image method")
    _patch_constants(model, target)
    return model.float()


def load_laion_head(path: str | Path) -> nn.Linear:
    """LAION aesthetic linear head (768 -> 1) from a local state dict (`sa_0_4_vit_l_14_linear.pth`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LAION aesthetic head not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = {k.rsplit(".", 1)[-1]: v for k, v in state.items()}
    if set(weights) != {"weight", "bias"} or weights["weight"].ndim != 2:
        raise ValueError(f"{path}: expected one Linear layer state dict, got keys {list(state)}")
    head = nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0])
    head.load_state_dict(weights)
    return head


class _ClipImage(TorchBackend):
    """Shared CLIP preprocessing and chunked `encode_image`."""

    def __init__(self, model: nn.Module, device: torch.device | None, size: int) -> None:
        super().__init__(model, device)
        self.size = size

    def to(self, device: str | torch.device) -> _ClipImage:
        # A traced graph keeps its device constants; moving would need reloading, so refuse clearly.
        if torch.device(device) != self.device:
            raise RuntimeError(
                f"{self.name}: load the CLIP archive on {device} instead of moving it"
            )
        return self

    def _embed(self, frames: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in self._chunks(frames):
            x = resize_shorter(to_unit_float(chunk.to(self.device)), self.size, "bicubic")
            x = normalize(center_crop(x, self.size), CLIP_MEAN, CLIP_STD)
            out.append(self.module.encode_image(x).float())
        return torch.cat(out)


class ClipFeatures(_ClipImage):
    """Background-consistency features: CLIP image embeddings (ViT-B/32 in VBench)."""

    def __init__(
        self,
        checkpoint: str | Path,
        device: str | torch.device | None = None,
        size: int = 224,
        name: str = "clip_vitb32",
    ) -> None:
        super().__init__(load_clip_jit(checkpoint, device), device, size)
        self.name = name

    @torch.no_grad()
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> [T, d] on CPU."""
        check_frames(frames, "ClipFeatures.features")
        return self._embed(frames).cpu()


class ClipAesthetic(_ClipImage):
    """LAION aesthetic predictor: head(norm(CLIP ViT-L/14 embedding)) / 10 per frame."""

    def __init__(
        self,
        checkpoint: str | Path,
        head_checkpoint: str | Path,
        device: str | torch.device | None = None,
        size: int = 224,
        name: str = "clip_vitl14_laion",
    ) -> None:
        super().__init__(load_clip_jit(checkpoint, device), device, size)
        self.head = load_laion_head(head_checkpoint).to(self.device).eval()
        self.name = name

    @torch.no_grad()
    def scores(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> [T] (about 0..1)."""
        check_frames(frames, "ClipAesthetic.scores")
        emb = F.normalize(self._embed(frames), dim=-1)  # normalised BEFORE the head (METRICS.md)
        return (self.head(emb).squeeze(-1) / 10).double().cpu()
