"""Real video VAEs behind the `LatentCodec` contract: HunyuanVideo's and Wan's causal 3D VAEs.

Both compress 8x in space and 4x in time, causally: 1 + 4k pixel frames become 1 + k latent
frames, the first latent encoding the first frame alone. `codecs/base.py` explains how segments map onto
that (the reference image is the causal first frame of every encoded clip). Latents are
normalised as the pipelines that trained on them do:

    HunyuanVideo (FramePack-F1):  z = scaling_factor * (mu - shift_factor)    (0.476986, no shift)
    Wan 2.1:                      z = (mu - latents_mean) / latents_std       (per channel)

using the posterior mean (deterministic, so a latent cache is reproducible) unless
`sample_posterior`. `tiling` / `slicing` switch on the VAE's own tiled (spatial + temporal) and
per-sample encode/decode, trading speed for memory at 480p and long clips. A rollout decodes
each segment after its `decode_context` preceding latent frames (the image latent for the first
segment) and keeps the segment's own frames, so decoding costs the same for every segment;
FramePack decodes with a whole window of overlap (9 latents) and blends, which `decode_context: 9`
approaches (without the blend). Weights load from
`<pretrained_dir>/<subfolder>` (the diffusers layout: `vae/config.json` +
`vae/diffusion_pytorch_model.safetensors`) and stay frozen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from lightning_modules.codecs.base import LatentCodec
from lightning_modules.pretrained.folders import (
    DIFFUSERS_MODEL,
    DType,
    check_folder,
    freeze,
    load_diffusers,
)


class DiffusersVideoVAE(LatentCodec):
    """A causal diffusers video VAE; subclasses name the class and the latent normalisation."""

    vae_class: str
    causal = True

    def __init__(
        self,
        pretrained_dir: str,
        subfolder: str = "vae",
        dtype: DType = "bfloat16",
        tiling: bool = False,
        slicing: bool = False,
        sample_posterior: bool = False,
        decode_context: int = 1,
    ) -> None:
        super().__init__()
        if decode_context < 1:
            raise ValueError(f"decode_context must be >= 1 latent frame, got {decode_context}")
        self.decode_context = decode_context
        folder = check_folder(
            f"{pretrained_dir}/{subfolder}" if subfolder else pretrained_dir,
            f"{type(self).__name__} ({self.vae_class})",
            DIFFUSERS_MODEL,
        )
        self.pretrained_dir = str(folder)
        self._dtype = dtype
        self.tiling, self.slicing = tiling, slicing
        self._load()
        self.sample_posterior = sample_posterior
        self.latent_channels = int(self.vae.config.latent_channels if hasattr(
            self.vae.config, "latent_channels") else self.vae.config.z_dim)  # fmt: skip
        self.spatial_factor = int(self.vae.spatial_compression_ratio)
        self.temporal_factor = self._temporal_factor()

    def _temporal_factor(self) -> int:
        return int(self.vae.temporal_compression_ratio)

    def _load(self) -> None:
        self.vae = freeze(load_diffusers(self.vae_class, Path(self.pretrained_dir), self._dtype))
        if self.tiling:
            self.vae.enable_tiling()
        if self.slicing:
            self.vae.enable_slicing()

    def pretrained_sources(self) -> list[str]:
        """The folder the frozen weights come from: rebuilt from it, never saved in checkpoints
        (`training/frozen_parts.py`)."""
        return [self.pretrained_dir]

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (e.g. in a checkpoint's hyperparameters) without the weights: unpickling
        loads them from `pretrained_dir` again."""
        state = dict(super().__getstate__())  # a copy: the live module keeps its weights
        state["_modules"] = {k: v for k, v in state["_modules"].items() if k != "vae"}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._load()

    def train(self, mode: bool = True) -> DiffusersVideoVAE:
        super().train(mode)
        self.vae.eval()  # frozen: never in train mode, whatever Lightning asks of the module
        return self

    # ------------------------------------------------------------------ normalisation
    def normalize(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def denormalize(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ contract
    def _check_frames(self, frames: int, what: str) -> None:
        if frames != 1 and (frames - 1) % self.temporal_factor:
            raise ValueError(
                f"{type(self).__name__} is causal with temporal factor {self.temporal_factor}: "
                f"{what} must be 1 + k * {self.temporal_factor} frames, got {frames}"
            )

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """video [b, 1 + 4k, 3, H, W] in [-1, 1] -> normalised latents [b, 1 + k, c, H/8, W/8]."""
        self._check_frames(video.shape[1], "the encoded clip")
        x = rearrange(video, "b f c h w -> b c f h w").to(self.vae.dtype)
        dist = self.vae.encode(x).latent_dist
        z = dist.sample() if self.sample_posterior else dist.mode()
        return rearrange(self.normalize(z.float()), "b c f h w -> b f c h w")

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """latents [b, 1 + k, c, h, w] -> video [b, 1 + 4k, 3, 8h, 8w] in [-1, 1]."""
        z = self.denormalize(rearrange(latents.float(), "b f c h w -> b c f h w"))
        video = self.vae.decode(z.to(self.vae.dtype)).sample
        return rearrange(video.float().clamp(-1, 1), "b c f h w -> b f c h w")


class HunyuanVideoVAE(DiffusersVideoVAE):
    """HunyuanVideo's causal 3D VAE (`AutoencoderKLHunyuanVideo`), FramePack-F1's codec.

    Its GroupNorms span time, so a frame's latent depends a little on the frames after it: the
    image latent is encoded alone (as FramePack does at inference), the clip with the image in
    front (see `codecs/base.py`).
    """

    vae_class = "AutoencoderKLHunyuanVideo"

    def normalize(self, z: Tensor) -> Tensor:
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    def denormalize(self, z: Tensor) -> Tensor:
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return z / self.vae.config.scaling_factor + shift


class WanVAE(DiffusersVideoVAE):
    """Wan 2.1's causal 3D VAE (`AutoencoderKLWan`): chunked causal encoding, per-channel stats."""

    vae_class = "AutoencoderKLWan"

    def _temporal_factor(self) -> int:
        config = self.vae.config
        factor = getattr(config, "scale_factor_temporal", None)
        return int(factor or 2 ** sum(bool(d) for d in config.temperal_downsample))

    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.vae.config.latents_mean, device=z.device, dtype=z.dtype)
        std = torch.tensor(self.vae.config.latents_std, device=z.device, dtype=z.dtype)
        return mean[None, :, None, None, None], std[None, :, None, None, None]

    def normalize(self, z: Tensor) -> Tensor:
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z: Tensor) -> Tensor:
        mean, std = self._stats(z)
        return z * std + mean
