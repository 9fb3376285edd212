"""Backend loaders: bundled EfficientNet-Lite0, and real-network loaders fed checkpoints saved from
randomly initialised networks of the right architecture (the real weights are not available here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from eval.backends.clip import ClipAesthetic, ClipFeatures, load_clip_jit
from eval.backends.dino import DinoFeatures, DinoViT
from eval.backends.effnet_lite import EffNetLiteFeatures
from eval.backends.registry import build_backends


def _frames(num: int = 3, h: int = 48, w: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (num, 3, h, w), generator=gen, dtype=torch.uint8)


def test_effnet_lite0_bundled_weights_load_strictly() -> None:
    backend = EffNetLiteFeatures(size=96)
    feats = backend.features(_frames())
    assert feats.shape == (3, 1280) and torch.isfinite(feats).all()
    # Real ImageNet weights, not an init: BN running stats differ from their defaults.
    assert not torch.allclose(backend.module._bn0.running_var, torch.ones(32))


def test_dino_vitb16_loads_random_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "dino_vitbase16_pretrain.pth"
    torch.manual_seed(0)
    reference = DinoViT().eval()  # ViT-B/16: 12 blocks, 768-d, DINO key names
    torch.save(reference.state_dict(), path)
    assert "blocks.11.attn.qkv.weight" in reference.state_dict()
    backend = DinoFeatures(path, size=112)  # 112 instead of 224 keeps the test fast
    feats = backend.features(_frames(2))  # 48x64 -> 112x149: exercises pos-embed interpolation
    assert feats.shape == (2, 768)
    assert torch.isfinite(feats).all() and feats.std() > 0
    # Same weights through the module itself: the loader reproduces the saved network exactly.
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(backend.module(x), reference(x), atol=1e-5)
    backends = build_backends({"subject": f"dino_vitb16:{path}", "background": "pixel"})
    assert backends.names()["subject"] == "dino_vitb16"


def test_dino_missing_checkpoint_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        DinoFeatures(tmp_path / "missing.pth")


class _TinyClip(nn.Module):
    """Stand-in for an OpenAI CLIP archive: traced in fp16 with an fp16 cast in `encode_image`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 32, 32)
        self.proj = nn.Linear(8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.type(self.conv.weight.dtype))
        return self.proj(h.mean((-2, -1)))


def _save_tiny_clip(path: Path, dim: int) -> None:
    net = _TinyClip(dim).half().eval()
    x = torch.rand(1, 3, 224, 224).half()
    traced = torch.jit.trace_module(net, {"forward": x, "encode_image": x})
    torch.jit.save(traced, str(path))


def test_clip_archive_loader_patches_fp16_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "ViT-B-32.pt"
    _save_tiny_clip(path, 512)
    model = load_clip_jit(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    feats = ClipFeatures(path).features(_frames())
    assert feats.shape == (3, 512) and feats.dtype == torch.float32


def test_clip_laion_aesthetic_loads_head(tmp_path: Path) -> None:
    clip_path, head_path = tmp_path / "ViT-L-14.pt", tmp_path / "sa_0_4_vit_l_14_linear.pth"
    _save_tiny_clip(clip_path, 768)
    torch.save(nn.Linear(768, 1).state_dict(), head_path)
    backend = build_backends({"aesthetic": f"clip_vitl14_laion:{clip_path},{head_path}"}).aesthetic
    assert isinstance(backend, ClipAesthetic)
    scores = backend.scores(_frames())
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="2 local path"):
        build_backends({"aesthetic": f"clip_vitl14_laion:{clip_path}"})


def test_network_backends_need_their_local_paths() -> None:
    for role, name in (("flow", "raft"), ("imaging", "musiq_spaq")):
        with pytest.raises(ValueError, match="1 local path"):
            build_backends({role: name})
    with pytest.raises(ValueError, match="not supported"):
        build_backends({"interpolation": "amt_s"})
