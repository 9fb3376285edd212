"""The rollout-scaling benchmark's tensor-memory meter (benchmarks/rollout_scaling.py) against
allocations of known size, and a short rollout of each mode through it."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks.rollout_scaling import run_mode, summarize, tensor_allocations

MIB = 2**20


def test_cpu_meter_sees_known_allocations_per_segment() -> None:
    kept: list[torch.Tensor] = []

    def run(mark) -> None:  # noqa: ANN001
        kept.append(torch.empty(MIB, dtype=torch.uint8))  # segment 0: +1 MiB, kept
        mark()
        transient = torch.zeros(2 * MIB, dtype=torch.uint8)  # segment 1: 2 MiB, freed
        kept.append(torch.ones(MIB // 4, dtype=torch.float32))  # + 1 MiB kept
        del transient
        mark()
        mark()  # segment 2: nothing happens

    (peak0, end0), (peak1, end1), (peak2, end2) = tensor_allocations(run, torch.device("cpu"))
    assert (peak0, end0) == (MIB, MIB)
    assert (peak1, end1) == (4 * MIB, 2 * MIB)
    assert (peak2, end2) == (2 * MIB, 2 * MIB)


@pytest.mark.parametrize("mode", ["memorypack", "full_history"])
def test_rollout_memory_constant_for_memorypack_and_growing_for_full_history(mode: str) -> None:
    args = argparse.Namespace(segments=12, steps=1, frames=4, resolution=16, width=32, depth=1,
                              threads=1, device="cpu")  # fmt: skip
    raw = run_mode(mode, args)
    output_mb = 4 * 3 * 16 * 16 / MIB
    s = summarize({mode: raw}, output_mb)[mode]
    assert s["output_growth_mb"] == pytest.approx(5 * output_mb)  # segment 9 vs 4
    # Full history keeps every latent frame (4 x 48 x 4 x 4 fp32 = 12 KiB per segment) and its
    # attention grows with them; MemoryPack only adds the decoded frames it returns.
    model_growth = s["memory_growth_mb"] - s["output_growth_mb"]
    if mode == "memorypack":
        assert abs(model_growth) < 1e-3 and s["state_ratio"] == 1.0
    else:
        assert model_growth > 5 * 12 / 1024 and s["state_ratio"] > 1.5
    ends = raw["alloc_end_mb"]  # live bytes after each segment: what the rollout holds
    per_segment = ends[-1] - ends[-2]
    if mode == "memorypack":
        assert per_segment == pytest.approx(output_mb)
    else:  # at least the new latent frames (the previous history may still be referenced)
        assert per_segment >= output_mb + 4 * 48 * 4 * 4 * 4 / MIB
