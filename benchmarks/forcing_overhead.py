"""Cost of the history modes of stage 2: teacher vs direct vs student(k) (Sec. 3.2, Fig. 2).

The paper claims Direct Forcing "incurs no additional overhead" over teacher forcing: the one-step
estimate reuses the loss's forward pass. Student forcing runs the sampler: k extra forwards per
segment. Stage 2 trains only the head, so a segment's forward + backward costs about one forward,
and student(k) should cost about k + 1 teacher steps.

The model is the shipped one: the architecture of configs/stage1.yaml (DiT + SemanticPack, demo
codec and text encoder; `--width` (default 256, twice the demo's), `--depth`, `--heads` override
only sizes) wrapped in `DirectForcingModule` from stage-1 weights (`benchmarks/shipped_model.py`),
with weights moved off the adaLN-zero init as a trained network's are. It trains on the same videos (batch 1, as
configs/stage2_direct_forcing.yaml), switching the mode every step on one module and Trainer
(order rotating), and prints the median wall time per video step; ratios are medians of ratios of
neighbouring steps, so bursts of load on a shared machine hit the modes alike.

The per-step overhead of Lightning and the Python glue is measured too, as the step time of the
same loop with a near-empty model (width 8, depth 1) on tiny videos of as many segments (4 frames
of 16 x 16 pixels, the smallest the demo codec and SemanticPack take): the default size keeps
the real model's teacher step many times above it, so the ratios are the model's, not the loop's.

    python -m benchmarks.forcing_overhead [--segments 4] [--rounds 10] [--json out.json]

Half a minute to two minutes on one thread of a shared 2-core CPU, depending on its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from benchmarks.shipped_model import STAGE1_CONFIG, build_stage1, build_stage2
from datamodules.video_dataset import collate_videos
from lightning_modules.direct_forcing import DirectForcingModule

MODES = ("teacher", "direct", "student")


class ModeCycler(L.Callback):
    """Switches the history mode every step and times each step (one video, one optimizer step).

    Cycling modes step by step on one module and one Trainer gives every mode the same machine
    load, weights and data, so the comparison is paired at the finest grain.
    """

    def __init__(self, modes: tuple[str, ...], warmup: int) -> None:
        self.modes = modes
        self.warmup = warmup
        self.times: dict[str, list[float]] = {m: [] for m in modes}
        self._mode = modes[0]
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        n = len(self.modes)
        order = self.modes[(idx // n) % n :] + self.modes[: (idx // n) % n]  # rotate per cycle
        self._mode = order[idx % n]
        module.hparams.history = self._mode
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        elapsed = time.perf_counter() - self._start
        if trainer.global_step > self.warmup * len(self.modes):
            self.times[self._mode].append(elapsed)


def videos(n: int, segments: int, frames: int, size: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        video = torch.rand(segments, frames, 3, size, size, generator=gen) * 2 - 1
        out.append({"video": video, "image": video[0, 0].clone(), "caption": f"a clip {i}",
                    "num_segments": segments, "name": str(i)})  # fmt: skip
    return out


def stage2(args: argparse.Namespace, width: int | None, depth: int | None, heads: int | None) -> DirectForcingModule:  # fmt: skip
    """The shipped stage-2 model at these sizes, from perturbed stage-1 weights."""
    stage1 = build_stage1(args.config, width=width, depth=depth, heads=heads)
    with torch.no_grad():  # off the adaLN-zero init, as a trained stage-1 network would be
        for p in stage1.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return build_stage2(stage1, student_steps=args.student_steps)


def fit(module: DirectForcingModule, data: list[dict[str, Any]], callback: L.Callback) -> None:
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=1, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=1, collate_fn=collate_videos))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=STAGE1_CONFIG)
    parser.add_argument("--segments", type=int, default=4, help="segments per video")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per mode")
    parser.add_argument("--student_steps", type=int, default=5)
    parser.add_argument("--width", type=int, default=256, help="DiT and SemanticPack width "
                        "(the config's 128 gives a teacher step only ~3x the loop overhead)")  # fmt: skip
    parser.add_argument("--depth", type=int, default=None, help="default: the config's")
    parser.add_argument("--heads", type=int, default=None, help="default: the config's")
    parser.add_argument("--frames", type=int, default=4, help="pixel frames per segment")
    parser.add_argument("--size", type=int, default=32, help="frame height = width")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: steadier "
                        "timings on a shared machine)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in ("lightning.pytorch", "lightning.fabric"):  # one table, no Trainer chatter
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    # Lightning + glue per step: the same loop and videos with a near-empty model.
    empty = ModeCycler(("teacher",), args.warmup)
    data = videos(args.warmup + args.rounds, args.segments, 4, 16)
    fit(stage2(args, width=8, depth=1, heads=1), data, empty)
    overhead = statistics.median(empty.times["teacher"])

    cycler = ModeCycler(MODES, args.warmup)
    data = videos(len(MODES) * (args.warmup + args.rounds), args.segments, args.frames, args.size)
    fit(stage2(args, args.width, args.depth, args.heads), data, cycler)
    times = cycler.times
    med = {m: statistics.median(t) for m, t in times.items()}
    teacher = times["teacher"]
    ratio = {
        m: statistics.median([a / b for a, b in zip(t, teacher, strict=True)])
        for m, t in times.items()
    }
    best = {m: min(t) for m, t in times.items()}  # the least-disturbed step: a load-free reference
    k = args.student_steps
    result = {
        "teacher_s": med["teacher"],
        "direct_s": med["direct"],
        "student_s": med["student"],
        "direct_over_teacher": ratio["direct"],
        "student_over_teacher": ratio["student"],
        "student_expected_over_teacher": k + 1,
        "best_direct_over_teacher": best["direct"] / best["teacher"],
        "best_student_over_teacher": best["student"] / best["teacher"],
        "loop_overhead_s": overhead,
        "teacher_over_loop_overhead": med["teacher"] / overhead,
        "segments": args.segments,
        "student_steps": k,
        "steps_per_mode": len(teacher),
    }
    print(f"{'mode':<18}{'median s/video step':>22}{'vs teacher':>12}{'expected':>10}"
          f"{'best s':>10}{'best ratio':>12}")  # fmt: skip
    for mode, expected in zip(MODES, (1, 1, k + 1), strict=True):
        name = f"student(k={k})" if mode == "student" else mode
        print(
            f"{name:<18}{med[mode]:>22.4f}{ratio[mode]:>12.3f}{expected:>10d}"
            f"{best[mode]:>10.4f}{best[mode] / best['teacher']:>12.3f}"
        )
    print(
        f"({len(teacher)} timed steps per mode, {args.segments} segments per video; Lightning + "
        f"glue per step, near-empty model: {overhead:.4f} s = teacher / "
        f"{result['teacher_over_loop_overhead']:.1f})"
    )
    if result["teacher_over_loop_overhead"] < 5:
        print("warning: the teacher step is under 5x the loop overhead; pass larger sizes")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
