"""Training throughput of the shipped stage-1 step against a minimal DiT of the same size, timed
alternately in one run: tokens/s, MFU and their ratio.

    python -m benchmarks.train_throughput                      # CPU: fp32, 1 thread
    python -m benchmarks.train_throughput --sizes default --rounds 20 --json out.json
    python -m benchmarks.train_throughput --precision bf16 --width 1024 --depth 8 \
        --resolution 128 128                                                # CUDA: card's peak

Sizes: `default` is configs/stage1.yaml as the demo trains it (width 128, depth 4, 2 heads,
32 x 32 frames: 136 tokens per segment), batch 4; `large` is width 512, depth 8, 8 heads at
128 x 128 (1936 tokens), batch 1. `--width --depth --heads --resolution --batch_size` replace them
by one `custom` size of the config with those overrides.

The project step is the stage-1 teacher-forcing step as training runs it: `configure_optimizers`'
optimizer, `VideoModule.teacher_forcing_loss` on random pixel videos of `--segments` segments
(codec, text encoder, FramePack history, SemanticPack's teacher-forced psi, prompt dropout, the
DiT), backward, optimizer step; reseeded before each step, so every step draws the same segment
and costs the same FLOPs. Its tokens per sample are one DiT call's sequence (text, image,
FramePack context, noisy); psi's and SemanticPack's tokens are not counted, their FLOPs are.

The yardstick (`benchmarks/minimal_dit.py`) is a plain-PyTorch DiT of the same width, depth,
heads, MLP ratio and token count (adaLN-Zero, RoPE, `scaled_dot_product_attention`, GELU MLP,
default `torch.optim.AdamW`), always eager. Each round times a project step, a minimal step and
(on CPU) a dense 1024^3 matmul, in an order that alternates between rounds, so all three see the
same load; reported times are medians over `--rounds` rounds after `--warmup` rounds. `ratio` is
project tokens/s over minimal tokens/s from those medians; `paired_ratio` is the median of the
per-round ratios. On a shared machine ratios are robust to load, absolute rates and MFU are not:
the JSON records `os.getloadavg()` before and after each size.

MFU = model FLOPs of a step (`benchmarks/flop_count.py`, attention counted) / step time / peak,
for both models against the same peak: on CPU the median FLOP/s of the interleaved matmul (so
measured warm and under the same load, not once at process start), on CUDA the card's dense
peak (or `--peak_tflops`). HFU uses the FLOPs executed, which differ under `--grad_checkpointing`.
FLOP-counted steps are never timed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks import shipped_model
from benchmarks.flop_count import count_flops, peak_flops
from benchmarks.minimal_dit import MinimalDiT, flow_loss
from lightning_modules.video_module import VideoModule

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PEAK_N = 1024  # the CPU peak: a dense PEAK_N^3 matmul, PEAK_REPEATS times per round
PEAK_REPEATS = 3


@dataclass(frozen=True)
class Size:
    name: str
    width: int | None = None  # None: the config's
    depth: int | None = None
    heads: int | None = None
    resolution: tuple[int, int] = (32, 32)
    batch_size: int = 4


SIZES = {
    "default": Size("default"),
    "large": Size("large", width=512, depth=8, heads=8, resolution=(128, 128), batch_size=1),
}


@dataclass
class Case:
    """One model's training step, with what is needed to turn its time into rates."""

    step: Callable[[], Any]
    batch_size: int
    tokens_per_sample: int
    flops: tuple[int, int, int]  # (model, executed, attention's share of model) per step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------- the project's step
def build_stage1(args: argparse.Namespace, size: Size | None = None) -> VideoModule:
    """The model of `--config` (configs/stage1.yaml), only sizes overridden, on CPU."""
    size = size if size is not None else sizes_of(args)[0]
    return shipped_model.build_stage1(
        args.config, width=size.width, depth=size.depth, heads=size.heads,
        grad_checkpointing=args.grad_checkpointing, compile=args.compile,
    )  # fmt: skip


