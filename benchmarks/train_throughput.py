"""Training throughput: tokens/s, samples/s and model FLOPs utilisation of one training step.

    python benchmarks/train_throughput.py                       # CPU, bf16 and fp32, width 512
    python benchmarks/train_throughput.py --precision bf16 --width 1024 --depth 8 --json out.json

The step is the stage's real training step (teacher-forcing batch, rectified-flow loss, backward,
AdamW) on random pixel batches, so data loading is excluded (use the latent cache in real runs).
Model FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on one step (matmuls,
attention, convolutions; forward and backward). MFU divides achieved FLOP/s by a peak: on CPU a
dense matmul of the same dtype timed in the same run, on CUDA `--peak_tflops` (default: H100
bf16 dense, 989). Stage 2 is one Direct Forcing video step (`DirectForcingModule.training_step`
under a Trainer of the same precision: every segment's forward + backward in order, one
optimizer step), starting from the stage-1 weights; its tokens are those of all the video's
segments, its samples are videos (only the head trains, so its backward stops at the head:
expect far more tokens/s than stage 1). Single process: under DDP/FSDP per-device throughput
is this figure minus communication, which overlaps the backward.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.direct_forcing import DirectForcingModule
from lightning_modules.dit import VideoDiT
from lightning_modules.text_encoder import HashTextEncoder
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


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048) -> float:
    """FLOP/s of a dense n x n x n matmul: the attainable peak MFU is measured against on CPU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, warmup=2, repeats=5)
    return 2 * n**3 / seconds


def build_dit(args: argparse.Namespace) -> VideoDiT:
    return VideoDiT(
        latent_channels=48, text_dim=128, width=args.width, depth=args.depth, heads=args.heads,
        frame_pack=(1, 2, 16), grad_checkpointing=args.grad_checkpointing,
    )  # fmt: skip


def build_stage1(args: argparse.Namespace, device: torch.device) -> VideoModule:
    model = VideoModule(build_dit(args), text_encoder=HashTextEncoder(dim=128), prompt_dropout=0.1)
    model.hparams.compile = args.compile
    model.configure_model()
    return model.to(device).train()


