"""RAFT's building blocks (Teed & Deng 2020): encoders, the ConvGRU update and the flow heads.

Module and parameter names follow torchvision's `models.optical_flow.raft`, so its state dicts load
with `strict=True` into `eval/backends/raft_net.py`'s `RAFT`, which assembles these blocks with the
correlation pyramid. Written from the paper and torchvision's documented architecture, not copied.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ResidualBlock",
    "BottleneckBlock",
    "FeatureEncoder",
    "MotionEncoder",
    "ConvGRU",
    "RecurrentBlock",
    "FlowHead",
    "UpdateBlock",
    "MaskPredictor",
]


def _conv_norm_act(
    c_in: int, c_out: int, kernel: int, stride: int = 1, norm: str | None = None, act: bool = True
) -> nn.Sequential:
    """conv (bias), optional norm, optional ReLU: torchvision's Conv2dNormActivation layout."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2)]
    if norm == "instance":
        layers.append(nn.InstanceNorm2d(c_out))
    elif norm == "batch":
        layers.append(nn.BatchNorm2d(c_out))
    elif norm is not None:
        raise ValueError(f"unknown norm {norm!r}; expected 'instance', 'batch' or None")
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 conv-norm-ReLU; 1x1 projection of the input when strided."""

    def __init__(self, c_in: int, c_out: int, norm: str | None, stride: int = 1) -> None:
        super().__init__()
        self.convnormrelu1 = _conv_norm_act(c_in, c_out, 3, stride, norm)
        self.convnormrelu2 = _conv_norm_act(c_out, c_out, 3, 1, norm)
        self.downsample: nn.Module = (
            nn.Identity() if stride == 1 else _conv_norm_act(c_in, c_out, 1, stride, norm, False)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convnormrelu2(self.convnormrelu1(x))
        return self.relu(self.downsample(x) + y)


class BottleneckBlock(nn.Module):
    """1x1 (c_out / 4), 3x3 (strided), 1x1 (c_out) conv-norm-ReLU; projection when strided."""

    def __init__(self, c_in: int, c_out: int, norm: str | None, stride: int = 1) -> None:
        super().__init__()
        mid = c_out // 4
        self.convnormrelu1 = _conv_norm_act(c_in, mid, 1, 1, norm)
        self.convnormrelu2 = _conv_norm_act(mid, mid, 3, stride, norm)
        self.convnormrelu3 = _conv_norm_act(mid, c_out, 1, 1, norm)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = (
            nn.Identity() if stride == 1 else _conv_norm_act(c_in, c_out, 1, stride, norm, False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convnormrelu3(self.convnormrelu2(self.convnormrelu1(x)))
        return self.relu(self.downsample(x) + y)


class FeatureEncoder(nn.Module):
    """Feature / context encoder: output at 1/8 resolution with `layers[4]` channels."""

    def __init__(self, block: type[nn.Module], layers: tuple[int, ...], norm: str | None) -> None:
        super().__init__()
        self.convnormrelu = _conv_norm_act(3, layers[0], 7, 2, norm)
        self.layer1 = nn.Sequential(
            block(layers[0], layers[1], norm, 1), block(layers[1], layers[1], norm)
        )
        self.layer2 = nn.Sequential(
            block(layers[1], layers[2], norm, 2), block(layers[2], layers[2], norm)
        )
        self.layer3 = nn.Sequential(
            block(layers[2], layers[3], norm, 2), block(layers[3], layers[3], norm)
        )
        self.conv = nn.Conv2d(layers[3], layers[4], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.layer3(self.layer2(self.layer1(self.convnormrelu(x)))))


class MotionEncoder(nn.Module):
    """Encodes correlation features and the current flow; the flow is appended to the output."""

    def __init__(
        self,
        corr_channels: int,
        corr_layers: tuple[int, ...],
        flow_layers: tuple[int, int],
        out: int,
    ) -> None:
        super().__init__()
        self.convcorr1 = _conv_norm_act(corr_channels, corr_layers[0], 1)
        self.convcorr2: nn.Module = (
            _conv_norm_act(corr_layers[0], corr_layers[1], 3)
            if len(corr_layers) == 2
            else nn.Identity()
        )
        self.convflow1 = _conv_norm_act(2, flow_layers[0], 7)
        self.convflow2 = _conv_norm_act(flow_layers[0], flow_layers[1], 3)
        self.conv = _conv_norm_act(corr_layers[-1] + flow_layers[1], out - 2, 3)
        self.out_channels = out

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = self.convcorr2(self.convcorr1(corr))
        f = self.convflow2(self.convflow1(flow))
        return torch.cat([self.conv(torch.cat([c, f], dim=1)), flow], dim=1)


class ConvGRU(nn.Module):
    """Convolutional GRU cell: z, r gates and candidate q from [h, x]."""

    def __init__(
        self, inputs: int, hidden: int, kernel: tuple[int, int], padding: tuple[int, int]
    ) -> None:
        super().__init__()
        self.convz = nn.Conv2d(hidden + inputs, hidden, kernel, padding=padding)
        self.convr = nn.Conv2d(hidden + inputs, hidden, kernel, padding=padding)
        self.convq = nn.Conv2d(hidden + inputs, hidden, kernel, padding=padding)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z, r = torch.sigmoid(self.convz(hx)), torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


class RecurrentBlock(nn.Module):
    """One or two ConvGRU cells applied in sequence (horizontal then vertical for the large model)."""

    def __init__(self, inputs: int, hidden: int, kernels: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        pads = [((k[0] - 1) // 2, (k[1] - 1) // 2) for k in kernels]
        self.convgru1 = ConvGRU(inputs, hidden, kernels[0], pads[0])
        self.convgru2 = ConvGRU(inputs, hidden, kernels[1], pads[1]) if len(kernels) == 2 else None
        self.hidden_size = hidden

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.convgru1(h, x)
        return h if self.convgru2 is None else self.convgru2(h, x)


class FlowHead(nn.Module):
    """3x3 conv, ReLU, 3x3 conv -> flow increment (2 channels)."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    """Motion encoder + recurrent block + flow head."""

    def __init__(
        self, motion_encoder: MotionEncoder, recurrent_block: RecurrentBlock, flow_head: FlowHead
    ) -> None:
        super().__init__()
        self.motion_encoder = motion_encoder
        self.recurrent_block = recurrent_block
        self.flow_head = flow_head
        self.hidden_state_size = recurrent_block.hidden_size

    def forward(
        self, hidden: torch.Tensor, context: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([context, self.motion_encoder(flow, corr)], dim=1)
        hidden = self.recurrent_block(hidden, x)
        return hidden, self.flow_head(hidden)


class MaskPredictor(nn.Module):
    """Convex upsampling weights (8 x 8 x 9 per low-resolution pixel), scaled by 0.25."""

    def __init__(self, inputs: int, hidden: int = 256, multiplier: float = 0.25) -> None:
        super().__init__()
        self.convrelu = _conv_norm_act(inputs, hidden, 3)
        self.conv = nn.Conv2d(hidden, 8 * 8 * 9, 1)
        self.multiplier = multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.multiplier * self.conv(self.convrelu(x))
