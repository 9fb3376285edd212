"""Adapter fine-tuning of stage 1: LoRA on the backbone's blocks, MemoryPack's new parts in full.

`VideoModule(adapters=LoraAdapters(...))` (config: `model.init_args.adapters`) freezes the
backbone and the text encoder and trains

- low-rank adapters on the linear layers inside every backbone block (`networks/lora.py`;
  `targets` / `exclude` are fnmatch patterns over a layer's name inside its block; the adaLN
  modulation layers are left out by default, as FramePack LoRA trainers do);
- in full, the parameters matching `train_in_full`: by default SemanticPack and the per-head
  memory read-in gates (psi's read-in), which the pretrained model does not have, and the
  `memory_recall` head when it is on.

With a pretrained backbone (`FramePackBackbone(pretrained_dir=...)`) its folder weights never
change, so checkpoints hold only what trains (adapters, SemanticPack, gates) and the optimizer
state of those: `training/frozen_parts.py` leaves the rest out and records the folder. The small
`VideoDiT` takes the same switch (its base weights are then saved: they come from no folder).
Stage 2 (`DirectForcingModule`) rebuilds the same adapters from the stage-1 checkpoint and trains
its head on top of them; `VideoModule.merge_adapters()` folds them into the weights for
inference (`predict` does it before rolling out).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from lightning_modules.networks.lora import add_lora

__all__ = ["LoraAdapters"]

# Linear layers inside a block that keep their pretrained weights: adaLN modulation (HunyuanVideo
# `norm1.linear`, `norm1_context.linear`, `norm.linear`; VideoDiT `modulation.1`).
DEFAULT_EXCLUDE = ("*norm*", "modulation*")
DEFAULT_TRAIN_IN_FULL = ("semantic_pack.*", "*.memory_gate", "memory_recall.*")


class LoraAdapters:
    """Low-rank adapters for stage 1 (module docstring).

    Args:
        rank: r of every adapter.
        alpha: the update is scaled by alpha / r (default alpha = r: scale 1).
        targets, exclude: fnmatch patterns over a linear layer's name inside a backbone block.
        train_in_full: fnmatch patterns of the module's parameters that train in full.
    """

    def __init__(
        self,
        rank: int = 64,
        alpha: float | None = None,
        targets: Sequence[str] = ("*",),
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        train_in_full: Sequence[str] = DEFAULT_TRAIN_IN_FULL,
    ) -> None:
        if rank < 1:
            raise ValueError(f"LoraAdapters rank must be >= 1, got {rank}")
        if alpha is not None and alpha <= 0:
            raise ValueError(f"LoraAdapters alpha must be > 0, got {alpha}")
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.targets = tuple(targets)
        self.exclude = tuple(exclude)
        self.train_in_full = tuple(train_in_full)

    def __repr__(self) -> str:
        return (
            f"LoraAdapters(rank={self.rank}, alpha={self.alpha}, targets={self.targets}, "
            f"exclude={self.exclude}, train_in_full={self.train_in_full})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoraAdapters) and repr(self) == repr(other)

    def trains_in_full(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.train_in_full)

    def apply(self, module: nn.Module) -> list[str]:
        """Add the adapters to `module.dit`'s blocks and set what trains; returns the layers."""
        named = {id(m): n for n, m in module.named_modules()}
        blocks = [(named[id(block)], block) for block in module.dit.blocks]
        layers = add_lora(blocks, self.rank, self.alpha, self.targets, self.exclude)
        all_names = [n for n, _ in module.named_parameters()]
        for pattern in self.train_in_full:  # the defaults may match nothing (no SemanticPack)
            if pattern not in DEFAULT_TRAIN_IN_FULL and not fnmatch.filter(all_names, pattern):
                raise ValueError(
                    f"LoraAdapters.train_in_full pattern {pattern!r} matches no parameter; names "
                    f"look like {all_names[:3]}"
                )
        for name, p in module.named_parameters():
            p.requires_grad_(".lora." in name or self.trains_in_full(name))
        return layers
