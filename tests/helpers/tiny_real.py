"""The real-backbone classes at tiny size, built outside the CLI (`configs/framepack_f1/small.yaml`'s
architecture on the folders `lightning_modules/pretrained/tiny.py` writes)."""

from pathlib import Path
from typing import Any

import torch

from lightning_modules.networks.semantic_pack import SemanticPack
from lightning_modules.pretrained.framepack_backbone import FramePackBackbone
from lightning_modules.pretrained.text_encoders import HunyuanTextEncoder
from lightning_modules.pretrained.vae import HunyuanVideoVAE
from lightning_modules.video_module import VideoModule

SMALL_DIT = dict(
    in_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
    num_single_layers=1, num_refiner_layers=1, text_embed_dim=32, pooled_projection_dim=16,
    image_proj_dim=24, rope_axes_dim=(4, 6, 6), image_tokens=4,
)  # fmt: skip


def real_parts(tiny: Path, folders: dict[str, Path] | None = None) -> dict[str, Any]:
    """FramePack-F1 backbone, HunyuanVideo VAE, LLaMA + CLIP + SigLIP encoder and SemanticPack
    of `small.yaml`; `folders` replaces the `framepack`, `hunyuan` or `siglip` folder."""
    f = {"framepack": tiny / "framepack", "hunyuan": tiny / "hunyuan", "siglip": tiny / "siglip"}
    f.update(folders or {})
    torch.manual_seed(0)
    return {
        "dit": FramePackBackbone(str(f["framepack"]), **SMALL_DIT),
        "codec": HunyuanVideoVAE(str(f["hunyuan"]), dtype="float32"),
        "text_encoder": HunyuanTextEncoder(
            str(f["hunyuan"]), str(f["siglip"]), max_tokens=16, crop_start=None, dtype="float32"
        ),
        "semantic_pack": SemanticPack(
            latent_channels=4,
            text_dim=32,
            width=32,
            memory_tokens=4,
            window_frames=2,
            patch=(1, 2, 2),
            heads=2,
        ),  # fmt: skip
    }


def real_module(tiny: Path, folders: dict[str, Path] | None = None, **kwargs: Any) -> VideoModule:
    """A stage-1 VideoModule of `real_parts` (kwargs: VideoModule's, e.g. adapters)."""
    return VideoModule(**real_parts(tiny, folders), **{"prompt_dropout": 0.0, **kwargs})


def real_batch(b: int = 2, segments: int = 2, seed: int = 0) -> dict[str, Any]:
    """Pixel videos at 32 x 32 with 8-frame segments (2 latent frames: temporal factor 4)."""
    gen = torch.Generator().manual_seed(seed)
    video = torch.rand(b, segments, 8, 3, 32, 32, generator=gen) * 2 - 1
    return {
        "video": video, "image": video[:, 0, 0], "num_segments": torch.full((b,), segments),
        "caption": ["a red circle bounces", "a blue square"][:b], "name": [f"v{i}" for i in range(b)],
    }  # fmt: skip
