"""Will it fit? GPU memory and FLOPs of a stage-1 step per rank, estimated before renting GPUs.

    python -m benchmarks.plan [--json plan.json] [--trace_encoders]

For the real FramePack-F1 (`configs/framepack_f1/stage1.yaml`: 13B, 480 x 832, 9-latent
segments) and the small default (`configs/stage1.yaml`) it prints parameters, trainable
parameters, the bytes per rank of weights, gradients and optimizer state under the strategy, the
frozen parts (VAE, encoders), the activation memory of one segment with and without per-block
activation checkpointing, the peak per rank and the FLOPs of a step; for full fine-tuning and
for LoRA adapters, on 1 and 8 GPUs of 80 GB, with and without the latent and conditioning caches.
`python -m benchmarks.plan_check` checks the estimator against peaks measured on CPU at tiny sizes
(the README table).

These are ESTIMATES until a GPU run confirms them. What they assume:
- one video per GPU and step, one segment of `segment_frames / 4` latent frames at the config's
  resolution, FramePack's full history window, the text at its full token count (no padding
  dropped), SemanticPack's `memory_bptt` updates with gradient (`memory_trace.segment_step`);
- bf16 autocast (Lightning's `bf16-mixed`) over the config's parameter dtype: fp32 weights for
  full fine-tuning; for adapters a bf16 base (`dtype: bfloat16`) with fp32 adapters;
- AdamW, two fp32 states per trainable parameter, fp32 gradients; its step is fused, as
  `VideoModule.configure_optimizers` makes it (no temporary beyond the gradients; the foreach
  step would add one fp32 copy of them);
- full fine-tuning on 8 GPUs: FSDP2 (`configs/strategy/fsdp2.yaml`), every trainable tensor
  sharded 8 ways, two blocks' parameters gathered at a time, the root units' (embedders,
  SemanticPack) kept gathered; adapters on 8 GPUs: DDP (each rank the whole bf16 base, gradient
  buckets as large as the gradients); 1 GPU: no sharding;
- activations: counted on fake tensors (`memory_trace.py`) for one dual- and one single-stream
  block (one DiT block for the small model) with everything around them, then extrapolated to
  the full depth block by block (an upper bound: each block's saved bytes, or each block's
  gradients if the step peaks at the end of backward); flash attention (no n x n scores);
- frozen parts in bf16 and replicated on every rank: the VAE always (rollouts decode with it),
  LLaMA-3-8B + CLIP-L + SigLIP unless the conditioning cache is on; without the latent cache the
  VAE also encodes each step's clip (its transient peak and FLOPs: `ENCODE`, traced once);
- a GPU of 80 GB "fits" a peak up to 72 GB: the CUDA context, NCCL buffers and allocator
  fragmentation take the rest.
FLOPs: matmuls, convolutions and attention (`flop_count.py`), forward + backward, plus the
recomputed forward under activation checkpointing, plus the encoders' forward without caches.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from benchmarks.memory_trace import SegmentShapes, Trace, trace_step

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
GPU_BYTES, USABLE = 80e9, 72e9
# Frozen parts of the real setting, parameters (built on the meta device from the released
# configs: LlamaModel of LLaMA-3-8B, CLIPTextModel ViT-L/14, SigLIP so400m-patch14-384,
# AutoencoderKLHunyuanVideo; `test_plan.py` rebuilds them) and tokens they read per video.
ENCODERS = {"llama": (7_504_924_672, 95 + 256), "clip": (123_060_480, 77),
            "siglip": (428_225_600, 729)}  # fmt: skip
VAE_PARAMS = 246_478_803
# The VAE's encode of one 37-frame 480 x 832 clip (tiling + slicing, bf16): transient peak bytes
# and FLOPs, from `--trace_encoders` (17 s on fake tensors).
ENCODE = {"peak_bytes": 1_559_734_272, "flops": 297_704_579_989_504}


@dataclass
class Setting:
    """An architecture to plan for: its config (+ overrides), one step's sizes, frozen parts."""

    name: str
    config: Path
    shapes: SegmentShapes
    pretrained: bool  # the real setting: frozen VAE and encoders, caches apply
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # init_args per part

    def init_args(self, part: str) -> dict[str, Any]:
        model = yaml.safe_load(self.config.read_text())["model"]["init_args"]
        return {**model[part]["init_args"], **self.overrides.get(part, {})}


