"""Training throughput: tokens/s, samples/s, MFU and HFU of the shipped stage-1 and stage-2 steps.

    python -m benchmarks.train_throughput                 # CPU: fp32, demo sizes, 1 thread
    python -m benchmarks.train_throughput --precision bf16 --width 1024 --depth 8 \
        --resolution 128 128 --segment_frames 8 --json out.json        # CUDA: card's bf16 peak

The model is the shipped stage-1 model, built from `--config` (default configs/stage1.yaml,
MemoryPack: DiT + SemanticPack) by `train.build_model`; only the size flags given here
(`--width --depth --heads`, applied to the DiT and SemanticPack alike, `--grad_checkpointing`,
`--compile`) override it. Batches are random pixel videos of `--segments` segments, so data
loading is excluded (use the latent cache in real runs).

Stage 1 is the teacher-forcing step (`VideoModule.teacher_forcing_loss`: one segment per video
with its true history and teacher-forced psi, prompt dropout, backward, AdamW), reseeded before
each step so that every step draws the same segment and costs the same FLOPs. Its tokens per
sample are one DiT call's sequence (text, image, FramePack context, noisy; psi's m tokens and
SemanticPack's Memorize tokens are not counted as tokens, their FLOPs are). Stage 2 is one
Direct Forcing video step (`DirectForcingModule.training_step` under a Trainer of the same
precision: every segment's forward + backward in order, one optimizer step) from the stage-1
weights; its tokens are those of all the video's segments, its samples are videos. Only the
head trains, so its backward stops at the head: expect far more tokens/s than stage 1.

FLOPs and peaks: `benchmarks/flop_count.py` (attention included on every device; MFU from model
FLOPs, HFU from executed FLOPs, which differ under `--grad_checkpointing`; CUDA peak of the card
and precision found, or `--peak_tflops`; CPU peak = a dense matmul timed in this run). Times are
medians over `--steps` steps after `--warmup`; FLOP-counted steps are never timed. Single
process: under DDP/FSDP per-device throughput is this figure minus communication.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from benchmarks import shipped_model
from benchmarks.flop_count import attention_flops, count_flops, flop_counter, peak_flops
from lightning_modules.video_module import VideoModule

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TRAINER_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of `fn` in seconds (medians: the machine may be shared)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 1024) -> float:
    """FLOP/s of a dense n x n x n matmul: the attainable peak MFU is measured against on CPU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, warmup=2, repeats=5)
    return 2 * n**3 / seconds


# ----------------------------------------------------------------- the shipped model
def build_stage1(args: argparse.Namespace) -> VideoModule:
    """The model of `--config` (configs/stage1.yaml), only sizes overridden, on CPU."""
    return shipped_model.build_stage1(args.config, **sizes(args))


