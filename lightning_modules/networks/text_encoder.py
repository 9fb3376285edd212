"""Text encoders: captions -> token features the DiT attends to.

Interface (what a real text model wrapper must provide, e.g. a LLaMA/T5 encoder loaded from a local
path and kept frozen): `forward(captions: list[str]) -> (tokens [b, n, dim], mask [b, n] bool)`
with a fixed n, and the attribute `dim`. The empty caption "" is the unconditional prompt used by
classifier-free guidance. An encoder that also reads the reference image (FramePack's SigLIP
features, lightning_modules/pretrained/text_encoders.py) sets `reads_image = True` and is called as
`forward(captions, image [b, 3, H, W] in [-1, 1])`; its image tokens join the text tokens.

A frozen encoder's outputs can be computed once (the conditioning cache,
`datamodules/conditioning_cache.py`): it splits `forward` into `encode_captions(captions)` and
`encode_images(image)` (dicts of tensors with the batch first) and `combine(text, image)`, which
gives exactly `forward`'s (tokens, mask). A trained encoder (`HashTextEncoder`) cannot be cached.
"""

import re
import zlib

import torch
from torch import Tensor, nn


class TextEncoder(nn.Module):
    """Base class; subclasses set `dim` and implement forward."""

    dim: int
    reads_image: bool = False
    cache_dtype: torch.dtype = torch.float32  # float parts are cached in this dtype

    def forward(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def encode_captions(self, captions: list[str]) -> dict[str, Tensor]:
        """Per-caption parts of the features (frozen encoders only: conditioning cache)."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot be cached: only a frozen pretrained encoder's outputs "
            "can be computed once (unset data.init_args.conditioning_cache)"
        )

    def encode_images(self, image: Tensor) -> dict[str, Tensor]:
        """Per-image parts (encoders that read the reference image); none by default."""
        return {}

    def combine(self, text: dict[str, Tensor], image: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """`forward`'s (tokens, mask) from `encode_captions` and `encode_images` parts."""
        raise NotImplementedError(f"{type(self).__name__} has no cached form")


class HashTextEncoder(TextEncoder):
    """Weight-free tokenizer + trainable embedding: the default that runs anywhere.

    Words are lower-cased and hashed with CRC32 (stable across processes, unlike `hash`) into
    `vocab_size - 2` buckets; id 0 pads, id 1 marks the start so "" still has one real token.
    Padding tokens are attended to (no mask in attention) so "" is a distinct null condition.
    """

    PAD, BOS = 0, 1

    def __init__(self, dim: int = 128, vocab_size: int = 4096, max_tokens: int = 16) -> None:
        super().__init__()
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3, got {vocab_size}")
        self.dim = dim
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        self.embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def tokenize(self, caption: str) -> list[int]:
        words = re.findall(r"[a-z0-9]+", caption.lower())
        ids = [self.BOS] + [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in words]
        ids = ids[: self.max_tokens]
        return ids + [self.PAD] * (self.max_tokens - len(ids))

    def forward(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        device = self.embedding.weight.device
        ids = torch.tensor([self.tokenize(c) for c in captions], device=device, dtype=torch.long)
        return self.embedding(ids), ids != self.PAD
