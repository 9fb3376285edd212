"""Scaling helpers the LightningModule applies in `configure_model`: FSDP2 sharding and compile.

Kept out of `video_module.py` so every stage (teacher forcing, Direct Forcing) shares one policy:
the DiT blocks are the sharding and compile unit, as they are for Lightning's FSDP1 strategy in
`configs/strategy/fsdp.yaml`.
"""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Literal

from torch import nn

CompileMode = Literal["none", "blocks", "dit"]


def compile_dit(dit: nn.Module, mode: CompileMode) -> None:
    """Compile in place (`Module.compile`), so state-dict keys and checkpoints are unchanged.

    `blocks` compiles each DiT block (one graph reused `depth` times: short compile, the unit
    FSDP2 shards); `dit` compiles the whole forward (longer compile, more fusion).
    """
    if mode == "none":
        return
    if mode == "blocks":
        for block in dit.blocks:
            block.compile()
    elif mode == "dit":
        dit.compile()
    else:
        raise ValueError(f"compile must be 'none', 'blocks' or 'dit', got {mode!r}")


def _has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


# Entry points besides `forward` that VideoModule calls on a sharded child (SemanticPack's psi_0
# and its batched teacher-forced recurrence).
_FORWARD_METHODS: dict[str, tuple[str, ...]] = {"semantic_pack": ("init", "teacher_forced")}


def apply_fsdp2(module: nn.Module, mesh: object, reshard_after_forward: bool = True) -> None:
    """`fully_shard` each DiT block, then every child of `module` that holds trainable weights.

    Children are sharded as separate roots rather than sharding `module` itself: the training
    step calls the text encoder and the DiT directly, not through `module.forward`, and a root
    unit only gathers its parameters inside its own forward. Frozen children (the codec) stay
    replicated: they take no gradients, so nothing has to be reduced for them.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    dit = getattr(module, "dit", None)
    if dit is not None:
        for block in dit.blocks:
            fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    for name, child in module.named_children():
        if _has_trainable(child):
            # The root of each unit keeps its parameters gathered after forward: the
            # backward needs them immediately, so resharding would only add an all-gather.
            fully_shard(child, mesh=dp_mesh, reshard_after_forward=False)
            # Methods other than forward that the module calls must gather parameters too.
            for method in _FORWARD_METHODS.get(name, ()):
                register_fsdp_forward_method(child, method)


@contextmanager
def no_backward_sync(wrapped: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Accumulate gradients locally (no all-reduce) under DDP, FSDP1 or FSDP2; no-op otherwise.

    Stage 2 backpropagates once per segment and steps once per video: every backward but the
    last of a video should run inside this context, so gradients are reduced once per step.
    Pass `trainer.model` (the strategy's wrapper), not the LightningModule.
    """
    if not enabled:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    fsdp2 = [m for m in wrapped.modules() if isinstance(m, FSDPModule)]
    with ExitStack() as stack:
        if hasattr(wrapped, "no_sync") and not fsdp2:  # DDP and FSDP1 wrappers
            stack.enter_context(wrapped.no_sync())
        for m in fsdp2:
            m.set_requires_gradient_sync(False, recurse=False)
        try:
            yield
        finally:
            for m in fsdp2:
                m.set_requires_gradient_sync(True, recurse=False)
