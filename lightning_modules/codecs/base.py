"""Latent codecs: pixels <-> the latent space the backbone works in; the pixel convention.

Interface (what a real VAE wrapper must provide, e.g. HunyuanVideo's VAE loaded from a local path):
`encode(video [b, f, 3, H, W] in [-1, 1]) -> [b, f // temporal_factor, latent_channels, h, w]`,
`decode` the inverse, and the attributes `latent_channels`, `spatial_factor`, `temporal_factor`.
Codecs are frozen: they hold no trainable parameters and never see gradients.

Causal video VAEs (`causal = True`, lightning_modules/pretrained/vae.py) map 1 + k*tf frames to 1 + k
latent frames: the first latent frame encodes one pixel frame alone. The rest of the code works in
segments of whole latent frames, so those codecs see a video through two methods:
`encode_video(video, image)` encodes the reference image followed by the video frames in ONE call
(the image is the causal first frame, as in FramePack, which encodes the whole history) and drops
the image's latent, so segment s of T = frames / tf latents is latents[:, s*T:(s+1)*T] and the
image latent (encoded alone) sits before latent 0, at temporal RoPE index 0; and
`decode_continuation(context, latents)` decodes generated latents after the latent frames that
precede them and keeps only their frames. Frame-independent codecs ignore the context.
"""

from abc import ABC, abstractmethod

import torch
from einops import rearrange
from torch import Tensor, nn


class LatentCodec(nn.Module, ABC):
    """Base class of every codec; subclasses set the three attributes in __init__."""

    latent_channels: int
    spatial_factor: int
    temporal_factor: int
    causal: bool = False  # True: the first latent frame encodes the first pixel frame alone
    decode_context: int = 1  # causal codecs: latent frames a segment is decoded after (>= 1)

    @abstractmethod
    def encode(self, video: Tensor) -> Tensor: ...

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor: ...

    def encode_video(self, video: Tensor, image: Tensor | None = None) -> Tensor:
        """Latents [b, f // temporal_factor, c, h, w] of the frames `video` [b, f, 3, H, W] that
        follow the reference `image` [b, 3, H, W] (needed by causal codecs: see module doc)."""
        if not self.causal:
            return self.encode(video)
        if image is None:
            raise ValueError(f"{type(self).__name__} is causal: encode_video needs the image")
        return self.encode(torch.cat((image[:, None].to(video), video), dim=1))[:, 1:]

    def decode_continuation(self, context: Tensor, latents: Tensor) -> Tensor:
        """Pixel frames [b, T * temporal_factor, 3, H, W] of `latents` [b, T, ...] generated after
        the latent frames `context` [b, P, ...] (the image latent first, then earlier segments)."""
        if not self.causal:
            return self.decode(latents)
        video = self.decode(torch.cat((context.to(latents), latents), dim=1))
        return video[:, -latents.shape[1] * self.temporal_factor :]

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


def to_uint8(frames: Tensor) -> Tensor:
    """[-1, 1] float frames -> uint8, the format videos are written and scored in."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
