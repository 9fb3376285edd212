"""What MemoryPack needs from a denoiser: the contract both backbones implement.

`VideoDiT` (networks/dit.py, the small DiT trained from scratch) and `FramePackBackbone`
(pretrained/framepack_backbone.py, diffusers' FramePack-F1) subclass `Backbone`, so the
LightningModules, MemoryPack and the checkpoint tools depend on this class only, never on
Hugging Face code. A backbone predicts the velocity of one noisy segment given

    [ text | psi_n (memory) | reference image | FramePack context | noisy segment ]

and says how much history it reads (`history_frames`, `context_mode`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from enum import StrEnum

from torch import Tensor, nn


class ContextMode(StrEnum):
    """What the next segment sees of the past (MemoryPack decides it, `memory_pack.py`).

    FRAMEPACK: the last `history_frames` latent frames, packed at fixed ratios (constant token
    budget per segment). FULL_HISTORY: every previous latent frame at 1x (the quadratic baseline
    the paper argues against; its cost grows with the video).
    """

    FRAMEPACK = "framepack"
    FULL_HISTORY = "full_history"


class Backbone(nn.Module, ABC):
    """Base class of the denoisers. Subclasses set, in `__init__`:

    latent_channels: channels of the codec's latent; width: token width (psi's width);
    text_dim: width of the text features read (the text encoder's `dim`);
    history_frames: latent frames of the FramePack window (1x + 2x + 4x); FULL_HISTORY reads
    every previous frame instead; context_mode (default FRAMEPACK);
    blocks: the transformer blocks (the FSDP2, compile and activation-checkpointing unit);
    rope_layout: `absolute` (the paper's RoPE consistency) or `relative` (FramePack's windows);
    grad_checkpointing: recompute each block in backward;
    patch: the (t, h, w) latent patch of one noisy token (its spatial size sets the token grid).
    """

    latent_channels: int
    width: int
    text_dim: int
    history_frames: int
    context_mode: ContextMode = ContextMode.FRAMEPACK
    blocks: Sequence[nn.Module]
    rope_layout: str
    grad_checkpointing: bool
    patch: tuple[int, int, int]

    @abstractmethod
    def check_text_encoder(self, encoder: nn.Module) -> None:
        """Raise ValueError unless `encoder`'s features are what this backbone reads."""

    @abstractmethod
    def enable_memory(self) -> None:
        """Add the zero-initialised per-head memory-read gates (once): SemanticPack is on."""

    @abstractmethod
    def forward(
        self,
        noisy: Tensor,
        t: Tensor,
        segment_index: Tensor,
        history: Tensor,
        image: Tensor,
        text: Tensor,
        text_mask: Tensor,
        memory: Tensor | None = None,
    ) -> Tensor:
        """Velocity [b, T, c, h, w] (`rectified_flow.py`'s convention) of the noisy segment.

        noisy [b, T, c, h, w] at time t [b]; segment_index [b]; history [b, K, c, h, w] the K
        latent frames before the segment, oldest first, zeros where the video has none;
        image [b, 1, c, h, w] the reference latent; text [b, n, text_dim] with text_mask [b, n];
        memory [b, n_psi, width] SemanticPack's psi_n (None: nothing to read).
        """

    @abstractmethod
    def tokens_per_segment(self, frames: int, h: int, w: int, text_tokens: int) -> int:
        """Tokens of one call (without memory): constant in video length under FRAMEPACK."""
