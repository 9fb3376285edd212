"""The benchmarks measure the shipped models: configs/stage1.yaml's architecture (SemanticPack
included) with only sizes overridden, and stage 2 built on it from the stage-1 weights."""

from __future__ import annotations

import argparse

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
