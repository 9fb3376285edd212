"""RAFT optical flow (Teed & Deng 2020) in plain torch, laid out like torchvision's implementation.

Module and parameter names follow `torchvision.models.optical_flow.raft` (`raft_large` /
`raft_small`), so torchvision's state-dict files (`raft_large_C_T_V2-1bb1363a.pth`,
`raft_small_C_T_V2-01064c6d.pth`, ...) load with `strict=True`; `convert_princeton_state_dict`
renames the original princeton-vl checkpoint (`raft-things.pth`, the one VBench loads) to the same
names. torchvision itself is not a dependency (its PyPI wheels do not import beside the pinned
torch). Written from the paper and torchvision's documented architecture, not copied:

- feature / context encoders: 7x7 stride-2 conv, three stages of two residual (large) or
  bottleneck (small) blocks, 1x1 output conv: 1/8 resolution. Instance norm in the feature
  encoder; batch norm (large) or none (small) in the context encoder, whose output is split into
  the GRU's initial hidden state (tanh) and the context (ReLU).
- correlation: all-pairs dot products / sqrt(C), a 4-level average-pooled pyramid, looked up in a
  (2r + 1)^2 window (r = 4 large, 3 small) around the current match at each level.
- update: motion encoder (correlation + flow convs), a separable (1x5, 5x1) ConvGRU (large) or a
  3x3 ConvGRU (small), a flow head predicting the flow increment; the large model upsamples x8
  with a learned convex mask (x 0.25, as the original), the small one bilinearly.

Inputs: float images in [-1, 1] (2 x / 255 - 1), [B, 3, H, W] with H, W multiples of 8 and at
least 128 (torchvision's limit: the coarsest correlation level needs 2 cells per side).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RAFT", "RaftConfig", "convert_princeton_state_dict", "raft_large", "raft_small"]


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


class CorrBlock(nn.Module):
    """All-pairs correlation pyramid and its windowed lookup (no parameters)."""

    def __init__(self, num_levels: int = 4, radius: int = 4) -> None:
        super().__init__()
        self.num_levels, self.radius = num_levels, radius
        self.out_channels = num_levels * (2 * radius + 1) ** 2
        self.pyramid: list[torch.Tensor] = []

    def build_pyramid(self, fmap1: torch.Tensor, fmap2: torch.Tensor) -> None:
        b, c, h, w = fmap1.shape
        # The coarsest level needs >= 2 cells per side, or the lookup divides by zero.
        smallest = 2**self.num_levels
        if min(h, w) < smallest:
            raise ValueError(
                f"RAFT: feature maps {h}x{w} are too small for {self.num_levels} correlation levels; "
                f"input images need H, W >= {8 * smallest}"
            )
        corr = (
            fmap1.flatten(2).transpose(1, 2) @ fmap2.flatten(2) / torch.sqrt(torch.tensor(float(c)))
        )
        volume = corr.reshape(b * h * w, 1, h, w)
        self.pyramid = [volume]
        for _ in range(self.num_levels - 1):
            volume = F.avg_pool2d(volume, kernel_size=2, stride=2)
            self.pyramid.append(volume)

    def index_pyramid(self, coords: torch.Tensor) -> torch.Tensor:
        """Correlation features [B, levels (2r+1)^2, h, w] around `coords` [B, 2, h, w] (x, y)."""
        side = 2 * self.radius + 1
        steps = torch.linspace(-self.radius, self.radius, side, device=coords.device)
        # Window offsets: the first grid axis moves x, the second y (the original's layout).
        delta = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1).view(
            1, side, side, 2
        )
        b, _, h, w = coords.shape
        centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = []
        for level, volume in enumerate(self.pyramid):
            points = centre / 2**level + delta
            vh, vw = volume.shape[-2:]
            grid = torch.cat(
                [2 * points[..., :1] / (vw - 1) - 1, 2 * points[..., 1:] / (vh - 1) - 1], -1
            )
            sampled = F.grid_sample(volume, grid, mode="bilinear", align_corners=True)
            out.append(sampled.view(b, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


def _coords_grid(batch: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    return torch.stack([xs, ys]).float()[None].repeat(batch, 1, 1, 1)


def _upsample(flow: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x8 flow upsampling: convex combination of 3x3 neighbours (mask) or bilinear."""
    b, _, h, w = flow.shape
    if mask is None:
        return 8 * F.interpolate(flow, size=(8 * h, 8 * w), mode="bilinear", align_corners=True)
    weights = torch.softmax(mask.view(b, 1, 9, 8, 8, h, w), dim=2)
    patches = F.unfold(8 * flow, kernel_size=3, padding=1).view(b, 2, 9, 1, 1, h, w)
    up = (weights * patches).sum(dim=2)  # [b, 2, 8, 8, h, w]
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, 8 * h, 8 * w)


