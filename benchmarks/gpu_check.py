"""GPU check, one file, a few minutes on one GPU: the real-backbone code on CUDA and its throughput.

    python -m benchmarks.gpu_check [--json gpu_check.json] [--peak_tflops 989] [--steps 5]
    python -m benchmarks.gpu_check --dry_run      # the same code paths on CPU with toy sizes

1. Tiny configs on CUDA: `configs/framepack_f1/{stage1,stage2_direct_forcing}.yaml` composed
   with `small.yaml` (tiny random HunyuanVideo VAE / LLaMA / CLIP / SigLIP / FramePack-F1 folders,
   `lightning_modules/pretrained/tiny.py`), 2 bf16 steps each through the CLI, then a 3-segment rollout.
2. Throughput under FSDP2 (Lightning's ModelParallelStrategy, one GPU, bf16-mixed), with and
   without activation checkpointing, of one stage-1 training step (teacher-forcing loss,
   backward, AdamW) on pre-encoded latents (the latent-cache path, so the VAE is not timed):
   - `default_dit`: the demo's VideoDiT + SemanticPack (configs/stage1.yaml), batch 8;
   - `framepack_1b`: FramePack-F1's architecture (HunyuanVideo dual/single-stream blocks) at
     width 2048, 4 dual + 6 single blocks (~1B parameters) + SemanticPack, one 9-latent-frame
     segment at 480 x 832 (F1's ~18k video tokens), batch 1.

Figures: median step time over `--steps` steps after 2 warm-up steps; tokens/s counts the video
tokens the denoiser attends over (noisy + FramePack context + image; text excluded); model FLOPs
per step are counted by `FlopCounterMode` on the first step of the run without checkpointing
(matmuls, convolutions and the CUDA SDPA kernels, forward + backward; the attention share is
printed), MFU = model FLOPs / step time / the card's dense bf16 peak; HFU also counts the
recomputed forward under checkpointing. Peak memory is `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]

# Dense bf16 peak (TFLOP/s, no sparsity) by device-name substring, most specific first.
PEAKS = (("GH200", 989.4), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
         ("H100", 989.4), ("H800", 989.4), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0))  # fmt: skip


def count_cpu_attention() -> None:
    """FlopCounterMode has formulas for the CUDA SDPA kernels only; add the CPU one (--dry_run)."""
    from torch.utils import flop_counter as fc

    fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd not in fc.flop_registry:
        fc.register_flop_formula(fwd, get_raw=True)(
            lambda q, k, v, *a, out_val=None, **kw: fc.sdpa_flop_count(q.shape, k.shape, v.shape)
        )
    if bwd not in fc.flop_registry:
        fc.register_flop_formula(bwd, get_raw=True)(
            lambda g, q, k, v, *a, out_val=None, **kw: fc.sdpa_backward_flop_count(
                g.shape, q.shape, k.shape, v.shape
            )
        )


def card_peak(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAKS if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- 1. tiny configs, CLI
def tiny_cli_check(tiny: Path, work: Path, accelerator: str) -> dict[str, Any]:
    from train import main

    common = [
        "--config", str(ROOT / "configs/framepack_f1/small.yaml"),
        f"--model.init_args.dit.init_args.pretrained_dir={tiny / 'framepack'}",
        f"--model.init_args.codec.init_args.pretrained_dir={tiny / 'hunyuan'}",
        f"--model.init_args.text_encoder.init_args.pretrained_dir={tiny / 'hunyuan'}",
        f"--model.init_args.text_encoder.init_args.image_encoder_dir={tiny / 'siglip'}",
        f"--data.init_args.data_dir={work / 'data'}", f"--trainer.accelerator={accelerator}",
        "--trainer.precision=bf16-mixed", "--trainer.max_steps=2",
        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ]  # fmt: skip
    start = time.perf_counter()
    s1 = main(["fit", "--config", str(ROOT / "configs/framepack_f1/stage1.yaml"), *common,
               f"--trainer.default_root_dir={work / 's1'}",
               f"--trainer.logger.init_args.save_dir={work / 's1'}"])  # fmt: skip
    ckpt = next((work / "s1").rglob("last.ckpt"))
    s2 = main(["fit", "--config", str(ROOT / "configs/framepack_f1/stage2_direct_forcing.yaml"),
               *common, f"--model.init_args.init_checkpoint={ckpt}",
               f"--trainer.default_root_dir={work / 's2'}",
               f"--trainer.logger.init_args.save_dir={work / 's2'}"])  # fmt: skip
    model = s1.model.eval()
    image = torch.rand(1, 3, 32, 32, device=model.device) * 2 - 1
    with torch.autocast(model.device.type, torch.bfloat16):
        video = model.generate(image, ["a red circle"], 3, frames_per_segment=8)
    losses = [float(c.trainer.logged_metrics["train/loss"]) for c in (s1, s2)]
    ok = video.shape == (1, 24, 3, 32, 32) and all(map(lambda x: x == x, losses))
    return {"ok": bool(ok), "seconds": time.perf_counter() - start, "device": str(model.device),
            "stage1_loss": losses[0], "stage2_loss": losses[1], "rollout_frames": video.shape[1]}  # fmt: skip


# ---------------------------------------------------------------------- 2. throughput
class StepProbe(L.Callback):
    """Per-step wall time, FLOPs of the first step, peak memory after warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self.counter = warmup, [], None
        self.flops = self.attention_flops = 0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        sync(module.device)
        if idx == self.warmup and module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(module.device)
        if idx == 0:
            self.counter = FlopCounterMode(display=False)
            self.counter.__enter__()
        self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, out: Any, batch: Any, idx: int
    ) -> None:
        sync(module.device)
        self.times.append(time.perf_counter() - self.start)
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            counts = self.counter.get_flop_counts().get("Global", {})
            self.flops = sum(counts.values())
            self.attention_flops = sum(v for op, v in counts.items() if "attention" in str(op))
            self.counter = None


