"""The throughput benchmark's FLOP counter and peaks (benchmarks/flop_count.py), against hand counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from benchmarks.flop_count import count_flops, cuda_peak, peak_flops

B, N, M, WIDTH, HEADS = 2, 12, 5, 16, 2
D = WIDTH // HEADS


class TinyAttention(nn.Module):
    """Self-attention over n tokens plus cross-attention to m memory tokens (n_q != n_k)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.kv_memory = nn.Linear(WIDTH, 2 * WIDTH, bias=False)
        self.out = nn.Linear(WIDTH, WIDTH, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        split = "b n (k h d) -> k b h n d"
        q, k, v = rearrange(self.qkv(x), split, k=3, h=HEADS)
        km, vm = rearrange(self.kv_memory(memory), split, k=2, h=HEADS)
        o = F.scaled_dot_product_attention(q, k, v) + F.scaled_dot_product_attention(q, km, vm)
        return self.out(rearrange(o, "b h n d -> b n (h d)"))


def hand_count() -> tuple[int, int]:
    """(total, attention) FLOPs of one forward + backward of TinyAttention.

    Every operand needs a gradient (inputs too), so each matmul costs 3x its forward:
    a linear 2 m k n forward; an attention 4 b h n_q n_k d forward (Q K^T and P V).
    """
    linear = 2 * B * N * WIDTH * 3 * WIDTH + 2 * B * M * WIDTH * 2 * WIDTH + 2 * B * N * WIDTH**2
    attention = 4 * B * HEADS * N * N * D + 4 * B * HEADS * N * M * D
    return 3 * (linear + attention), 3 * attention


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_counter_matches_hand_count_including_attention(precision: str) -> None:
    torch.manual_seed(0)
    model = TinyAttention()
    x = torch.randn(B, N, WIDTH, requires_grad=True)
    memory = torch.randn(B, M, WIDTH, requires_grad=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x, memory)
        out.float().square().sum().backward()

    total, attention = count_flops(step)
    assert (total, attention) == hand_count()


def test_stage1_step_counts_attention() -> None:
    """The DiT's attention (and SemanticPack's) is a visible share of a real stage-1 step."""
    from lightning_modules.codec import SpaceToDepthCodec
    from lightning_modules.dit import VideoDiT
    from lightning_modules.semantic_pack import SemanticPack
    from lightning_modules.text_encoder import HashTextEncoder
    from lightning_modules.video_module import VideoModule

    torch.manual_seed(0)
    dit = VideoDiT(latent_channels=12, text_dim=16, width=32, depth=1, heads=2)
    pack = SemanticPack(
        latent_channels=12, text_dim=16, width=32, heads=2, memory_tokens=4, memory_bptt=1
    )
    module = VideoModule(dit, SpaceToDepthCodec(2), HashTextEncoder(16), semantic_pack=pack)
    video = torch.rand(1, 3, 4, 3, 16, 16) * 2 - 1
    batch = {"video": video, "image": video[:, 0, 0], "num_segments": torch.tensor([3]),
             "caption": ["a red circle"]}  # fmt: skip

    def step() -> None:
        torch.manual_seed(1)  # segment 2: psi from two updates, the first without gradient
        module.teacher_forcing_loss(batch).backward()

    total, attention = count_flops(step)
    assert 0.01 < attention / total < 0.9


@pytest.mark.parametrize(
    ("name", "precision", "matmul", "card", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", "highest", "H100 SXM", 989.4),
        ("NVIDIA H100 80GB HBM3", "fp32", "highest", "H100 SXM", 66.9),
        ("NVIDIA H100 80GB HBM3", "fp32", "high", "H100 SXM", 494.7),
        ("NVIDIA H100 PCIe", "bf16", "highest", "H100 PCIe", 756.5),
        ("NVIDIA H100 PCIe", "fp32", "high", "H100 PCIe", 378.0),
        ("NVIDIA H100 NVL", "bf16", "highest", "H100 NVL", 835.5),
        ("NVIDIA H200", "bf16", "highest", "H200 SXM", 989.4),
        ("NVIDIA H200 NVL", "bf16", "highest", "H200 NVL", 835.5),
        ("NVIDIA A100-SXM4-80GB", "bf16", "highest", "A100", 312.0),
        ("NVIDIA A100-PCIE-40GB", "fp32", "high", "A100", 156.0),
    ],
)
def test_cuda_peak_follows_card_and_precision(
    name: str, precision: str, matmul: str, card: str, tflops: float
) -> None:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(matmul)
    try:
        found = cuda_peak(name, precision)
    finally:
        torch.set_float32_matmul_precision(before)
    assert found is not None and found[0] == card and found[2] == pytest.approx(tflops * 1e12)


def test_unknown_card_gives_nan_unless_overridden(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce GT 710")
    cuda = torch.device("cuda")
    peak, what = peak_flops(cuda, "bf16")
    assert math.isnan(peak) and "GT 710" in what
    assert "--peak_tflops" in capsys.readouterr().out
    assert peak_flops(cuda, "bf16", override_tflops=100.0)[0] == 100e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert peak_flops(cuda, "bf16")[0] == pytest.approx(989.4e12)
