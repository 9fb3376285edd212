"""What MFU and HFU are made of: the FLOPs a training step counts, and the peak they divide by.

Counting. `count_flops` runs a step under `torch.utils.flop_counter.FlopCounterMode`, which knows
matmuls, convolutions and the CUDA attention kernels but counts nothing for the kernel
`F.scaled_dot_product_attention` dispatches to on CPU (`_scaled_dot_product_flash_attention_for_cpu`
and its backward). The formulas below are registered for every fused attention kernel, CPU and CUDA,
so attention is counted the same way on both:

    forward   2 b h n_q n_k d_qk  (Q K^T)  +  2 b h n_q n_k d_v  (P V)     = 4 b h n_q n_k d if d_qk = d_v
    backward  2 x forward: dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q

so one attention call costs 3 x its forward per training step, like a matmul whose input and
weight both need gradients (a matmul costs 2 m n k forward; its backward 2 m n k per operand that
needs a gradient). These are model FLOPs: the fused kernels' recomputation of Q K^T inside their
backward is not counted (torch's own CUDA formulas count it; these replace them).

MFU divides the model FLOPs of a step (counted without activation checkpointing) by step time and
peak; HFU divides the FLOPs the step executes, which under activation checkpointing include the
recomputed forward of every checkpointed block (`hardware FLOPs`, counted with checkpointing on).

Peak. On CUDA, the dense (no sparsity) tensor-core peak of the card `torch.cuda.get_device_name`
names, for the precision measured: bf16, or for fp32 TF32 when `torch.get_float32_matmul_precision()`
allows it and plain FP32 otherwise (NVIDIA datasheets). An unknown card has no peak: pass
`--peak_tflops`; without it MFU is NaN, never a guess. On CPU, a dense matmul of the same dtype
timed in the same run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

Precision = Literal["fp32", "bf16"]

ATTENTION_FORWARD = (
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
    aten._scaled_dot_product_fused_attention_overrideable,
)
ATTENTION_BACKWARD = (
    aten._scaled_dot_product_flash_attention_for_cpu_backward,
    aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_efficient_attention_backward,
    aten._scaled_dot_product_cudnn_attention_backward,
    aten._scaled_dot_product_fused_attention_overrideable_backward,
)


def attention_forward_flops(
    query: torch.Size, key: torch.Size, value: torch.Size, *args: Any, **kwargs: Any
) -> int:
    """2 b h n_q n_k d_qk for Q K^T plus 2 b h n_q n_k d_v for P V (q, k, v as [b, h, n, d])."""
    b, h, n_q, d_qk = query
    n_k, d_v = key[2], value[3]
    return 2 * b * h * n_q * n_k * (d_qk + d_v)


def attention_backward_flops(
    grad_out: torch.Size, query: torch.Size, key: torch.Size, value: torch.Size, *args: Any,
    **kwargs: Any,
) -> int:  # fmt: skip
    """Twice the forward: the gradients of Q K^T and P V with respect to both operands."""
    return 2 * attention_forward_flops(query, key, value)


ATTENTION_FORMULAS: dict[Any, Callable[..., int]] = {
    **{op: attention_forward_flops for op in ATTENTION_FORWARD},
    **{op: attention_backward_flops for op in ATTENTION_BACKWARD},
}


class GlobalOnly:
    """Stands in for `FlopCounterMode`'s per-module tracker: only totals are needed here, and the
    tracker's backward hooks raise on a module called under no_grad with an input that requires
    grad (SemanticPack's detached teacher-forced updates do that)."""

    parents = frozenset({"Global"})

    def __enter__(self) -> GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    """`FlopCounterMode` with the attention formulas above for every fused attention kernel."""
    counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FORMULAS)
    counter.mod_tracker = GlobalOnly()  # type: ignore[assignment]
    return counter


def attention_flops(counter: FlopCounterMode) -> int:
    """FLOPs `counter` attributed to the fused attention kernels (forward and backward)."""
    ops = {str(op) for op in ATTENTION_FORMULAS}
    return sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op) in ops)


def count_flops(step: Callable[[], Any]) -> tuple[int, int]:
    """(total, attention) FLOPs of one call of `step`."""
    with flop_counter() as counter:
        step()
    return counter.get_total_flops(), attention_flops(counter)


# ----------------------------------------------------------------- peaks (dense, TFLOP/s)
# (pattern over torch.cuda.get_device_name, card, {"bf16", "tf32", "fp32"}); first match wins,
# so the specific names (NVL, PCIe, GH200) come before the generic ones.
CUDA_PEAKS: tuple[tuple[str, str, dict[str, float]], ...] = (
    (r"GH200", "GH200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"H200 NVL", "H200 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H200", "H200 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"H100 NVL", "H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H100.*PCIe", "H100 PCIe", {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (r"H100", "H100 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"A100", "A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)


def matmul_kind(precision: Precision) -> str:
    """The kind of math a step of `precision` runs its matmuls in: bf16, tf32 or fp32."""
    if precision == "bf16":
        return "bf16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def cuda_peak(device_name: str, precision: Precision) -> tuple[str, str, float] | None:
    """(card, math kind, dense peak FLOP/s) for a known card, else None."""
    kind = matmul_kind(precision)
    for pattern, card, peaks in CUDA_PEAKS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return card, kind, peaks[kind] * 1e12
    return None


def peak_flops(
    device: torch.device,
    precision: Precision,
    override_tflops: float | None = None,
    cpu_peak: Callable[[], float] | None = None,
) -> tuple[float, str]:
    """(peak FLOP/s, what it is) for MFU; NaN with a message for an unknown card.

    `override_tflops` wins everywhere; on CPU `cpu_peak()` times a matmul in this run.
    """
    if override_tflops is not None:
        return override_tflops * 1e12, f"--peak_tflops {override_tflops:g}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        found = cuda_peak(name, precision)
        if found is None:
            known = ", ".join(card for _, card, _ in CUDA_PEAKS)
            print(
                f"MFU unavailable: no peak known for GPU {name!r} (known: {known}); pass "
                f"--peak_tflops with its dense {matmul_kind(precision)} TFLOP/s. MFU is NaN."
            )
            return math.nan, f"unknown GPU {name!r}"
        card, kind, peak = found
        return peak, f"{card} dense {kind}"
    if cpu_peak is None:
        raise ValueError(f"no peak for device {device}: pass cpu_peak or override_tflops")
    return cpu_peak(), f"timed {precision} matmul"