def latent_batches(module: Any, b: int, frames: int, h: int, w: int, n: int) -> list[dict]:
    """Pre-encoded batches (the latent-cache format) with one segment per video."""
    c = module.dit.latent_channels
    g = torch.Generator().manual_seed(0)
    s = module.codec.spatial_factor
    return [{
        "latents": torch.randn(b, 1, frames, c, h, w, generator=g),
        "image_latent": torch.randn(b, 1, c, h, w, generator=g),
        "image": torch.rand(b, 3, h * s, w * s, generator=g) * 2 - 1,
        "num_segments": torch.ones(b, dtype=torch.long),
        "caption": ["a red circle bounces past a dark pillar"] * b, "name": ["x"] * b,
    } for _ in range(n)]  # fmt: skip


def build_default_dit() -> Any:
    from train import build_model

    return build_model(str(ROOT / "configs/stage1.yaml"))


def build_framepack(tiny: Path, device: torch.device, dry_run: bool) -> Any:
    from lightning_modules.networks.semantic_pack import SemanticPack
    from lightning_modules.pretrained.framepack_backbone import FramePackBackbone
    from lightning_modules.pretrained.text_encoders import HunyuanTextEncoder
    from lightning_modules.pretrained.vae import HunyuanVideoVAE
    from lightning_modules.video_module import VideoModule

    heads, layers, single = (2, 1, 1) if dry_run else (16, 4, 6)
    with torch.device(device):  # initialise the ~1B weights on the GPU directly
        dit = FramePackBackbone(
            None, in_channels=4, num_attention_heads=heads, attention_head_dim=128,
            num_layers=layers, num_single_layers=single, num_refiner_layers=1, text_embed_dim=32,
            pooled_projection_dim=16, image_proj_dim=24, image_tokens=4,
        )  # fmt: skip
        pack = SemanticPack(latent_channels=4, text_dim=32, width=dit.width, memory_tokens=64,
                            window_frames=9, patch=(3, 4, 4), heads=heads, mlp_ratio=2.0)  # fmt: skip
    codec = HunyuanVideoVAE(str(tiny / "hunyuan"), dtype="bfloat16")
    text = HunyuanTextEncoder(str(tiny / "hunyuan"), str(tiny / "siglip"), max_tokens=64,
                              crop_start=None, dtype="bfloat16")  # fmt: skip
    return VideoModule(dit, codec, text, pack, prompt_dropout=0.0, lr=1e-5, warmup_steps=1)


