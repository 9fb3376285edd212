"""Running a training step on fake tensors (shapes, no data) and counting the bytes it keeps alive.

`benchmarks/plan.py` estimates GPU memory from this: the networks are built on the meta device,
their parameters become fake CPU tensors (`to_fake`), and one stage-1 segment step
(`segment_step`: SemanticPack's BPTT updates, one backbone forward under bf16 autocast, the
loss, backward) runs under `LiveBytes`, which adds up the storage of every tensor an op creates
and subtracts it when the tensor dies: saved activations, autocast's weight casts, transient
buffers, gradients. No compute runs, so the real 13B model at 480 x 832 takes seconds.
`FSDP2` is emulated where it matters to one rank: each gradient, once accumulated, is replaced
by its 1/W shard (the reduce-scatter); parameters, all-gather buffers and optimizer states are
counted by `plan.py` from parameter counts.

`measured_peak` is the check: the same step on real CPU tensors, with the peak of live tensor
bytes read from `torch.profiler`'s allocator events (`[memory]`: + bytes per allocation, -
per free), which sees every allocation, including those inside kernels that `LiveBytes` cannot.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from benchmarks.flop_count import flop_counter

__all__ = [
    "BlockTrace", "LiveBytes", "SegmentShapes", "Trace", "measured_peak", "segment_step",
    "to_fake", "trace_step",
]  # fmt: skip


class LiveBytes(TorchDispatchMode):
    """Bytes of the live tensor storages created under it, and their peak (`reset_peak`)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage (e.g. a parameter's `t()`).
        inputs = {
            id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and id(t.untyped_storage()) not in inputs:
                self.track(t)
        return out

    def track(self, t: Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def reset_peak(self) -> None:
        self.peak = self.live


def to_fake(module: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """Replace every parameter and buffer (e.g. on the meta device) by a fake CPU tensor."""
    with mode:
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    fake = torch.empty(p.shape, dtype=p.dtype)
                    sub._parameters[name] = nn.Parameter(fake, requires_grad=p.requires_grad)
            for name, b in list(sub._buffers.items()):
                if b is not None:
                    sub._buffers[name] = torch.empty(b.shape, dtype=b.dtype)
    return module


@dataclass
class SegmentShapes:
    """One stage-1 step's inputs: b videos, a segment of T latent frames of c x h x w, the
    FramePack history of K frames, n_text conditioning tokens of width d_text, and the
    `memory_bptt` ground-truth segments SemanticPack's recurrence backpropagates through."""

    b: int
    frames: int
    channels: int
    h: int
    w: int
    history: int
    text_tokens: int
    text_dim: int
    bptt: int = 2


def _inputs(shapes: SegmentShapes, generator: torch.Generator | None) -> dict[str, Tensor]:
    s = shapes
    rand = lambda *size: torch.randn(*size, generator=generator)  # noqa: E731
    return {
        "noisy": rand(s.b, s.frames, s.channels, s.h, s.w), "t": torch.rand(s.b, generator=generator),
        "segment_index": torch.full((s.b,), s.bptt, dtype=torch.long),
        "history": rand(s.b, s.history, s.channels, s.h, s.w),
        "image": rand(s.b, 1, s.channels, s.h, s.w),
        "text": rand(s.b, s.text_tokens, s.text_dim),
        "text_mask": torch.ones(s.b, s.text_tokens, dtype=torch.bool),
        "segments": rand(s.bptt, s.b, s.frames, s.channels, s.h, s.w),
        "target": rand(s.b, s.frames, s.channels, s.h, s.w),
    }  # fmt: skip


def segment_step(
    dit: nn.Module,
    semantic_pack: nn.Module | None,
    shapes: SegmentShapes,
    autocast: torch.dtype | None = torch.bfloat16,
    generator: torch.Generator | None = None,
    forward_end: Callable[[], None] | None = None,
) -> Callable[[], None]:
    """One teacher-forcing step of one segment: psi_0 and `bptt` SemanticPack updates with
    gradient, the backbone's forward under autocast, the flow loss, backward (outside autocast,
    as Lightning runs it). Returns the step as a function of no arguments (inputs made once);
    `forward_end()` is called when the forward ends, before autocast's weight casts are freed."""
    x = _inputs(shapes, generator)

    def run() -> None:
        cast = torch.autocast("cpu", autocast) if autocast is not None else nullcontext()
        with cast:
            psi = None
            if semantic_pack is not None:
                psi = semantic_pack.init(x["text"], x["image"])
                for k in range(shapes.bptt):
                    psi = semantic_pack(psi, x["segments"][k], step=k)
            keys = ("noisy", "t", "segment_index", "history", "image", "text", "text_mask")
            v = dit(*(x[k] for k in keys), memory=psi)
            loss = F.mse_loss(v.float(), x["target"].float())
            if forward_end is not None:
                forward_end()
        loss.backward()

    return run


@contextmanager
def sharded_gradients(params: list[nn.Parameter], world: int) -> Iterator[list[Tensor]]:
    """FSDP2's reduce-scatter, for memory: each accumulated gradient becomes its 1/world shard
    (world 1: gradients stay). Yields the kept shards."""
    shards: list[Tensor] = []
    if world == 1:
        yield shards
        return

    def keep_shard(p: Tensor) -> None:
        shards.append(p.grad.new_empty(-(-p.grad.numel() // world)))
        p.grad = None

    handles = [p.register_post_accumulate_grad_hook(keep_shard) for p in params]
    try:
        yield shards
    finally:
        for h in handles:
            h.remove()


@dataclass
class BlockTrace:
    """One backbone block's forward in a traced step: its class, the bytes it left alive (saved
    activations, autocast weight casts, its output), its forward FLOPs, attention's share, and
    the share of its low-rank adapters."""

    kind: str
    saved_bytes: int
    cast_bytes: int  # of saved_bytes: autocast's casts of trainable weights, freed after forward
    flops: int
    attention_flops: int
    lora_flops: int


@dataclass
class Trace:
    """One traced step: the peaks of bytes alive beyond the parameters and inputs (activations,
    casts, gradients or their shards, transients) in forward and in backward, the step's FLOPs
    (forward + backward, and the recomputed forward under activation checkpointing) and each
    block's forward."""

    forward_peak: int
    backward_peak: int
    flops: int
    attention_flops: int
    blocks: list[BlockTrace]


def cast_bytes(block: nn.Module) -> int:
    """Bytes of the bf16 copies bf16 autocast keeps of a block's trainable fp32 linear weights
    (its cast cache lives until the autocast region ends)."""
    return sum(
        2 * p.numel() for m in block.modules()
        if isinstance(m, (nn.Linear, nn.Conv3d)) for p in m.parameters(recurse=False)
        if p.requires_grad and p.dtype == torch.float32
    )  # fmt: skip


@contextmanager
def block_probes(
    blocks: list[nn.Module], live: LiveBytes, counter: Any, out: list[BlockTrace]
) -> Iterator[None]:
    """Record each block's first forward (not the recompute of activation checkpointing)."""
    from benchmarks.flop_count import attention_flops
    from lightning_modules.networks.lora import LoRA

    state: dict[int, tuple[int, int, int, int]] = {}
    lora = [0]
    done: set[int] = set()

    def snapshot() -> tuple[int, int, int, int]:
        return live.live, counter.get_total_flops(), attention_flops(counter), lora[0]

    def pre(block: nn.Module, args: Any) -> None:
        if id(block) not in done:
            state[id(block)] = snapshot()

    def post(block: nn.Module, args: Any, output: Any) -> None:
        if id(block) in done:
            return
        done.add(id(block))
        now, start = snapshot(), state[id(block)]
        d = [a - b for a, b in zip(now, start, strict=True)]
        out.append(BlockTrace(type(block).__name__, d[0], cast_bytes(block), d[1], d[2], d[3]))

    lora_start: dict[int, int] = {}

    def lora_pre(m: nn.Module, args: Any) -> None:
        lora_start[id(m)] = counter.get_total_flops()

    def lora_post(m: nn.Module, args: Any, output: Any) -> None:
        lora[0] += counter.get_total_flops() - lora_start[id(m)]

    handles = []
    for block in blocks:
        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
        for m in block.modules():
            if isinstance(m, LoRA):
                handles += [
                    m.register_forward_pre_hook(lora_pre),
                    m.register_forward_hook(lora_post),
                ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def trace_step(
    build: Callable[[], tuple[nn.Module, nn.Module | None]],
    shapes: SegmentShapes,
    world: int = 1,
    autocast: torch.dtype | None = torch.bfloat16,
) -> Trace:
    """`segment_step` of the networks `build()` makes on the meta device, on fake tensors."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from benchmarks.flop_count import attention_flops

    mode = FakeTensorMode()
    dit, pack = build()
    for module in (dit, pack):
        if module is not None:
            to_fake(module, mode).train()
    params = [p for m in (dit, pack) if m is not None for p in m.parameters() if p.requires_grad]
    blocks: list[BlockTrace] = []
    live, counter = LiveBytes(), flop_counter()
    forward_peak = [0]

    def forward_end() -> None:
        forward_peak[0] = live.peak
        live.reset_peak()

    with mode:
        step = segment_step(dit, pack, shapes, autocast, forward_end=forward_end)
        # The fused kernel (flash attention never holds the n x n scores), as on the GPU.
        with sharded_gradients(params, world), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            with counter, live, block_probes(list(dit.blocks), live, counter, blocks):
                step()
    flops = counter.get_total_flops()
    return Trace(forward_peak[0], live.peak, flops, attention_flops(counter), blocks)


def measured_peak(run: Callable[[], None]) -> int:
    """Peak bytes of live tensors allocated during `run()` on CPU (torch.profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak
