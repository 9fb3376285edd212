"""Rollout scaling: per-segment latency and peak memory over one long rollout (Sec. 3.1 "O(n)").

    PYTHONPATH=. python benchmarks/rollout_scaling.py [--segments 64] [--json out.json]

Three modes of the same tiny model (untrained weights: cost does not depend on them):
  memorypack    FramePack-F1 context + SemanticPack memory (fixed m tokens)
  f1            FramePack-F1 context only (`semantic_pack: null`)
  full_history  every previous latent frame at 1x (`dit.context: full_history`), the quadratic
                baseline the paper argues against
Each mode runs in a fresh subprocess so one mode's allocations cannot hide another's.

Latency: wall time of each segment's generation (sampling + memory update + decode), through
`VideoModule.generate(on_segment=...)`. Memory: per-segment peak resident set size (RSS) of the
process, read as VmHWM from /proc/self/status after resetting it through /proc/self/clear_refs
at the start of each segment (Linux; torch's CPU allocations are invisible to tracemalloc), plus
the exact bytes of the state the rollout carries to the next segment (history + psi). Ratios
compare medians of two windows (segments 2-6 vs the last five), since single samples are noisy.
Sampling uses `--steps` Euler steps (default 4, fewer than the stage-1 config's 16) and one
intra-op thread, so the whole run takes about a minute or two on a shared 2-core CPU.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

MODES = ("memorypack", "f1", "full_history")
ROOT = Path(__file__).resolve().parents[1]
SIZES = ("segments", "steps", "frames", "resolution", "width", "depth", "threads")


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak RSS to the current RSS


def build(mode: str, width: int, depth: int, steps: int) -> Any:
    from lightning_modules.codec import SpaceToDepthCodec
    from lightning_modules.dit import VideoDiT
    from lightning_modules.semantic_pack import SemanticPack
    from lightning_modules.text_encoder import HashTextEncoder
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
    """One rollout of `args.segments` segments; per-segment ms, peak RSS MB and state MB."""
    torch.set_num_threads(args.threads)
    module = build(mode, args.width, args.depth, args.steps)
    image = torch.rand(1, 3, args.resolution, args.resolution) * 2 - 1
    ms: list[float] = []
    peak: list[float] = []
    state: list[float] = []
    last = [0.0]
    captured: dict[str, Any] = {}

    def on_segment(k: int) -> None:
        now = time.perf_counter()
        ms.append(1e3 * (now - last[0]))
        peak.append(peak_rss_mb())
        state.append(captured.get("bytes", 0) / 2**20)
        reset_peak_rss()
        last[0] = time.perf_counter()

    # Bytes the rollout carries into the next segment: history (+ psi), seen at the DiT's input.
    def record_state(_: torch.nn.Module, a: tuple, kw: dict) -> None:
        memory = kw.get("memory")
        captured["bytes"] = a[3].nbytes + (0 if memory is None else memory.nbytes)

    module.dit.register_forward_pre_hook(record_state, with_kwargs=True)
    # Warm-up rollout (discarded): first calls pay for lazy init and allocator growth.
    module.generate(image, ["warm up"], 3, frames_per_segment=args.frames)
    reset_peak_rss()
    gen = torch.Generator().manual_seed(0)
    last[0] = time.perf_counter()
    module.generate(image, ["a red circle moves right"], args.segments, generator=gen,
                    frames_per_segment=args.frames, on_segment=on_segment)  # fmt: skip
    return {"ms": ms, "peak_mb": peak, "state_mb": state}


def ratio(series: list[float]) -> float:
    """median(last five) / median(segments 2-6)."""
    return statistics.median(series[-5:]) / statistics.median(series[2:7])


def summarize(results: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, r in results.items():
        out[mode] = {
            "latency_ratio": ratio(r["ms"]),
            "memory_ratio": ratio(r["peak_mb"]),
            "state_ratio": ratio(r["state_mb"]),
            "latency_ms_first": statistics.median(r["ms"][2:7]),
            "latency_ms_last": statistics.median(r["ms"][-5:]),
            "peak_mb_first": statistics.median(r["peak_mb"][2:7]),
            "peak_mb_last": statistics.median(r["peak_mb"][-5:]),
            "per_segment": r,
        }
    return out


def print_table(results: dict[str, dict[str, list[float]]], summary: dict[str, Any]) -> None:
    modes = list(results)
    print("segment | " + " | ".join(f"{m} ms, peak MB, state MB" for m in modes))
    n = len(results[modes[0]]["ms"])
    for k in range(n):
        cells = [
            f"{results[m]['ms'][k]:8.1f} {results[m]['peak_mb'][k]:7.1f} "
            f"{results[m]['state_mb'][k]:7.3f}"
            for m in modes
        ]
        print(f"{k:7d} | " + " | ".join(cells))
    print(
        "\nmode         | latency ms (seg 2-6 -> last 5) | latency ratio | peak MB ratio | state ratio"
    )
    for m in modes:
        s = summary[m]
        print(
            f"{m:12s} | {s['latency_ms_first']:9.1f} -> {s['latency_ms_last']:9.1f}"
            f"         | {s['latency_ratio']:13.2f} | {s['memory_ratio']:13.3f} | "
            f"{s['state_ratio']:.2f}"
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
            cmd = [sys.executable, __file__, *sizes, "--only", mode, "--raw", str(raw)]
            subprocess.run(cmd, check=True, env=env)
            results[mode] = json.loads(raw.read_text())
    summary = summarize(results)
    print_table(results, summary)
    if args.json is not None:
        # Nested per mode, plus flat "mode.key" ratios for scripts that grep one number.
        flat = {f"{m}.{k}": v for m, s in summary.items() for k, v in s.items() if "ratio" in k}
        args.json.write_text(json.dumps({**flat, **summary}, indent=2))
    return summary


if __name__ == "__main__":
    main()