def run_case(name: str, module: Any, batches: list[dict], args: argparse.Namespace,
             ckpt: bool, model_flops: float | None, peak: float | None) -> dict[str, Any]:  # fmt: skip
    from lightning.pytorch.strategies import ModelParallelStrategy

    module.dit.grad_checkpointing = ckpt
    probe = StepProbe(warmup=2)
    strategy = ModelParallelStrategy(
        data_parallel_size=1, tensor_parallel_size=1,
        process_group_backend="gloo" if args.dry_run else "nccl",
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu" if args.dry_run else "cuda", devices=1, strategy=strategy,
        precision="bf16-mixed", max_steps=len(batches), logger=False, callbacks=[probe],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    loader = DataLoader(batches, batch_size=None, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    device = module.device
    step = statistics.median(probe.times[2:])
    lat = batches[0]["latents"]
    b, frames, h, w = lat.shape[0], lat.shape[2], lat.shape[-2], lat.shape[-1]
    tokens = b * module.dit.tokens_per_segment(frames, h, w, 0)
    flops = model_flops if model_flops is not None else probe.flops
    row = {
        "case": name, "activation_checkpointing": ckpt,
        "params_m": sum(p.numel() for p in module.dit.parameters()) / 1e6,
        "tokens_per_step": tokens, "step_ms": 1e3 * step, "tokens_per_s": tokens / step,
        "tflop_per_step": flops / 1e12,
        "attention_flop_fraction": probe.attention_flops / probe.flops if probe.flops else 0.0,
        "mfu": flops / step / (peak * 1e12) if peak else float("nan"),
        "hfu": probe.flops / step / (peak * 1e12) if peak else float("nan"),
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
    }  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    parser.add_argument("--dry_run", action="store_true", help="CPU, toy sizes: checks the script")
    parser.add_argument("--skip_tiny", action="store_true")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --dry_run to exercise it on CPU)")
    device = torch.device("cpu" if args.dry_run else "cuda")
    count_cpu_attention()
    peak = card_peak(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; bf16 dense peak: {peak} TFLOP/s; torch {torch.__version__}")
    from lightning_modules.pretrained.tiny import write_tiny_pretrained

    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    tiny = write_tiny_pretrained(work / "tiny")
    result: dict[str, Any] = {"device": name, "peak_tflops": peak}
    if not args.skip_tiny:
        result["tiny"] = tiny_cli_check(tiny, work, "cpu" if args.dry_run else "cuda")
        print(f"tiny FramePack-F1 configs on {result['tiny']['device']}: "
              f"{'OK' if result['tiny']['ok'] else 'FAILED'} {result['tiny']}")  # fmt: skip
    n = 2 + args.steps
    hw = (8, 8) if args.dry_run else (60, 104)  # 480 x 832 pixels
    cases = [("default_dit", build_default_dit, (8, 4, 16, 16)),
             ("framepack_1b", lambda: build_framepack(tiny, device, args.dry_run), (1, 9, *hw))]  # fmt: skip
    rows = []
    for case, build, (b, frames, h, w) in cases:
        model_flops = None
        for ckpt in (False, True):
            torch.manual_seed(0)
            module = build()
            batches = latent_batches(module, b, frames, h, w, n)
            row = run_case(case, module, batches, args, ckpt, model_flops, peak)
            model_flops = row["tflop_per_step"] * 1e12  # FLOPs without recompute = model FLOPs
            rows.append(row)
            print(json.dumps(row))
            del module
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result["throughput"] = rows
    head = ("case", "AC", "params M", "tokens/step", "step ms", "tokens/s", "TFLOP/step", "attn %",
            "MFU", "HFU", "peak GB")  # fmt: skip
    print("\n| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
    for r in rows:
        print(f"| {r['case']} | {'on' if r['activation_checkpointing'] else 'off'} | "
              f"{r['params_m']:.0f} | {r['tokens_per_step']} | {r['step_ms']:.1f} | "
              f"{r['tokens_per_s']:.0f} | {r['tflop_per_step']:.3f} | "
              f"{100 * r['attention_flop_fraction']:.1f} | {r['mfu']:.3f} | {r['hfu']:.3f} | "
              f"{r['peak_mem_gb']:.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