def real_f1() -> Setting:
    # 480 x 832 / 8 = 60 x 104 latents, 9 latent frames, history 1 + 2 + 16, packed text
    # [pooled | 729 SigLIP | 256 LLaMA] of width 4096.
    shapes = SegmentShapes(1, 9, 16, 60, 104, 19, 1 + 729 + 256, 4096, bptt=2)
    config = ROOT / "configs/framepack_f1/stage1.yaml"
    return Setting("FramePack-F1 13B, 480x832", config, shapes, pretrained=True)


def small_default() -> Setting:
    # 32 x 32 / 4 = 8 x 8 latents of 16 channels, 4 frames, history 2 + 2 + 16, 16 text tokens.
    shapes = SegmentShapes(8, 4, 16, 8, 8, 20, 16, 128, bptt=2)
    return Setting("small default", ROOT / "configs/stage1.yaml", shapes, pretrained=False)


def build_parts(
    setting: Setting,
    adapters: bool,
    depth: tuple[int, ...] | None,
    ac: bool,
    device: str = "meta",
) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """The config's backbone (at `depth` blocks per kind, or its own), SemanticPack and the
    trained text encoder (small model), on the meta device unless `device`, with the adapters
    (rank 64) and the trainable set as training sets them."""
    from lightning_modules.networks.semantic_pack import SemanticPack
    from lightning_modules.training.adapters import LoraAdapters

    dit_config = dict(setting.init_args("dit"), grad_checkpointing=ac)
    text = None  # the real setting's encoders are frozen: `ENCODERS`
    with torch.device(device):
        if setting.pretrained:
            from lightning_modules.pretrained.framepack_backbone import FramePackBackbone

            dit_config.pop("subfolder", None)
            dit_config.update(pretrained_dir=None, dtype="bfloat16" if adapters else "float32")
            if depth is not None:
                dit_config.update(num_layers=depth[0], num_single_layers=depth[1])
            dit = FramePackBackbone(**dit_config)
        else:
            from lightning_modules.networks.dit import VideoDiT
            from lightning_modules.networks.text_encoder import HashTextEncoder

            if depth is not None:
                dit_config["depth"] = depth[0]
            dit = VideoDiT(**dit_config)
            text = HashTextEncoder(**setting.init_args("text_encoder"))
        pack = SemanticPack(**setting.init_args("semantic_pack"))
    dit.enable_memory()
    holder = nn.Module()
    holder.dit, holder.semantic_pack = dit, pack
    if text is not None:
        holder.text_encoder = text
    if adapters:
        LoraAdapters(rank=64).apply(holder)
    return dit, pack, text


def numel(module: nn.Module | None, trainable: bool | None = None) -> int:
    params = [] if module is None else module.parameters()
    return sum(p.numel() for p in params if trainable is None or p.requires_grad == trainable)


def nbytes(module: nn.Module | None, trainable: bool | None = None) -> int:
    params = [] if module is None else module.parameters()
    return sum(p.numel() * p.element_size() for p in params
               if trainable is None or p.requires_grad == trainable)  # fmt: skip


@dataclass
class Model:
    """Parameter counts and bytes of the full-depth model, from its miniature."""

    params: int
    trainable: int
    trainable_bytes: int  # gradients and each AdamW state take as much
    weight_bytes: int
    largest_block_bytes: int
    root_bytes: int  # what FSDP2 keeps gathered: the DiT outside its blocks, SemanticPack
    block_grad_bytes: dict[str, int]  # one block of each kind
    counts: dict[str, int]  # blocks of each kind at full depth


def model_sizes(setting: Setting, adapters: bool) -> Model:
    """Sizes at full depth from the miniature (one block per kind) and the config's depth."""
    dit, pack, text = build_parts(setting, adapters, (1, 1), ac=False)
    depth = setting.init_args("dit")
    counts = ({"HunyuanVideoTransformerBlock": depth["num_layers"],
               "HunyuanVideoSingleTransformerBlock": depth["num_single_layers"]}
              if setting.pretrained else {"DiTBlock": depth["depth"]})  # fmt: skip
    kinds = {type(b).__name__: b for b in dit.blocks}
    extra = {k: counts[k] - 1 for k in kinds}

    def total(size: Any, *args: Any) -> int:
        whole = sum(size(m, *args) for m in (dit, pack, text))
        return whole + sum(extra[k] * size(b, *args) for k, b in kinds.items())

    blocks = sum(nbytes(b) for b in kinds.values())
    return Model(
        total(numel), total(numel, True), total(nbytes, True), total(nbytes),
        max(nbytes(b) for b in kinds.values()), nbytes(dit) - blocks + nbytes(pack),
        {k: nbytes(b, True) for k, b in kinds.items()}, counts,
    )  # fmt: skip


