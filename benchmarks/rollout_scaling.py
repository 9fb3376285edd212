"""Rollout scaling: per-segment latency and tensor memory over one long rollout (Sec. 3.1 "O(n)").

    python -m benchmarks.rollout_scaling [--segments 64] [--json out.json]

Three modes of the same tiny model (untrained weights: cost does not depend on them):
  memorypack    FramePack-F1 context + SemanticPack memory (fixed m tokens)
  f1            FramePack-F1 context only (`semantic_pack: null`)
  full_history  every previous latent frame at 1x (`dit.context: full_history`), the quadratic
                baseline the paper argues against
Each mode runs in a fresh subprocess so one mode's allocations cannot hide another's.

Latency: wall time of each segment's generation (sampling + memory update + decode), through
`VideoModule.generate(on_segment=...)`, in a rollout of its own.

Memory: tensor allocations, where growth happens (the process's resident set is hundreds of MB of
libraries and allocator caches, against a carried state of a fraction of a MB). Per segment, the
peak of live tensor bytes during the segment, counted from the rollout's start (it holds the
carried state, the segment's activations and the decoded frames returned so far). On CUDA from
torch.cuda's allocator statistics; on CPU, where torch has no allocator statistics and
tracemalloc does not see its allocator, from the allocation and free events of
`torch.profiler(profile_memory=True)` in a second, profiled rollout (the profiler slows it, so
latency comes from the unprofiled one). `memory_growth_mb` is the growth of that peak from
segments 2-6 to the last five (medians); the part of it that is the decoded output frames (the
same in every mode) is shown next to it. Also printed: the exact bytes of the state the rollout
carries to the next segment (history + psi). Ratios compare medians of the two windows.
Sampling uses `--steps` Euler steps (default 4, fewer than the stage-1 config's 8) and one
intra-op thread, so the whole run takes about two minutes on a shared 2-core CPU.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

MODES = ("memorypack", "f1", "full_history")
ROOT = Path(__file__).resolve().parents[1]
SIZES = ("segments", "steps", "frames", "resolution", "width", "depth", "threads", "device")
MARK = "rollout_scaling.segment_end"


def cpu_allocations(run: Callable[[Callable[[], None]], Any]) -> list[tuple[float, float]]:
    """(peak, end) live tensor bytes of each segment of `run(mark)`, counted from its start.

    `run` calls `mark()` at the end of every segment. The CPU allocator's events come from the
    profiler (`[memory]` events: +bytes per allocation, -bytes per free, in time order with the
    marks); frees of tensors allocated before `run` count as negative.
    """

    def mark() -> None:
        with record_function(MARK):
            pass

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run(mark)
    events = sorted(
        (e.start_ns(), e.name() == MARK, e.nbytes() if e.name() == "[memory]" else 0)
        for e in prof.profiler.kineto_results.events()
        if e.name() in ("[memory]", MARK)
    )
    live = peak = 0
    out = []
    for _, is_mark, nbytes in events:
        if is_mark:
            out.append((float(peak), float(live)))
            peak = live
        else:
            live += nbytes
            peak = max(peak, live)
    return out


def cuda_allocations(
    run: Callable[[Callable[[], None]], Any], device: torch.device
) -> list[tuple[float, float]]:
    """(peak, end) live tensor bytes of each segment, from torch.cuda's allocator statistics."""
    out = []
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)

    def mark() -> None:
        torch.cuda.synchronize(device)
        end = torch.cuda.memory_allocated(device)
        out.append((float(torch.cuda.max_memory_allocated(device) - start), float(end - start)))
        torch.cuda.reset_peak_memory_stats(device)

    run(mark)
    return out


def tensor_allocations(
    run: Callable[[Callable[[], None]], Any], device: torch.device
) -> list[tuple[float, float]]:
    """Per segment (peak, end) bytes of live tensors on `device` during `run(mark)`."""
    if device.type == "cuda":
        return cuda_allocations(run, device)
    if device.type == "cpu":
        return cpu_allocations(run)
    raise ValueError(f"no tensor-allocation statistics for device {device}")


