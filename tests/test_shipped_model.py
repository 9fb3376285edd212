"""The benchmarks measure the shipped models: configs/stage1.yaml's architecture (SemanticPack
included) with only sizes overridden, and stage 2 built on it from the stage-1 weights."""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks import forcing_overhead, train_throughput
from benchmarks.shipped_model import build_stage1, build_stage2
from lightning_modules.direct_forcing import DirectForcingModule

TINY = {"width": 32, "depth": 1, "heads": 2}


def test_stage1_is_the_config_model_with_sizes_overridden() -> None:
    model = build_stage1(**TINY, grad_checkpointing=True)
    assert model.semantic_pack is not None and model.semantic_pack.width == 32
    assert (model.dit.width, len(model.dit.blocks), model.dit.grad_checkpointing) == (32, 1, True)
    assert model.semantic_pack.memory_tokens == 8 and model.hparams.prompt_dropout == 0.1
    # The demo codec (patch-PCA, 16 components), not a benchmark's own.
    assert type(model.codec).__name__ == "PatchPCACodec" and model.codec.latent_channels == 16
    assert model.encode_image(torch.zeros(1, 3, 32, 32)).shape[-3] == 16  # fitted: benchmarks run


def test_stage2_starts_from_the_stage1_weights_and_trains_the_head() -> None:
    stage1 = build_stage1(**TINY)
    with torch.no_grad():
        for p in stage1.parameters():
            p.add_(torch.randn_like(p))
    stage2 = build_stage2(stage1, student_steps=3)
    assert isinstance(stage2, DirectForcingModule) and stage2.semantic_pack is not None
    own = stage2.state_dict()
    for name, value in stage1.state_dict().items():
        assert torch.equal(own[name], value), name
    trainable = {n for n, p in stage2.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("dit.head.") for n in trainable)


def test_benchmarks_build_the_shipped_models() -> None:
    args = train_throughput.parse(["--width", "32", "--depth", "1", "--heads", "2"])
    assert train_throughput.build_stage1(args).semantic_pack is not None
    args = argparse.Namespace(config=train_throughput.shipped_model.STAGE1_CONFIG, student_steps=2)
    module = forcing_overhead.stage2(args, width=32, depth=1, heads=2)
    assert module.semantic_pack is not None and module.hparams.student_steps == 2


def test_throughput_benchmark_alternates_project_and_minimal_dit(tmp_path) -> None:
    """One tiny round of the alternating benchmark: both models, rates, ratios, the load."""
    out = tmp_path / "throughput.json"
    argv = ["--width", "32", "--depth", "1", "--heads", "2", "--batch_size", "1", "--segments",
            "2", "--warmup", "0", "--rounds", "2", "--json", str(out)]  # fmt: skip
    report = train_throughput.main(argv)
    assert json.loads(out.read_text())["custom.ratio"] == report["custom.ratio"]
    r = report["sizes"]["custom"]
    assert r["project"]["tokens_per_sample"] == r["minimal"]["tokens_per_sample"] == 136
    for key in ("ratio", "paired_ratio", "peak_gflop_per_s"):
        assert r[key] > 0 and r["cpu_time"][key] > 0
    assert 0 < r["project"]["mfu"] and 0 < r["minimal"]["mfu"] and len(r["loadavg_before"]) == 3
    # SemanticPack and psi's stream add FLOPs, the last block's skipped rows remove some (about
    # even at this size; tests/test_flop_count.py counts them exactly).
    assert 0.8 < r["flop_ratio"] < 1.2
