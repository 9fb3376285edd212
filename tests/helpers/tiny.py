"""The one builder of the tiny models and data the tests run on (CPU, seconds).

Sizes: 16 x 16 RGB frames; `SpaceToDepthCodec(2)` makes 12 x 8 x 8 latents, whose 1x2x2 DiT
patches are 16 tokens per latent frame; text features of width 16; DiT and SemanticPack width 32
with 2 heads; psi of 4 memory tokens. A builder takes keyword overrides for what a test varies.
"""

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from datamodules.video_dataset import collate_videos
from lightning_modules.codecs import SpaceToDepthCodec
from lightning_modules.direct_forcing import DirectForcingModule
from lightning_modules.networks.dit import VideoDiT
from lightning_modules.networks.semantic_pack import SemanticPack
from lightning_modules.networks.text_encoder import HashTextEncoder
from lightning_modules.video_module import VideoModule

CHANNELS, TEXT_DIM, WIDTH, MEMORY_TOKENS = 12, 16, 32, 4
F1_PACK = (1, 2, 16)  # FramePack-F1's (1x, 2x, 4x) history: 19 latent frames
SMALL_PACK = (1, 2, 4)  # 7 latent frames: a short video already fills it


def tiny_dit(**kwargs: Any) -> VideoDiT:
    """VideoDiT(12 latent channels, text 16, width 32, depth 2, 2 heads, frame_pack (1, 2, 4))."""
    sizes = {"latent_channels": CHANNELS, "text_dim": TEXT_DIM, "width": WIDTH, "depth": 2,
             "heads": 2, "frame_pack": SMALL_PACK}  # fmt: skip
    return VideoDiT(**{**sizes, **kwargs})


def tiny_pack(**kwargs: Any) -> SemanticPack:
    """SemanticPack(12 latent channels, text 16, width 32, 4 memory tokens, 2 heads)."""
    sizes = {"latent_channels": CHANNELS, "text_dim": TEXT_DIM, "width": WIDTH,
             "memory_tokens": MEMORY_TOKENS, "heads": 2}  # fmt: skip
    return SemanticPack(**{**sizes, **kwargs})


def tiny_parts(
    dit: VideoDiT | None = None,
    semantic_pack: SemanticPack | None = None,
    patch: int = 2,
    text_dim: int = TEXT_DIM,
) -> dict[str, Any]:
    """The networks of a VideoModule: `dit` (default `tiny_dit()`, built after `semantic_pack`,
    which the caller builds first), the space-to-depth codec and the hashed-word text encoder."""
    parts = {
        "dit": dit if dit is not None else tiny_dit(),
        "codec": SpaceToDepthCodec(patch),
        "text_encoder": HashTextEncoder(text_dim),
    }
    return parts if semantic_pack is None else {**parts, "semantic_pack": semantic_pack}


def tiny_module(
    semantic_pack: SemanticPack | None = None,
    dit: VideoDiT | None = None,
    seed: int | None = 0,
    **kwargs: Any,
) -> VideoModule:
    """A stage-1 VideoModule of `tiny_parts`, its DiT seeded by `seed`; `kwargs` are
    VideoModule's (sample_steps, cfg_scale, ...) or, for `context`, the DiT's."""
    if seed is not None:
        torch.manual_seed(seed)
    if dit is None:
        dit = tiny_dit(context=kwargs.pop("context", "framepack"))
    return VideoModule(**tiny_parts(dit, semantic_pack), **kwargs)


def perturb(module: torch.nn.Module, scale: float = 0.05, seed: int | None = 1) -> None:
    """Move every weight off its init: adaLN-Zero, the zero head and the zero memory gates
    block gradients and make the output trivial at exact init."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def tiny_batch(
    b: int = 3, s: int = 3, t: int = 4, lengths: tuple[int, ...] = (1, 3, 2)
) -> dict[str, Any]:
    """A collated batch of `b` random videos of `s` segments of `t` 16 x 16 frames in [-1, 1]."""
    torch.manual_seed(0)
    video = torch.rand(b, s, t, 3, 16, 16) * 2 - 1
    return {
        "video": video,
        "image": video[:, 0, 0],
        "num_segments": torch.tensor(list(lengths)[:b]),
        "caption": ["a red circle", "a blue square", ""][:b],
        "name": [f"v{i}" for i in range(b)],
    }


def video_items(lengths: list[int], t: int = 2, size: int = 8) -> list[dict[str, Any]]:
    """Dataset items (uncollated) of random videos with `lengths` segments of `t` frames."""
    gen = torch.Generator().manual_seed(0)
    items = []
    for i, n in enumerate(lengths):
        video = torch.rand(n, t, 3, size, size, generator=gen) * 2 - 1
        items.append({"video": video, "image": video[0, 0].clone(), "caption": f"clip {i}",
                      "num_segments": n, "name": f"v{i}"})  # fmt: skip
    return items


def save_checkpoint(module: L.LightningModule, path: Path) -> Path:
    """`module` as a Lightning checkpoint (hyperparameters included), as a run would save it."""
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def fit_items(
    module: L.LightningModule, lengths: list[int], batch_size: int = 1, **trainer_kwargs: Any
) -> L.Trainer:
    """One epoch over `video_items(lengths)` on CPU, without logging or checkpoints."""
    loader = DataLoader(video_items(lengths), batch_size=batch_size, collate_fn=collate_videos)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=1, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(module, loader)
    return trainer


def one_block_parts(
    width: int = WIDTH,
    patch: int = 2,
    channels: int = CHANNELS,
    text_dim: int = TEXT_DIM,
    context: str = "framepack",
    memory: bool = False,
) -> dict[str, Any]:
    """The stage-2 tests' stage 1: a one-block DiT (frame_pack (1, 2, 4)), with SemanticPack
    (windows of 2 latent frames) when `memory`."""
    dit = tiny_dit(latent_channels=channels, text_dim=text_dim, width=width, depth=1,
                   context=context)  # fmt: skip
    pack = tiny_pack(latent_channels=channels, text_dim=text_dim, width=width, window_frames=2)
    return tiny_parts(dit, pack if memory else None, patch=patch, text_dim=text_dim)


def stage1_checkpoint(path: Path, **kwargs: Any) -> Path:
    """A 'trained' stage-1 checkpoint of `one_block_parts(**kwargs)` (weights off their init)."""
    module = VideoModule(**one_block_parts(**kwargs))
    perturb(module, seed=None)
    return save_checkpoint(module, path)


def tiny_stage2(ckpt: Path, **kwargs: Any) -> DirectForcingModule:
    """Stage 2 on the checkpoint's architecture (its saved hyperparameters hold the modules)."""
    return DirectForcingModule(init_checkpoint=str(ckpt), warmup_steps=1, lr=1e-2, **kwargs)