def random_batch(size: Size, segments: int, frames: int, device: torch.device) -> dict[str, Any]:
    b, (h, w) = size.batch_size, size.resolution
    video = torch.rand(b, segments, frames, 3, h, w, device=device) * 2 - 1
    return {
        "video": video,
        "image": video[:, 0, 0],
        "num_segments": torch.full((b,), segments, dtype=torch.long),
        "caption": ["a red circle bounces past a dark pillar as the camera pans left"] * b,
        "name": [str(i) for i in range(b)],
    }


def segment_tokens(model: VideoModule, batch: dict[str, Any], frames: int) -> int:
    """Sequence length of one segment's DiT call (text, image, FramePack context, noisy)."""
    _, _, h, w = model.encode_image(batch["image"][:1].cpu().to(model.device)).shape[1:]
    return model.dit.tokens_per_segment(
        frames // model.codec.temporal_factor, h, w,
        model.text_encoder(batch["caption"][:1])[0].shape[1],
    )  # fmt: skip


def training_optimizer(model: VideoModule) -> torch.optim.Optimizer:
    """The optimizer `configure_optimizers` gives training (its schedule is not needed here)."""
    configured = model.configure_optimizers()
    return configured["optimizer"] if isinstance(configured, dict) else configured


def project_case(
    args: argparse.Namespace, size: Size, device: torch.device, dtype: torch.dtype
) -> tuple[Case, VideoModule]:
    model = build_stage1(args, size)
    model.configure_model()
    model = model.to(device).train()
    opt = training_optimizer(model)
    batch = random_batch(size, args.segments, args.segment_frames, device)

    def step() -> None:
        torch.manual_seed(0)  # the same segment index, t and dropout every step: equal FLOPs
        # bf16 is autocast over fp32 weights, as `precision: bf16-mixed` does in the Trainer.
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model.teacher_forcing_loss(batch, model.hparams.prompt_dropout)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    dit = model.dit
    dit.grad_checkpointing = False  # model FLOPs: without recomputation
    flops, attention = count_flops(step)
    dit.grad_checkpointing = args.grad_checkpointing
    executed = count_flops(step)[0] if args.grad_checkpointing else flops
    tokens = segment_tokens(model, batch, args.segment_frames)
    return Case(step, size.batch_size, tokens, (flops, executed, attention)), model


