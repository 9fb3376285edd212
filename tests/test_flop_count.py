"""The throughput benchmark's FLOP counter and peaks (benchmarks/flop_count.py), against hand counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from benchmarks.flop_count import count_flops, cuda_peak, peak_flops
from tests.helpers.tiny import F1_PACK, tiny_dit, tiny_module, tiny_pack

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


def stage1_attention_by_hand() -> int:
    """Attention FLOPs of the tiny stage-1 step below: 4 h n_q n_k d per call forward (b = 1),
    3x that when the call is differentiated (its backward is 2x)."""
    heads, d, m = 2, 16, 4  # width 32 / 2 heads; psi's 4 tokens

    def call(n_q: int, n_k: int, backward: bool = True) -> int:
        return 4 * heads * n_q * n_k * d * (3 if backward else 1)

    # DiT tokens: 16 text, 16 image (8 x 8 latent, 2 x 2 patches), FramePack-F1 context 16 (1x)
    # + 4 (2x) + 4 (4x), 64 noisy (4 latent frames). The last (here the only) block updates only
    # what the head reads: the 64 noisy tokens query all n keys and psi's m; psi's own stream
    # and the other tokens' queries are skipped.
    n = 16 + 16 + 24 + 64
    dit = call(64, n) + call(64, m)
    # SemanticPack: psi_0 pools the 16 text + 16 image tokens; Memorize attends within windows of
    # 2 latent frames (2 x 16 tokens, 2 windows per segment) and pools them to m tokens, without
    # gradient on segment 0 (outside memory_bptt = 1), with it on segment 1; Squeeze likewise.
    window = 2 * 16

    def memorize(backward: bool) -> int:
        return 2 * call(window, window, backward) + call(m, 2 * window, backward)

    squeeze = call(m, m, backward=False) + call(m, m)
    return dit + call(m, 32) + memorize(False) + memorize(True) + squeeze


def test_stage1_step_counts_attention() -> None:
    """Every attention call of a real stage-1 step (the DiT's and SemanticPack's) is counted,
    forward and backward, exactly as by hand."""
    torch.manual_seed(0)
    pack = tiny_pack(memory_bptt=1)
    module = tiny_module(pack, dit=tiny_dit(depth=1, frame_pack=F1_PACK), seed=None)
    video = torch.rand(1, 3, 4, 3, 16, 16) * 2 - 1
    batch = {"video": video, "image": video[:, 0, 0], "num_segments": torch.tensor([3]),
             "caption": ["a red circle"]}  # fmt: skip

    def step() -> None:
        torch.manual_seed(1)  # segment 2: psi from two updates, the first without gradient
        module.teacher_forcing_loss(batch).backward()

    total, attention = count_flops(step)
    assert attention == stage1_attention_by_hand()
    assert total > attention


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
