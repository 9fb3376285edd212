"""Precomputed conditioning: a batch's cached text and image-encoder parts (the conditioning cache).

The datamodule's conditioning cache (`datamodules/conditioning_cache.py`) puts three dicts of
tensors in a batch: `text_parts` (the captions' parts, [b, ...]), `image_parts` (the reference
images', [b, ...]) and `null_text_parts` (the empty caption's, [1, ...]). `CachedConditioning`
turns them into what `TextEncoder.forward` would have returned, through the encoder's `combine`,
with prompt dropout and classifier-free guidance's empty prompt drawn from the null parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["IMAGE", "NULL", "TEXT", "CachedConditioning", "stack_parts"]

TEXT, IMAGE, NULL = "text_parts", "image_parts", "null_text_parts"


def stack_parts(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Items' parts (no batch axis) -> batched parts."""
    return {k: torch.stack([p[k] for p in parts]) for k in parts[0]} if parts else {}


@dataclass
class CachedConditioning:
    """The cached parts of a batch (module docstring)."""

    text: dict[str, Tensor]
    image: dict[str, Tensor]
    null_text: dict[str, Tensor]

    @classmethod
    def from_batch(cls, batch: dict[str, Any]) -> CachedConditioning | None:
        if TEXT not in batch:
            return None
        return cls(batch[TEXT], batch[IMAGE], batch[NULL])

    @property
    def batch_size(self) -> int:
        return len(next(iter(self.text.values())))

    def null(self) -> dict[str, Tensor]:
        """The empty caption's parts for every row."""
        b = self.batch_size
        return {k: v.expand(b, *v.shape[1:]) for k, v in self.null_text.items()}

    def text_keeping(self, keep: Tensor | None) -> dict[str, Tensor]:
        """The captions' parts, rows where `keep` is False replaced by the empty caption's."""
        if keep is None:
            return self.text
        null = self.null()
        out = {}
        for k, v in self.text.items():
            rows = keep.to(v.device).view(-1, *[1] * (v.dim() - 1))
            out[k] = torch.where(rows, v, null[k].to(v.device))
        return out