def sizes(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("width", "depth", "heads", "grad_checkpointing", "compile")
    return {k: getattr(args, k) for k in keys}


def random_batch(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    b, s, t, (h, w) = args.batch_size, args.segments, args.segment_frames, args.resolution
    video = torch.rand(b, s, t, 3, h, w, device=device) * 2 - 1
    return {
        "video": video,
        "image": video[:, 0, 0],
        "num_segments": torch.full((b,), s, dtype=torch.long),
        "caption": ["a red circle bounces past a dark pillar as the camera pans left"] * b,
        "name": [str(i) for i in range(b)],
    }


def segment_tokens(model: VideoModule, batch: dict[str, Any], args: argparse.Namespace) -> int:
    """Sequence length of one segment's DiT call (text, image, FramePack context, noisy)."""
    _, _, h, w = model.encode_image(batch["image"][:1].cpu().to(model.device)).shape[1:]
    return model.dit.tokens_per_segment(
        args.segment_frames // model.codec.temporal_factor, h, w,
        model.text_encoder(batch["caption"][:1])[0].shape[1],
    )  # fmt: skip


def summary(
    args: argparse.Namespace, precision: str, device: torch.device, flops: tuple[int, int, int],
    seconds: float, tokens: int, peak: tuple[float, str],
) -> dict[str, Any]:  # fmt: skip
    """Rates of one step over `batch_size` samples of `tokens` tokens each.

    flops = (model FLOPs, executed FLOPs, attention's share of the model FLOPs).
    """
    model, executed, attention = flops
    peak_flop_s, peak_source = peak
    result = {
        "precision": precision,
        "tokens_per_sample": tokens,
        "step_s": seconds,
        "tokens_per_s": args.batch_size * tokens / seconds,
        "samples_per_s": args.batch_size / seconds,
        "model_tflop_per_step": model / 1e12,
        "hardware_tflop_per_step": executed / 1e12,
        "attention_flop_fraction": attention / model,
        "achieved_gflop_per_s": model / seconds / 1e9,
        "peak_gflop_per_s": peak_flop_s / 1e9,
        "peak_source": peak_source,
        "mfu": model / seconds / peak_flop_s,
        "hfu": executed / seconds / peak_flop_s,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def count_model_and_executed(
    dit: torch.nn.Module, checkpointing: bool, step: Callable[[], Any]
) -> tuple[int, int, int]:
    """(model, executed, attention) FLOPs: model FLOPs without activation checkpointing, executed
    with it (the recomputed forward), each from one (untimed) step."""
    dit.grad_checkpointing = False
    model, attention = count_flops(step)
    dit.grad_checkpointing = checkpointing
    executed = count_flops(step)[0] if checkpointing else model
    return model, executed, attention


def measure_stage1(
    args: argparse.Namespace, precision: str, device: torch.device, peak: tuple[float, str]
) -> dict[str, Any]:
    model = build_stage1(args)
    model.configure_model()
    model = model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = random_batch(args, device)
    dtype = DTYPES[precision]

    def step() -> None:
        torch.manual_seed(0)  # the same segment index, t and dropout every step: equal FLOPs
        # bf16 is autocast over fp32 weights, as `precision: bf16-mixed` does in the Trainer.
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model.teacher_forcing_loss(batch, model.hparams.prompt_dropout)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = count_model_and_executed(model.dit, args.grad_checkpointing, step)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, warmup=args.warmup, repeats=args.steps)
    tokens = segment_tokens(model, batch, args)
    return summary(args, precision, device, flops, seconds, tokens, peak)


class StepTimer(L.Callback):
    """Wall time of each training step after `warmup`; FLOPs counted on the first steps.

    Step 0 counts model FLOPs (activation checkpointing off), step 1 the executed FLOPs with it
    on (only under `checkpointing`); counted steps are slower and are never timed.
    """

    def __init__(self, warmup: int, checkpointing: bool) -> None:
        self.warmup = warmup
        self.checkpointing = checkpointing
        self.counted = 2 if checkpointing else 1
        self.times: list[float] = []
        self.flops: list[tuple[int, int]] = []
        self._counter: Any = None
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        if idx < self.counted:
            module.dit.grad_checkpointing = self.checkpointing and idx == 1
            self._counter = flop_counter()
            self._counter.__enter__()
        if idx == self.warmup and module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(module.device)
        sync(module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        sync(module.device)
        elapsed = time.perf_counter() - self._start
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            counter, self._counter = self._counter, None
            self.flops.append((counter.get_total_flops(), attention_flops(counter)))
        if trainer.global_step > self.warmup:
            self.times.append(elapsed)


def measure_stage2(
    args: argparse.Namespace, precision: str, device: torch.device, peak: tuple[float, str]
) -> dict[str, Any]:
    """One Direct Forcing step per video batch (all segments, one optimizer step), timed."""
    stage1 = build_stage1(args)
    batch = random_batch(args, torch.device("cpu"))  # the Trainer moves it to `device`
    tokens = segment_tokens(stage1, batch, args) * args.segments  # every segment of the video
    module = shipped_model.build_stage2(stage1, compile=args.compile)
    warmup = args.warmup + (2 if args.grad_checkpointing else 1)  # + the FLOP-counted steps
    timer = StepTimer(warmup, args.grad_checkpointing)
    trainer = L.Trainer(
        accelerator=device.type, devices=1, precision=TRAINER_PRECISION[precision],
        max_steps=warmup + args.steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    loader = DataLoader([batch] * (warmup + args.steps), batch_size=None)
    trainer.fit(module, loader)
    (model, attention), executed = timer.flops[0], timer.flops[-1][0]
    seconds = statistics.median(timer.times)
    return summary(args, precision, device, (model, executed, attention), seconds, tokens, peak)


# ----------------------------------------------------------------- report
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=shipped_model.STAGE1_CONFIG)
    p.add_argument("--precision", choices=["fp32", "bf16", "both"], default=None,
                   help="default: both on CUDA, fp32 on CPU (bf16 matmuls are emulated on most "
                        "CPUs)")  # fmt: skip
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, default=None, help="default: the config's")
    p.add_argument("--depth", type=int, default=None, help="default: the config's")
    p.add_argument("--heads", type=int, default=None, help="default: the config's")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--resolution", type=int, nargs=2, default=(32, 32))
    p.add_argument("--segment_frames", type=int, default=4)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--grad_checkpointing", action="store_true")
    p.add_argument("--compile", choices=["none", "blocks", "dit"], default="none")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU intra-op threads (default 1: on cores shared with other processes, "
                        "two OpenMP threads measured 20x slower than one)")  # fmt: skip
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="dense peak of the device for the measured precision (overrides the "
                        "built-in card table and the CPU matmul)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.precision is None:
        args.precision = "both" if args.device.startswith("cuda") else "fp32"
    return args


def row(stage: str, r: dict[str, Any]) -> str:
    pct = lambda x: "nan" if math.isnan(x) else f"{x:.1%}"  # noqa: E731
    return (
        f"{stage:<7}{r['precision']:<6}{r['tokens_per_s']:>11.0f}{r['samples_per_s']:>11.2f}"
        f"{r['step_s']:>9.3f}{r['achieved_gflop_per_s']:>10.1f}{r['peak_gflop_per_s']:>10.1f}"
        f"{pct(r['mfu']):>7}{pct(r['hfu']):>7}{r['attention_flop_fraction']:>7.1%}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    for name in ("lightning.pytorch", "lightning.fabric"):  # one table, no Trainer chatter
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)  # the peak matmul below runs on the same threads
    torch.manual_seed(0)
    precisions = ["bf16", "fp32"] if args.precision == "both" else [args.precision]
    peaks = {
        p: peak_flops(device, p, args.peak_tflops, lambda p=p: matmul_peak(DTYPES[p], device))
        for p in precisions
    }  # the CPU peak is timed now, on the same (possibly shared) cores
    runs = {p: measure_stage1(args, p, device, peaks[p]) for p in precisions}
    first = runs[precisions[0]]
    stage2 = measure_stage2(args, precisions[0], device, peaks[precisions[0]])
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "threads": torch.get_num_threads(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "stage1": {**first, "by_precision": runs},
        "stage2": stage2,
    }
    for stage in ("stage1", "stage2"):  # flat "stage.key" too, for scripts that grep one number
        for key in ("mfu", "hfu", "tokens_per_s", "attention_flop_fraction"):
            report[f"{stage}.{key}"] = report[stage][key]
    dit = shipped_model.size_overrides(**sizes(args))["model"]["init_args"]["dit"]["init_args"]
    print(f"device={report['device']} threads={report['threads']} config={args.config} dit={dit}")
    print(f"peak: {', '.join(f'{p}: {s}' for p, (_, s) in peaks.items())}")
    print(
        f"{'stage':<7}{'prec':<6}{'tokens/s':>11}{'samples/s':>11}{'step s':>9}{'GFLOP/s':>10}"
        f"{'peak':>10}{'MFU':>7}{'HFU':>7}{'attn':>7}"
    )
    for r in runs.values():
        print(row("1", r))
    print(row("2", stage2))
    print(
        f"(GFLOP/s and MFU from model FLOPs, HFU from executed FLOPs (they differ under "
        f"--grad_checkpointing); attn = attention's share of the model FLOPs; stage 2: one step "
        f"= one batch of {args.segments}-segment videos, all segments)"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
