"""Latent codecs (pixels <-> latents): the interface, the weight-free default and patch PCA.

Pretrained video VAEs implement the same interface in `lightning_modules/pretrained/vae.py`.
"""

from lightning_modules.codecs.base import LatentCodec, SpaceToDepthCodec, to_uint8
from lightning_modules.codecs.patch_pca import PatchPCACodec

__all__ = ["LatentCodec", "PatchPCACodec", "SpaceToDepthCodec", "to_uint8"]
