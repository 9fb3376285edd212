"""PatchPCACodec: the demo's latent codec, fitted in closed form on training frames (stage 0)."""

import torch
from einops import rearrange
from torch import Tensor

from lightning_modules.codecs.base import LatentCodec


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