# ----------------------------------------------------------------- the yardstick's step
def minimal_case(model: VideoModule, case: Case, device: torch.device, dtype: torch.dtype) -> Case:
    """A `MinimalDiT` of the project DiT's width, depth, heads, MLP ratio and token count."""
    dit = model.dit
    block = dit.blocks[0]
    width = dit.width
    mlp_ratio = block.mlp[0].out_features / width
    in_dim = dit.latent_channels * math.prod(dit.patch)
    n = case.tokens_per_sample
    torch.manual_seed(0)
    net = MinimalDiT(in_dim, width, len(dit.blocks), block.attn.heads, mlp_ratio, n).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(case.batch_size, n, in_dim, device=device)

    def step() -> None:
        torch.manual_seed(0)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = flow_loss(net, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops, attention = count_flops(step)
    return Case(step, case.batch_size, n, (flops, flops, attention))


# ----------------------------------------------------------------- alternating timing
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def alternate(
    steps: dict[str, Callable[[], Any]], device: torch.device, warmup: int, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds of each step in each of `rounds` rounds after `warmup`, by clock: `wall`, and
    `cpu` (this process's CPU time: the work itself, without the waits for a core that other
    processes cause). The order within a round reverses every round, so no step always follows
    the same one."""
    names = list(steps)
    times = {name: {clock: [] for clock in CLOCKS} for name in names}
    for r in range(warmup + rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            start = {clock: now() for clock, now in CLOCKS.items()}
            steps[name]()
            sync(device)
            if r >= warmup:
                for clock, now in CLOCKS.items():
                    times[name][clock].append(now() - start[clock])
    return times


def rates(case: Case, seconds: float, peak: float) -> dict[str, Any]:
    model, executed, attention = case.flops
    return {
        "batch_size": case.batch_size,
        "tokens_per_sample": case.tokens_per_sample,
        "step_s": seconds,
        "tokens_per_s": case.batch_size * case.tokens_per_sample / seconds,
        "samples_per_s": case.batch_size / seconds,
        "model_gflop_per_step": model / 1e9,
        "hardware_gflop_per_step": executed / 1e9,
        "attention_flop_fraction": attention / model,
        "achieved_gflop_per_s": model / seconds / 1e9,
        "mfu": model / seconds / peak,
        "hfu": executed / seconds / peak,
    }


def compare(
    project: Case, minimal: Case, times: dict[str, list[float]], peak: float
) -> dict[str, Any]:
    """Rates of both models from one clock's medians, and their ratios."""
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "project": rates(project, med["project"], peak),
        "minimal": rates(minimal, med["minimal"], peak),
        "peak_gflop_per_s": peak / 1e9,
        "ratio": med["minimal"] / med["project"],  # equal tokens per step: a tokens/s ratio
        "paired_ratio": statistics.median(
            m / p for m, p in zip(times["minimal"], times["project"], strict=True)
        ),
    }


def measure(
    args: argparse.Namespace, size: Size, device: torch.device, precision: str
) -> dict[str, Any]:
    """Project vs minimal DiT at `size`, alternating, with the CPU peak timed among them.

    The top-level rates are wall-clock; on CPU `cpu_time` repeats them from process CPU time
    (peak included), which a shared machine's load disturbs far less (one thread: CPU time is
    the wall time the step would take alone)."""
    dtype = DTYPES[precision]
    project, model = project_case(args, size, device, dtype)
    minimal = minimal_case(model, project, device, dtype)
    steps: dict[str, Callable[[], Any]] = {"project": project.step, "minimal": minimal.step}
    timed_peak = device.type == "cpu" and args.peak_tflops is None
    if timed_peak:
        a, b = (torch.randn(PEAK_N, PEAK_N, dtype=dtype) for _ in range(2))
        steps["matmul"] = lambda: [a @ b for _ in range(PEAK_REPEATS)]
    load_before = os.getloadavg()
    times = alternate(steps, device, args.warmup, args.rounds)
    load_after = os.getloadavg()
    result: dict[str, Any] = {"size": asdict(size), "precision": precision}
    for clock in CLOCKS if device.type == "cpu" else ("wall",):
        clock_times = {name: t[clock] for name, t in times.items()}
        peak_s = statistics.median(clock_times["matmul"]) if timed_peak else math.nan
        cpu_peak = lambda s=peak_s: 2 * PEAK_N**3 * PEAK_REPEATS / s  # noqa: E731
        peak, source = peak_flops(device, precision, args.peak_tflops, cpu_peak)
        if timed_peak:
            source = f"{precision} {PEAK_N}^3 matmul, median of the {args.rounds} rounds"
        rows = compare(project, minimal, clock_times, peak)
        if clock == "wall":
            result.update(rows, peak_source=source)
        else:
            result[f"{clock}_time"] = rows
    result.update(
        flop_ratio=project.flops[0] / minimal.flops[0],
        loadavg_before=load_before,
        loadavg_after=load_after,
        rounds=args.rounds,
    )
    return result


# ----------------------------------------------------------------- report
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=shipped_model.STAGE1_CONFIG)
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["default", "large"])
    p.add_argument("--width", type=int, default=None, help="with --depth --heads --resolution "
                   "--batch_size: one `custom` size instead of --sizes")  # fmt: skip
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--resolution", type=int, nargs=2, default=None)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="default: bf16 on CUDA, fp32 on CPU (bf16 matmuls are emulated on most "
                        "CPUs)")  # fmt: skip
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--segment_frames", type=int, default=4)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--grad_checkpointing", action="store_true")
    p.add_argument("--compile", choices=["none", "blocks", "dit"], default="none",
                   help="compile the project's DiT (the yardstick stays eager)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds")
    p.add_argument("--rounds", type=int, default=40, help="timed rounds")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU intra-op threads (default 1: the steadiest on cores shared with "
                        "other processes)")  # fmt: skip
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="dense peak of the device for the measured precision (overrides the "
                        "built-in card table and the CPU matmul)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.precision is None:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"
    return args