def activation_peak(
    setting: Setting,
    adapters: bool,
    ac: bool,
    world: int,
    model: Model,
    autocast: torch.dtype | None = torch.bfloat16,
) -> tuple[int, int, int]:
    """(activation bytes, peak bytes, FLOPs) of one segment's forward + backward beyond the
    weights at full depth (activations: when forward ends; peak: backward too), from the
    miniature's trace plus, per extra block, its saved bytes in forward, the larger of its
    activations and its gradient shard in backward (an upper bound), and its FLOPs (forward x 3;
    frozen base weights need no weight gradient: x 2; + 1 forward recomputed under
    checkpointing)."""
    # The small DiT's last block updates only the noisy tokens (`VideoDiT.forward`), so its
    # miniature keeps two blocks and the extra ones repeat the first, a full block.
    mini = (1, 1) if setting.pretrained else (2, 1)
    trace: Trace = trace_step(lambda: build_parts(setting, adapters, mini, ac)[:2],
                              setting.shapes, world=world, autocast=autocast)  # fmt: skip
    by_kind: dict[str, Any] = {}
    for b in trace.blocks:
        by_kind.setdefault(b.kind, b)
    traced = Counter(b.kind for b in trace.blocks)
    extra = {k: model.counts[k] - traced[k] for k in by_kind}
    # At the end of forward every block's saved bytes (casts included) are alive; in backward,
    # each block not yet processed still holds its activations, each processed one its gradient.
    forward = trace.forward_peak + sum(extra[k] * by_kind[k].saved_bytes for k in by_kind)
    held = {
        k: max(b.saved_bytes - b.cast_bytes, -(-model.block_grad_bytes[k] // world))
        for k, b in by_kind.items()
    }
    backward = trace.backward_peak + sum(extra[k] * held[k] for k in by_kind)

    def block_flops(b: Any) -> int:
        if not adapters:
            return 3 * b.flops + (b.flops if ac else 0)
        base = b.flops - b.attention_flops - b.lora_flops  # weight gradients: adapters only
        return 2 * base + 3 * (b.attention_flops + b.lora_flops) + (b.flops if ac else 0)

    flops = trace.flops + sum(extra[k] * block_flops(by_kind[k]) for k in by_kind)
    return forward, max(forward, backward), flops


def dynamic_peak(setting: Setting, adapters: bool, ac: bool, autocast: torch.dtype | None) -> int:
    """The estimated peak of a step beyond the weights and optimizer states on one device (no
    sharding): the traced forward + backward, or the (fused) optimizer step's gradients,
    whichever is larger. `plan_check.py` compares it with a measured peak."""
    model = model_sizes(setting, adapters)
    _, peak, _ = activation_peak(setting, adapters, ac, 1, model, autocast)
    return max(peak, model.trainable_bytes)


@dataclass
class Row:
    """One line of the plan: GB per rank and TFLOPs per step of one configuration."""

    setting: str
    gpus: int
    strategy: str
    tuning: str
    caches: bool
    params_b: float
    trainable_m: float
    weights: float
    grads: float
    optimizer: float
    frozen: float
    act_ckpt: float
    act_no_ckpt: float
    peak: float
    fits: str
    tflop_step: float


Traces = dict[tuple[bool, bool, int], tuple[int, int, int]]


def plan(setting: Setting, traces: Traces, models: dict[bool, Model]) -> list[Row]:
    """Rows: full fine-tuning / adapters x 1 / 8 GPUs x caches off / on (checkpointing on)."""
    rows = []
    for adapters in (False, True):
        m = models[adapters]
        for gpus in (1, 8):
            fsdp = gpus > 1 and setting.pretrained and not adapters
            strategy = "single" if gpus == 1 else ("FSDP2" if fsdp else "DDP")
            world = gpus if fsdp else 1
            weights = m.weight_bytes / world
            if fsdp:  # two blocks gathered at a time; the root units stay gathered
                weights += 2 * m.largest_block_bytes + m.root_bytes * (1 - 1 / world)
            grads = m.trainable_bytes / world
            buckets = m.trainable_bytes if strategy == "DDP" else 0  # DDP's, allocated once
            optimizer = 2 * m.trainable_bytes / world
            act = {ac: traces[(adapters, ac, world)] for ac in (True, False)}
            for caches in (False, True) if setting.pretrained else (True,):
                frozen = 2 * VAE_PARAMS if setting.pretrained else 0
                encode = 0
                flops = act[False][2]
                if setting.pretrained and not caches:
                    frozen += 2 * sum(n for n, _ in ENCODERS.values())
                    encode = ENCODE["peak_bytes"]
                    flops += ENCODE["flops"] + sum(2 * n * t for n, t in ENCODERS.values())
                dynamic = max(act[True][1], grads, encode)  # fwd + bwd | fused AdamW step | VAE
                peak = weights + optimizer + frozen + buckets + dynamic
                fits = "yes" if peak <= USABLE else ("tight" if peak <= GPU_BYTES else "no")
                rows.append(Row(
                    setting.name, gpus, strategy, "adapters r64" if adapters else "full",
                    caches, m.params / 1e9, m.trainable / 1e6, weights / GB,
                    (grads + buckets) / GB, optimizer / GB, frozen / GB, act[True][0] / GB,
                    act[False][0] / GB, peak / GB, fits, flops / 1e12,
                ))  # fmt: skip
    return rows


def estimate(setting: Setting) -> list[Row]:
    """Trace the miniatures this setting's rows need and compose the rows."""
    models = {adapters: model_sizes(setting, adapters) for adapters in (False, True)}
    worlds = {False: (1, 8) if setting.pretrained else (1,), True: (1,)}
    traces = {
        (adapters, ac, world): activation_peak(setting, adapters, ac, world, models[adapters])
        for adapters in (False, True) for world in worlds[adapters] for ac in (True, False)
    }  # fmt: skip
    return plan(setting, traces, models)


def table(rows: list[Row], unit: str = "GB") -> str:
    """Markdown rows in GB (the small default in MB: its figures round to 0.0 GB)."""
    scale = {"GB": 1.0, "MB": 1e3}[unit]
    head = ("setting", "GPUs", "strategy", "tuning", "caches", "params B", "trainable M",
            "weights", "grads", "optim", "frozen", "act/seg ckpt", "act/seg no ckpt",
            f"peak/rank {unit}", "fits 80 GB", "TFLOP/step")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        sizes = [r.weights, r.grads, r.optimizer, r.frozen, r.act_ckpt, r.act_no_ckpt]
        cells = " | ".join(f"{scale * x:.1f}" for x in sizes)
        flops = f"{r.tflop_step:.0f}" if r.tflop_step >= 10 else f"{r.tflop_step:.3f}"
        lines.append(
            f"| {r.setting} | {r.gpus} | {r.strategy} | {r.tuning} | {'on' if r.caches else 'off'} "
            f"| {r.params_b:.3f} | {r.trainable_m:.1f} | {cells} | **{scale * r.peak:.1f}** | "
            f"{r.fits} | {flops} |"
        )
    return "\n".join(lines)


def trace_encoders() -> dict[str, int]:
    """`ENCODE`: the HunyuanVideo VAE encoding one 37-frame 480 x 832 clip, on fake tensors."""
    import diffusers
    from torch._subclasses.fake_tensor import FakeTensorMode

    from benchmarks.flop_count import flop_counter
    from benchmarks.memory_trace import LiveBytes, to_fake

    with torch.device("meta"):
        vae = diffusers.AutoencoderKLHunyuanVideo().to(torch.bfloat16)
    vae.enable_tiling()
    vae.enable_slicing()
    mode = FakeTensorMode()
    to_fake(vae, mode).eval()
    with mode, torch.no_grad():
        clip = torch.randn(1, 3, 1 + 36, 480, 832, dtype=torch.bfloat16)
        live, counter = LiveBytes(), flop_counter()
        with counter, live:
            vae.encode(clip).latent_dist.mode()
    return {"peak_bytes": live.peak, "flops": counter.get_total_flops()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--trace_encoders", action="store_true", help="re-trace ENCODE (slow)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.trace_encoders:
        ENCODE.update(trace_encoders())
        print(f"ENCODE = {ENCODE}")
    real, small = estimate(real_f1()), estimate(small_default())
    rows = real + small
    print("ESTIMATES (until a GPU run confirms them), per rank, GB = 1e9 bytes:\n" + table(real))
    print("\n" + table(small, unit="MB"))
    result: dict[str, Any] = {"rows": [asdict(r) for r in rows]}
    print(f"\nplan: {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
