"""torchmetrics aggregation of per-video scores whose states are SUMS, so DDP/FSDP reduce exactly.

Aggregation across videos is the plain per-video mean: VBench's multi-GPU path averages per-video
scores (its single-process path weights consistency by frame pairs instead; METRICS.md). Each rank
adds its videos' scores to `sums` and 1 to `counts`; `dist_reduce_fx="sum"` makes compute() on every
rank return sum_all / count_all, identical to one process scoring all videos. NaN (unavailable backend,
or a segment too short for the metric) is not counted; a metric with no finite value computes NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Metric

__all__ = ["VideoScoreMean"]


class VideoScoreMean(Metric):
    """Mean over videos of each named score (names fixed at construction, e.g. `score_keys`)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, names: Sequence[str], **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"VideoScoreMean: names must be non-empty and unique, got {names!r}")
        self.names = tuple(names)
        self._index = {n: i for i, n in enumerate(self.names)}
        # float64 so sums of many videos stay exact enough to compare ranks bit-for-bit.
        self.add_state("sums", torch.zeros(len(names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(len(names), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: Mapping[str, float]) -> None:
        """Add one video's scores (a `score_video` dict); unknown names are an error."""
        unknown = set(scores) - set(self._index)
        if unknown:
            raise KeyError(
                f"VideoScoreMean: scores not declared at construction: {sorted(unknown)}"
            )
        for name, value in scores.items():
            value = float(value)
            if math.isfinite(value):
                i = self._index[name]
                self.sums[i] += value
                self.counts[i] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        """name -> mean over all videos on all ranks (NaN where nothing was counted)."""
        means = torch.where(self.counts > 0, self.sums / self.counts.clamp_min(1), torch.nan)
        return {name: means[i] for i, name in enumerate(self.names)}