def random_batch(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    b, s, t, (h, w) = args.batch_size, args.segments, args.segment_frames, args.resolution
    video = torch.rand(b, s, t, 3, h, w, device=device) * 2 - 1
    return {
        "video": video,
        "image": video[:, 0, 0],
        "num_segments": torch.full((b,), s, dtype=torch.long),
        "caption": ["a red circle bounces past a dark pillar as the camera pans left"] * b,
    }


def measure_stage1(args: argparse.Namespace, precision: str, device: torch.device) -> dict:
    model = build_stage1(args, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = random_batch(args, device)
    dtype = DTYPES[precision]

    def step() -> None:
        # bf16 is autocast over fp32 weights, as `precision: bf16-mixed` does in the Trainer.
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            x, seg, history, image = model.teacher_forcing_batch(batch)
            text = model.encode_text(batch["caption"], model.hparams.prompt_dropout)
            loss, *_ = model.flow_loss(x, seg, history, image, text)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, warmup=args.warmup, repeats=args.steps)
    tokens = segment_tokens(model, batch, args)
    return summary(args, precision, device, flops, seconds, tokens)


def segment_tokens(model: VideoModule, batch: dict[str, Any], args: argparse.Namespace) -> int:
    """Sequence length of one segment's DiT call (text, image, FramePack context, noisy)."""
    _, _, h, w = model.encode_image(batch["image"]).shape[1:]
    return model.dit.tokens_per_segment(
        args.segment_frames // model.codec.temporal_factor, h, w,
        model.text_encoder(batch["caption"][:1])[0].shape[1],
    )  # fmt: skip


def summary(
    args: argparse.Namespace, precision: str, device: torch.device, flops: float,
    seconds: float, tokens: int,
) -> dict:  # fmt: skip
    """Rates of one step over `batch_size` samples of `tokens` tokens each."""
    peak = (
        args.peak_tflops * 1e12 if device.type == "cuda" else matmul_peak(DTYPES[precision], device)
    )  # the CPU peak is timed now, on the same (possibly shared) cores
    result = {
        "precision": precision,
        "tokens_per_sample": tokens,
        "step_s": seconds,
        "tokens_per_s": args.batch_size * tokens / seconds,
        "samples_per_s": args.batch_size / seconds,
        "model_tflop_per_step": flops / 1e12,
        "achieved_gflop_per_s": flops / seconds / 1e9,
        "peak_gflop_per_s": peak / 1e9,
        "mfu": flops / seconds / peak,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


class StepTimer(L.Callback):
    """Wall time of each training step after `warmup`; FLOPs counted on the first step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self.flops = 0
        self._counter: FlopCounterMode | None = None
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        if idx == 0:  # counting slows the step, so the counted step is never timed
            self._counter = FlopCounterMode(display=False)
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
            self.flops = self._counter.get_total_flops()
            self._counter = None
        if trainer.global_step > self.warmup:
            self.times.append(elapsed)


def measure_stage2(args: argparse.Namespace, precision: str, device: torch.device) -> dict:
    """One Direct Forcing step per video batch (all segments, one optimizer step), timed."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # one table, no chatter
    warnings.filterwarnings("ignore", module="lightning")
    stage1 = build_stage1(args, torch.device("cpu"))
    batch = random_batch(args, torch.device("cpu"))  # the Trainer moves it to `device`
    tokens = segment_tokens(stage1, batch, args) * args.segments  # every segment of the video
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "stage1.ckpt"
        torch.save({"state_dict": stage1.state_dict()}, ckpt)
        module = DirectForcingModule(
            build_dit(args), init_checkpoint=str(ckpt), text_encoder=HashTextEncoder(dim=128),
            prompt_dropout=0.1, compile=args.compile,
        )  # fmt: skip
    timer = StepTimer(args.warmup + 1)  # +1: the FLOP-counted first step
    trainer = L.Trainer(
        accelerator=device.type, devices=1, precision=TRAINER_PRECISION[precision],
        max_steps=args.warmup + 1 + args.steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    loader = DataLoader([batch] * (args.warmup + 1 + args.steps), batch_size=None)
    trainer.fit(module, loader)
    seconds = statistics.median(timer.times)
    return summary(args, precision, device, timer.flops, seconds, tokens)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--resolution", type=int, nargs=2, default=(64, 64))
    p.add_argument("--segment_frames", type=int, default=8)
    p.add_argument("--segments", type=int, default=3)
    p.add_argument("--grad_checkpointing", action="store_true")
    p.add_argument("--compile", choices=["none", "blocks", "dit"], default="none")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--peak_tflops", type=float, default=989.0, help="CUDA dense bf16 peak")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p.parse_args()


def main() -> dict:
    args = parse()
    device = torch.device(args.device)
    torch.manual_seed(0)
    precisions = ["bf16", "fp32"] if args.precision == "both" else [args.precision]
    runs = {p: measure_stage1(args, p, device) for p in precisions}
    first = runs[precisions[0]]
    stage2 = measure_stage2(args, precisions[0], device)
    report = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "stage1": {**first, "by_precision": runs},
        "stage2": stage2,
    }
    header = f"{'stage':<7}{'prec':<6}{'tokens/s':>11}{'samples/s':>11}{'step s':>9}"
    header += f"{'GFLOP/s':>10}{'peak':>9}{'MFU':>7}"
    print(f"device={device} threads={report['threads']} width={args.width} depth={args.depth}")
    print(header)
    for p, r in runs.items():
        print(
            f"{'1':<7}{p:<6}{r['tokens_per_s']:>11.0f}{r['samples_per_s']:>11.2f}"
            f"{r['step_s']:>9.3f}{r['achieved_gflop_per_s']:>10.1f}"
            f"{r['peak_gflop_per_s']:>9.1f}{r['mfu']:>7.1%}"
        )
    r = stage2
    print(
        f"{'2':<7}{precisions[0]:<6}{r['tokens_per_s']:>11.0f}{r['samples_per_s']:>11.2f}"
        f"{r['step_s']:>9.3f}{r['achieved_gflop_per_s']:>10.1f}"
        f"{r['peak_gflop_per_s']:>9.1f}{r['mfu']:>7.1%}"
    )
    print(f"(stage 2: one step = one batch of {args.segments}-segment videos, all segments)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
