"""Latent codecs: pixels <-> the latent space the DiT works in.

Interface (what a real VAE wrapper must provide, e.g. HunyuanVideo's VAE loaded from a local path):
`encode(video [b, f, 3, H, W] in [-1, 1]) -> [b, f // temporal_factor, latent_channels, h, w]`,
`decode` the inverse, and the attributes `latent_channels`, `spatial_factor`, `temporal_factor`.
Codecs are frozen: they hold no trainable parameters and never see gradients.
"""

from abc import ABC, abstractmethod

from einops import rearrange
from torch import Tensor, nn


class LatentCodec(nn.Module, ABC):
    """Base class of every codec; subclasses set the three attributes in __init__."""

    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    @abstractmethod
    def encode(self, video: Tensor) -> Tensor: ...

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor: ...

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        if height % self.spatial_factor or width % self.spatial_factor:
            raise ValueError(
                f"resolution {height}x{width} is not divisible by the codec's spatial factor "
                f"{self.spatial_factor}"
            )
        return height // self.spatial_factor, width // self.spatial_factor


class SpaceToDepthCodec(LatentCodec):
    """Weight-free, exactly invertible default: p x p pixel patches become channels.

    A 3 x 32 x 32 frame with patch 4 is a 48 x 8 x 8 latent. `scale` maps [-1, 1] pixels to a
    latent of roughly unit variance, as a trained VAE's scaling factor does.
    """

    def __init__(self, patch: int = 4, channels: int = 3, scale: float = 2.0) -> None:
        super().__init__()
        if patch < 1:
            raise ValueError(f"codec patch must be >= 1, got {patch}")
        self.patch = patch
        self.scale = scale
        self.latent_channels = channels * patch * patch
        self.spatial_factor = patch
        self.temporal_factor = 1

    def encode(self, video: Tensor) -> Tensor:
        p = self.patch
        return self.scale * rearrange(video, "b f c (h p) (w q) -> b f (c p q) h w", p=p, q=p)

    def decode(self, latents: Tensor) -> Tensor:
        p = self.patch
        return rearrange(latents / self.scale, "b f (c p q) h w -> b f c (h p) (w q)", p=p, q=p)