def build(mode: str, width: int, depth: int, steps: int) -> Any:
    from lightning_modules.codecs import SpaceToDepthCodec
    from lightning_modules.networks.dit import VideoDiT
    from lightning_modules.networks.semantic_pack import SemanticPack
    from lightning_modules.networks.text_encoder import HashTextEncoder
    from lightning_modules.video_module import VideoModule

    torch.manual_seed(0)
    context = "full_history" if mode == "full_history" else "framepack"
    dit = VideoDiT(latent_channels=48, text_dim=128, width=width, depth=depth, heads=2,
                   context=context)  # fmt: skip
    # SemanticPack as in configs/stage1.yaml (coarse Memorize patches, m = 8), at this width.
    pack = (
        SemanticPack(width=width, heads=2, memory_tokens=8, window_frames=4, patch=(2, 4, 4))
        if mode == "memorypack"
        else None
    )
    module = VideoModule(dit, SpaceToDepthCodec(patch=4), HashTextEncoder(dim=128), pack,
                         sample_steps=steps)  # fmt: skip
    return module.eval()


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Two rollouts of `args.segments` segments from the same seed: one timed (ms and carried
    state MB per segment), one for tensor memory (peak and end MB per segment)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    module = build(mode, args.width, args.depth, args.steps).to(device)
    image = (torch.rand(1, 3, args.resolution, args.resolution) * 2 - 1).to(device)
    captured: dict[str, int] = {}

    # Bytes the rollout carries into the next segment: history (+ psi), seen at the DiT's input.
    def record_state(_: torch.nn.Module, a: tuple, kw: dict) -> None:
        memory = kw.get("memory")
        captured["bytes"] = a[3].nbytes + (0 if memory is None else memory.nbytes)

    module.dit.register_forward_pre_hook(record_state, with_kwargs=True)

    def rollout(on_segment: Callable[[int], None]) -> None:
        gen = torch.Generator(device).manual_seed(0)
        module.generate(image, ["a red circle moves right"], args.segments, generator=gen,
                        frames_per_segment=args.frames, on_segment=on_segment)  # fmt: skip

    # Warm-up rollout (discarded): first calls pay for lazy init and allocator growth.
    module.generate(image, ["warm up"], 3, frames_per_segment=args.frames)
    ms: list[float] = []
    state: list[float] = []
    last = [0.0]

    def on_segment(k: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ms.append(1e3 * (time.perf_counter() - last[0]))
        state.append(captured.get("bytes", 0) / 2**20)
        last[0] = time.perf_counter()

    last[0] = time.perf_counter()
    rollout(on_segment)
    allocations = tensor_allocations(lambda mark: rollout(lambda k: mark()), device)
    return {
        "ms": ms,
        "state_mb": state,
        "alloc_peak_mb": [peak / 2**20 for peak, _ in allocations],
        "alloc_end_mb": [end / 2**20 for _, end in allocations],
    }


def window_medians(series: list[float]) -> tuple[float, float]:
    """(median of segments 2-6, median of the last five)."""
    return statistics.median(series[2:7]), statistics.median(series[-5:])


def ratio(series: list[float]) -> float:
    """median(last five) / median(segments 2-6)."""
    first, last = window_medians(series)
    return last / first


def summarize(
    results: dict[str, dict[str, list[float]]], output_mb_per_segment: float
) -> dict[str, Any]:
    """Ratios and absolute figures per mode; `output_mb_per_segment`: one segment's decoded
    uint8 frames, which the rollout keeps for the video it returns (the same in every mode)."""
    out: dict[str, Any] = {}
    for mode, r in results.items():
        n = len(r["ms"])
        # Decoded segments held at the last window's median segment minus at the first window's.
        held = statistics.median(range(n - 5, n)) - statistics.median(range(2, 7))
        mem_first, mem_last = window_medians(r["alloc_peak_mb"])
        lat_first, lat_last = window_medians(r["ms"])
        out[mode] = {
            "latency_ratio": ratio(r["ms"]),
            "memory_ratio": ratio(r["alloc_peak_mb"]),
            "state_ratio": ratio(r["state_mb"]),
            "latency_ms_first": lat_first,
            "latency_ms_last": lat_last,
            "alloc_peak_mb_first": mem_first,
            "alloc_peak_mb_last": mem_last,
            "memory_growth_mb": mem_last - mem_first,
            "output_growth_mb": held * output_mb_per_segment,
            "memory_growth_mb_per_segment": (mem_last - mem_first) / held,
            "per_segment": r,
        }
    return out


def print_table(results: dict[str, dict[str, list[float]]], summary: dict[str, Any]) -> None:
    modes = list(results)
    print("segment | " + " | ".join(f"{m}: ms, alloc MB, state MB" for m in modes))
    n = len(results[modes[0]]["ms"])
    for k in range(n):
        cells = [
            f"{results[m]['ms'][k]:8.1f} {results[m]['alloc_peak_mb'][k]:8.3f} "
            f"{results[m]['state_mb'][k]:7.3f}"
            for m in modes
        ]
        print(f"{k:7d} | " + " | ".join(cells))
    print(
        "\nmode         | latency ms (seg 2-6 -> last 5) | ratio | alloc MB (seg 2-6 -> last 5)"
        " | growth MB (output) | ratio | state ratio"
    )
    for m in modes:
        s = summary[m]
        print(
            f"{m:12s} | {s['latency_ms_first']:9.1f} -> {s['latency_ms_last']:9.1f}         "
            f"| {s['latency_ratio']:5.2f} | {s['alloc_peak_mb_first']:9.3f} -> "
            f"{s['alloc_peak_mb_last']:9.3f}       | {s['memory_growth_mb']:7.3f} "
            f"({s['output_growth_mb']:.3f})    | {s['memory_ratio']:5.2f} | {s['state_ratio']:.2f}"
        )
    print(
        "(alloc MB: peak live tensor bytes during the segment, counted from the rollout's start; "
        "output: the decoded frames the rollout keeps for the returned video, part of the growth)"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="Euler sampling steps per segment")
    parser.add_argument("--frames", type=int, default=4, help="pixel (= latent) frames/segment")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--json", type=Path, default=None, help="write the ratios here")
    parser.add_argument("--only", choices=MODES, help=argparse.SUPPRESS)  # subprocess worker
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.segments < 12:
        raise ValueError(f"--segments must be >= 12 for the two ratio windows, got {args.segments}")
    if args.only:
        args.raw.write_text(json.dumps(run_mode(args.only, args)))
        return {}
    results = {}
    sizes = [a for k in SIZES for a in (f"--{k}", str(getattr(args, k)))]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join((str(ROOT), os.environ.get("PYTHONPATH", ""))),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            raw = Path(tmp) / f"{mode}.json"
            cmd = [sys.executable, "-m", "benchmarks.rollout_scaling", *sizes, "--only", mode,
                   "--raw", str(raw)]  # fmt: skip
            subprocess.run(cmd, check=True, env=env, cwd=ROOT)
            results[mode] = json.loads(raw.read_text())
    summary = summarize(results, args.frames * 3 * args.resolution**2 / 2**20)
    print_table(results, summary)
    if args.json is not None:
        # Nested per mode, plus flat "mode.key" ratios for scripts that grep one number.
        flat = {
            f"{m}.{k}": v
            for m, s in summary.items()
            for k, v in s.items()
            if "ratio" in k or "growth" in k
        }
        args.json.write_text(json.dumps({**flat, **summary}, indent=2))
    return summary


if __name__ == "__main__":
    main()