def sizes_of(args: argparse.Namespace) -> list[Size]:
    """The sizes to measure: --sizes, or one `custom` size when any size flag is given."""
    flags = {k: getattr(args, k) for k in ("width", "depth", "heads", "resolution", "batch_size")}
    given = {k: (tuple(v) if k == "resolution" else v) for k, v in flags.items() if v is not None}
    if given:
        return [replace(Size("custom"), **given)]
    return [SIZES[name] for name in args.sizes]


def row(size: str, name: str, r: dict[str, Any]) -> str:
    return (
        f"{size:<9}{name:<9}{r['tokens_per_s']:>10.0f}{r['step_s']:>9.4f}"
        f"{r['model_gflop_per_step']:>10.2f}{r['achieved_gflop_per_s']:>9.1f}{r['mfu']:>7.1%}"
        f"{r['hfu']:>7.1%}{r['attention_flop_fraction']:>7.1%}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    for name in ("lightning.pytorch", "lightning.fabric"):  # one table, no Trainer chatter
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    results = {size.name: measure(args, size, device, args.precision) for size in sizes_of(args)}
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "threads": torch.get_num_threads(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sizes": results,
    }
    for name, r in results.items():  # flat "size.key" too, for scripts that grep one number
        report[f"{name}.ratio"] = r["ratio"]
        report[f"{name}.project.mfu"] = r["project"]["mfu"]
        report[f"{name}.project.tokens_per_s"] = r["project"]["tokens_per_s"]
    print(f"device={report['device']} threads={report['threads']} config={args.config} "
          f"precision={args.precision} compile={args.compile}")  # fmt: skip
    print(
        f"{'size':<9}{'model':<9}{'tokens/s':>10}{'step s':>9}{'GFLOP':>10}{'GFLOP/s':>9}"
        f"{'MFU':>7}{'HFU':>7}{'attn':>7}"
    )
    for name, r in results.items():
        print(row(name, "project", r["project"]))
        print(row(name, "minimal", r["minimal"]))
        load = " ".join(f"{x:.2f}" for x in r["loadavg_before"])
        print(
            f"{'':<9}ratio {r['ratio']:.3f} (paired {r['paired_ratio']:.3f}), FLOPs x"
            f"{r['flop_ratio']:.3f}, peak {r['peak_gflop_per_s']:.1f} GFLOP/s "
            f"({r['peak_source']}), load {load}; batch {r['size']['batch_size']}, "
            f"{r['project']['tokens_per_sample']} tokens"
        )
        if "cpu_time" in r:
            c = r["cpu_time"]
            print(
                f"{'':<9}CPU time: project {c['project']['tokens_per_s']:.0f} tokens/s, MFU "
                f"{c['project']['mfu']:.1%}; minimal {c['minimal']['tokens_per_s']:.0f}, "
                f"{c['minimal']['mfu']:.1%}; ratio {c['ratio']:.3f} (paired "
                f"{c['paired_ratio']:.3f}), peak {c['peak_gflop_per_s']:.1f} GFLOP/s"
            )
    print(
        f"(medians of {args.rounds} alternating rounds after {args.warmup}; ratio = project / "
        f"minimal tokens/s; MFU from model FLOPs, HFU from executed FLOPs; attn = attention's "
        f"share of the model FLOPs)"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
