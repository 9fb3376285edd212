"""Low-rank adapters (LoRA, Hu et al., 2021) on `nn.Linear` layers, with torch's own module hooks.

An adapted linear layer computes

    y = W x + b + (alpha / r) * B (A x)        A: [r, in] (random), B: [out, r] (zero at first)

so the adapted network equals the pretrained one until B moves. `add_lora` attaches `A` and `B`
to the layer as a child `lora` and adds the update with a forward hook: the layer's own keys
(`to_q.weight`, `to_q.bias`) are unchanged, so a full fine-tuning's checkpoints, the stage-2
trainable patterns and the frozen-weight records (`training/frozen_parts.py`) read the same
names, and the adapter's weights are `<layer>.lora.down.weight` / `<layer>.lora.up.weight`.
`merge_lora` folds the update into W for inference (W += (alpha / r) B A) and removes it.

Why hooks rather than `torch.nn.utils.parametrize` or `peft`: a parametrization computes
W + (alpha / r) B A as a new weight on every call, so its backward forms the full gradient of
that weight (d_out x d_in per layer, as much as full fine-tuning) and autograd keeps the new
weight alive for backward in every layer; the hook costs two thin matmuls and never forms dW.
`peft` does the same as the hook but renames the base weights (`to_q.base_layer.weight`) and
pins another package against transformers 5 / diffusers 0.42. Both take the adapters in fp32
(`peft`'s default too), whatever the base weights' dtype.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["LoRA", "add_lora", "lora_layers", "merge_lora"]


class LoRA(nn.Module):
    """The low-rank update of one linear layer: (alpha / r) up(down(x))."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        device = linear.weight.device
        self.down = nn.Linear(linear.in_features, rank, bias=False, device=device)
        self.up = nn.Linear(rank, linear.out_features, bias=False, device=device)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # as nn.Linear and peft
        nn.init.zeros_(self.up.weight)  # the adapted layer starts as the pretrained one
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.up(self.down(x.to(self.down.weight.dtype)))


def _add_update(layer: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
    """Forward hook of an adapted layer: its output plus the low-rank update."""
    return out + layer.lora(args[0]).to(out.dtype)


def lora_layers(root: nn.Module) -> dict[str, nn.Linear]:
    """{name: layer} of the adapted linear layers under `root`."""
    return {n: m for n, m in root.named_modules() if isinstance(getattr(m, "lora", None), LoRA)}


def add_lora(
    blocks: Iterable[tuple[str, nn.Module]],
    rank: int,
    alpha: float,
    targets: Iterable[str] = ("*",),
    exclude: Iterable[str] = (),
) -> list[str]:
    """Adapt every `nn.Linear` of the named `blocks` whose name inside its block matches one of
    `targets` and none of `exclude` (fnmatch patterns); returns the adapted layers' names.
    Raises if nothing matches (a pattern typo would otherwise train nothing). A layer that has
    an adapter of the same rank and alpha keeps it (e.g. a network unpickled from a checkpoint's
    hyperparameters), so adapting twice is adapting once."""
    targets, exclude = tuple(targets), tuple(exclude)
    done = []
    for prefix, block in blocks:
        chosen = [
            (name, layer) for name, layer in block.named_modules()
            if isinstance(layer, nn.Linear) and ".lora." not in f".{name}."
            and any(fnmatch.fnmatch(name, t) for t in targets)
            and not any(fnmatch.fnmatch(name, e) for e in exclude)
        ]  # fmt: skip
        for name, layer in chosen:  # chosen first: each adapter adds linear layers
            done.append(f"{prefix}.{name}")
            old = getattr(layer, "lora", None)
            if isinstance(old, LoRA):  # a network that was adapted already (unpickled)
                if (old.rank, old.alpha) != (rank, alpha):
                    raise ValueError(
                        f"{done[-1]} has a LoRA adapter of rank {old.rank}, alpha {old.alpha}; "
                        f"asked for rank {rank}, alpha {alpha}"
                    )
                continue
            layer.lora = LoRA(layer, rank, alpha)
            layer.register_forward_hook(_add_update)
    if not done:
        raise ValueError(
            f"LoRA targets {list(targets)} (excluding {list(exclude)}) match no nn.Linear "
            "inside the backbone's blocks"
        )
    return done


@torch.no_grad()
def merge_lora(root: nn.Module) -> int:
    """Fold every adapter under `root` into its layer's weight and remove it; returns how many."""
    layers = lora_layers(root)
    for layer in layers.values():
        lora = layer.lora
        delta = lora.scale * (lora.up.weight.float() @ lora.down.weight.float())
        layer.weight.add_(delta.to(layer.weight.dtype))
        del layer.lora
        for key, hook in list(layer._forward_hooks.items()):
            if hook is _add_update:
                del layer._forward_hooks[key]
    return len(layers)