@dataclass(frozen=True)
class RaftConfig:
    """Hyper-parameters of torchvision's `raft_large` / `raft_small`."""

    block: str
    feature_layers: tuple[int, ...]
    context_layers: tuple[int, ...]
    context_norm: str | None
    radius: int
    corr_layers: tuple[int, ...]
    flow_layers: tuple[int, int]
    motion_out: int
    hidden: int
    gru_kernels: tuple[tuple[int, int], ...]
    head_hidden: int
    mask: bool


LARGE = RaftConfig("residual", (64, 64, 96, 128, 256), (64, 64, 96, 128, 256), "batch", 4,
                   (256, 192), (128, 64), 128, 128, ((1, 5), (5, 1)), 256, True)  # fmt: skip
SMALL = RaftConfig("bottleneck", (32, 32, 64, 96, 128), (32, 32, 64, 96, 160), None, 3,
                   (96,), (64, 32), 82, 96, ((3, 3),), 128, False)  # fmt: skip


class RAFT(nn.Module):
    """RAFT; `forward` returns the upsampled flow [B, 2, H, W] after every update, as torchvision."""

    def __init__(self, config: RaftConfig) -> None:
        super().__init__()
        block = ResidualBlock if config.block == "residual" else BottleneckBlock
        self.feature_encoder = FeatureEncoder(block, config.feature_layers, "instance")
        self.context_encoder = FeatureEncoder(block, config.context_layers, config.context_norm)
        self.corr_block = CorrBlock(4, config.radius)
        motion = MotionEncoder(
            self.corr_block.out_channels, config.corr_layers, config.flow_layers, config.motion_out
        )
        context = config.context_layers[-1] - config.hidden
        recurrent = RecurrentBlock(config.motion_out + context, config.hidden, config.gru_kernels)
        self.update_block = UpdateBlock(
            motion, recurrent, FlowHead(config.hidden, config.head_hidden)
        )
        self.mask_predictor = MaskPredictor(config.hidden) if config.mask else None

    def forward(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        num_flow_updates: int = 12,
        all_predictions: bool = True,
    ) -> list[torch.Tensor]:
        """Flow from image1 to image2 (inputs in [-1, 1]); only the last one if not all_predictions."""
        b, _, h, w = image1.shape
        if image2.shape != image1.shape or h % 8 or w % 8:
            raise ValueError(
                f"RAFT: images must share a shape with H, W multiples of 8, got {tuple(image1.shape)} "
                f"and {tuple(image2.shape)}"
            )
        fmap1, fmap2 = self.feature_encoder(torch.cat([image1, image2])).chunk(2)
        self.corr_block.build_pyramid(fmap1, fmap2)
        context_out = self.context_encoder(image1)
        hidden_size = self.update_block.hidden_state_size
        hidden, context = context_out.split(
            [hidden_size, context_out.shape[1] - hidden_size], dim=1
        )
        hidden, context = torch.tanh(hidden), F.relu(context)
        coords0 = _coords_grid(b, h // 8, w // 8, image1.device)
        coords1 = coords0.clone()
        predictions = []
        for step in range(num_flow_updates):
            coords1 = coords1.detach()
            corr = self.corr_block.index_pyramid(coords1)
            hidden, delta = self.update_block(hidden, context, corr, coords1 - coords0)
            coords1 = coords1 + delta
            if all_predictions or step == num_flow_updates - 1:
                mask = None if self.mask_predictor is None else self.mask_predictor(hidden)
                predictions.append(_upsample(coords1 - coords0, mask))
        self.corr_block.pyramid = []  # free the correlation volume
        return predictions


def raft_large() -> RAFT:
    """torchvision's `raft_large` architecture (5.26 M parameters), random weights."""
    return RAFT(LARGE)


def raft_small() -> RAFT:
    """torchvision's `raft_small` architecture (0.99 M parameters), random weights."""
    return RAFT(SMALL)


# princeton-vl RAFT (large) names -> torchvision names, first matching prefix wins.
_PRINCETON_PREFIXES = (
    ("fnet.conv1.", "feature_encoder.convnormrelu.0."),
    ("fnet.conv2.", "feature_encoder.conv."),
    ("cnet.conv1.", "context_encoder.convnormrelu.0."),
    ("cnet.norm1.", "context_encoder.convnormrelu.1."),
    ("cnet.conv2.", "context_encoder.conv."),
    ("update_block.encoder.convc1.", "update_block.motion_encoder.convcorr1.0."),
    ("update_block.encoder.convc2.", "update_block.motion_encoder.convcorr2.0."),
    ("update_block.encoder.convf1.", "update_block.motion_encoder.convflow1.0."),
    ("update_block.encoder.convf2.", "update_block.motion_encoder.convflow2.0."),
    ("update_block.encoder.conv.", "update_block.motion_encoder.conv.0."),
    ("update_block.flow_head.", "update_block.flow_head."),
    ("update_block.mask.0.", "mask_predictor.convrelu.0."),
    ("update_block.mask.2.", "mask_predictor.conv."),
)
_PRINCETON_BLOCK = {"conv1": "convnormrelu1.0", "norm1": "convnormrelu1.1", "conv2": "convnormrelu2.0",
                    "norm2": "convnormrelu2.1", "downsample.0": "downsample.0", "downsample.1": "downsample.1"}  # fmt: skip


def convert_princeton_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """princeton-vl RAFT (large, e.g. `raft-things.pth`, keys `module.fnet...`) -> torchvision names.

    The residual blocks' `norm3` is the same module as `downsample.1` there (stored twice); the
    duplicate is dropped. Raises naming the first key it cannot place.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if ".norm3." in key:
            continue
        name = key.replace("update_block.gru.", "update_block.recurrent_block.")
        for old, new in (("convz1", "convgru1.convz"), ("convr1", "convgru1.convr"), ("convq1", "convgru1.convq"),
                         ("convz2", "convgru2.convz"), ("convr2", "convgru2.convr"), ("convq2", "convgru2.convq")):  # fmt: skip
            name = name.replace(f"recurrent_block.{old}.", f"recurrent_block.{new}.")
        if name.startswith(("fnet.layer", "cnet.layer")):
            net, layer, index, rest = name.split(".", 3)
            part, _, param = rest.rpartition(".")
            if part not in _PRINCETON_BLOCK:
                raise KeyError(f"convert_princeton_state_dict: unknown key {key!r}")
            encoder = "feature_encoder" if net == "fnet" else "context_encoder"
            name = f"{encoder}.{layer}.{index}.{_PRINCETON_BLOCK[part]}.{param}"
        elif not name.startswith("update_block.recurrent_block."):
            for old, new in _PRINCETON_PREFIXES:
                if name.startswith(old):
                    name = new + name[len(old) :]
                    break
            else:
                raise KeyError(f"convert_princeton_state_dict: unknown key {key!r}")
        out[name] = value
    return out
