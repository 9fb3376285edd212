"""Latent codecs: pixels <-> the latent space the DiT works in.

Interface (what a real VAE wrapper must provide, e.g. HunyuanVideo's VAE loaded from a local path):
`encode(video [b, f, 3, H, W] in [-1, 1]) -> [b, f // temporal_factor, latent_channels, h, w]`,
`decode` the inverse, and the attributes `latent_channels`, `spatial_factor`, `temporal_factor`.
Codecs are frozen: they hold no trainable parameters and never see gradients.

Causal video VAEs (`causal = True`, lightning_modules/hf_codecs.py) map 1 + k*tf frames to 1 + k
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


class PatchPCACodec(LatentCodec):
    """A linear codec learned in closed form: the principal components of p x p RGB patches.

    The demo's stage 0. A video decoded from mp4 is highly redundant at the patch level (4:2:0
    chroma alone halves the dimension of an RGB patch), so the top `components` principal
    directions of the 3 p^2 patch vectors keep almost everything: on the synthetic videos, 16 of
    48 dimensions of a 4 x 4 patch reconstruct at 35 dB. A 4x smaller latent grid means 16x
    fewer DiT tokens per frame than pixels and 4x fewer than the 2x2 space-to-depth latent, and
    a latent whose channels are ordered by energy, as a VAE's roughly are.

    Fitting (`fit`) is PCA, one float64 SVD of sampled patches: deterministic, about a second,
    done when training starts (`VideoDataModule.setup` fits the model's codec on training
    frames) and stored in the checkpoint as buffers. An unfitted codec refuses to encode or
    decode. Latents are scaled by one scalar so that their mean square is 1 (the flow's noise
    scale).
    """

    def __init__(self, patch: int = 4, components: int = 16, fit_frames: int = 2048) -> None:
        super().__init__()
        if patch < 1 or not 1 <= components <= 3 * patch * patch:
            raise ValueError(
                f"PatchPCACodec needs patch >= 1 and 1 <= components <= 3 * patch^2 = "
                f"{3 * patch * patch}, got patch={patch}, components={components}"
            )
        if fit_frames < 1:
            raise ValueError(f"fit_frames must be >= 1, got {fit_frames}")
        self.patch = patch
        self.fit_frames = fit_frames
        self.latent_channels = components
        self.spatial_factor = patch
        self.temporal_factor = 1
        dim = 3 * patch * patch
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.zeros(components, dim))  # rows: principal directions
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def needs_fit(self) -> bool:
        return not bool(self.fitted)

    def _patches(self, frames: Tensor) -> Tensor:
        p = self.patch
        return rearrange(frames, "... c (h p) (w q) -> ... h w (c p q)", p=p, q=p)

    @torch.no_grad()
    def fit(self, frames: Tensor) -> float:
        """PCA on frames [n, 3, H, W] in [-1, 1]; returns their reconstruction PSNR in dB."""
        x = self._patches(frames.double().cpu()).reshape(-1, self.mean.numel())
        mean = x.mean(0)
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        basis = vh[: self.latent_channels]
        coeffs = (x - mean) @ basis.T
        self.mean.copy_(mean)
        self.basis.copy_(basis)
        self.scale.copy_(coeffs.square().mean().sqrt().clamp(min=1e-8))
        self.fitted.fill_(True)
        error = ((coeffs @ basis + mean).clamp(-1, 1) - x).square().mean() / 4  # [0, 1] range
        return float(-10 * torch.log10(error.clamp(min=1e-12)))

    def _check_fitted(self) -> None:
        if self.needs_fit:
            raise RuntimeError(
                "PatchPCACodec is not fitted: train under VideoDataModule (its setup fits the "
                "model's codec on training frames), load a checkpoint that holds it, or call "
                "fit(frames)"
            )

    def encode(self, video: Tensor) -> Tensor:
        self._check_fitted()
        z = (self._patches(video) - self.mean.to(video)) @ self.basis.T.to(video)
        return rearrange(z / self.scale.to(video), "... h w k -> ... k h w")

    def decode(self, latents: Tensor) -> Tensor:
        self._check_fitted()
        z = rearrange(latents * self.scale.to(latents), "... k h w -> ... h w k")
        x = z @ self.basis.to(latents) + self.mean.to(latents)
        p = self.patch
        return rearrange(x, "... h w (c p q) -> ... c (h p) (w q)", p=p, q=p)
