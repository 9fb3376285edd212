"""The memory planner against measurement: its estimate of a step's peak vs the peak measured on CPU.

`python -m benchmarks.plan_check [--json out.json]` prints the table (the README quotes it). At tiny sizes a
step runs for real on CPU, its peak of live tensor bytes read from `torch.profiler`'s allocator
events (`memory_trace.measured_peak`); the planner estimates the same step from fake tensors
the way it estimates the 13B model: a miniature of one block per kind, extrapolated to the
model's depth, plus the fused optimizer step's gradients (`plan.dynamic_peak`). Both
are counted beyond the weights and optimizer states, which are exact parameter arithmetic.
Models: the real backbone's classes at width 128 (2 dual- + 2 single-stream blocks) and the
small default (`configs/stage1.yaml`, 4 blocks); full fine-tuning and adapters, with and
without activation checkpointing, under bf16 autocast and in fp32.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from benchmarks.memory_trace import SegmentShapes, measured_peak, segment_step
from benchmarks.plan import ROOT, Setting, build_parts, dynamic_peak, small_default

__all__ = ["CASES", "check", "check_table", "measure", "tiny_f1"]


def tiny_f1() -> Setting:
    """FramePack-F1's classes (configs/framepack_f1/small.yaml) at width 128, 2 + 2 blocks,
    16 x 16 latents (128 x 128 pixels), 4-frame segments."""
    dit = {"num_attention_heads": 4, "attention_head_dim": 32, "rope_axes_dim": [8, 12, 12],
           "num_layers": 2, "num_single_layers": 2}  # fmt: skip
    pack = {"width": 128, "heads": 4}
    shapes = SegmentShapes(2, 4, 4, 16, 16, 19, 1 + 4 + 16, 32, bptt=2)
    config = ROOT / "configs/framepack_f1/small.yaml"
    return Setting("FramePack-F1 classes, width 128", config, shapes, pretrained=True,
                   overrides={"dit": dit, "semantic_pack": pack})  # fmt: skip


# (setting, adapters, activation checkpointing, autocast dtype)
CASES: list[tuple[Any, bool, bool, torch.dtype | None]] = [
    (make, adapters, ac, autocast)
    for make in (tiny_f1, small_default) for adapters in (False, True) for ac in (True, False)
    for autocast in (torch.bfloat16, None)
]  # fmt: skip


def measure(setting: Setting, adapters: bool, ac: bool, autocast: torch.dtype | None) -> int:
    """Peak bytes of a real step on CPU beyond weights and optimizer states (a warm-up step
    allocates the states first, as in training, where they persist)."""
    torch.manual_seed(0)
    dit, pack, text = build_parts(setting, adapters, None, ac, device="cpu")
    modules = [m for m in (dit, pack, text) if m is not None]
    for m in modules:
        m.train()
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)  # as VideoModule's
    step = segment_step(dit, pack, setting.shapes, autocast, torch.Generator().manual_seed(0))

    def train_step() -> None:
        step()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_step()
    return measured_peak(train_step)


def check(cases: list[tuple[Any, bool, bool, torch.dtype | None]] = CASES) -> list[dict[str, Any]]:
    """Estimate and measurement of each case; `error` = estimate / measured - 1."""
    rows = []
    with torch.inference_mode(False):
        for make, adapters, ac, autocast in cases:
            setting = make()
            estimated = dynamic_peak(setting, adapters, ac, autocast)
            measured = measure(setting, adapters, ac, autocast)
            rows.append({
                "setting": setting.name, "tuning": "adapters" if adapters else "full",
                "checkpointing": ac, "dtype": "bf16 autocast" if autocast else "fp32",
                "estimated_mb": estimated / 1e6, "measured_mb": measured / 1e6,
                "error": estimated / measured - 1,
            })  # fmt: skip
    return rows


def check_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | tuning | checkpointing | dtype | estimated MB | measured MB | error |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['tuning']} | {'on' if r['checkpointing'] else 'off'} | "
            f"{r['dtype']} | {r['estimated_mb']:.1f} | {r['measured_mb']:.1f} | "
            f"{100 * r['error']:+.1f}% |"
        )
    worst = max(abs(r["error"]) for r in rows)
    return "\n".join(lines) + f"\n\nlargest error: {100 * worst:.1f}%"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description="the fit planner against CPU-measured peaks")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = check()
    print("estimate vs peak measured on CPU (tiny sizes):\n" + check_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
