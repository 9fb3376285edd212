"""The study's variants (paper Tab. 2) and budgets (how much of everything each study spends).

Every variant is the shipped configs: `configs/stage1.yaml` with an ablation fragment, or
`configs/stage2_direct_forcing.yaml` from the MemoryPack checkpoint of the same seed. A budget
only overrides how long and on how much: steps, number of videos, evaluation sizes and, for the
CI smoke budget alone, the model's sizes. Nothing is tuned per variant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["BUDGETS", "VARIANTS", "Budget", "Variant"]


@dataclass(frozen=True)
class Variant:
    """One row of Tab. 2: a stage-1 ablation (configs after stage1.yaml) or a stage-2 run."""

    name: str
    label: str
    stage: Literal[1, 2]
    fragments: tuple[str, ...] = ()  # stage 1: ablation configs composed after stage1.yaml
    history: Literal["teacher", "direct", "student"] | None = None  # stage 2


VARIANTS: tuple[Variant, ...] = (
    Variant("f1", "FramePack-F1 (relative RoPE)", 1, ("configs/ablations/f1_only.yaml",)),
    Variant("f1_rope", "F1 + RoPE consistency", 1, ("configs/ablations/f1_rope.yaml",)),
    Variant("memorypack", "MemoryPack (structure A)", 1),
    Variant("zero_memorypack", "zero-MemoryPack", 1, ("configs/ablations/zero_memorypack.yaml",)),
    Variant("structure_b", "MemoryPack, structure B", 1, ("configs/ablations/structure_b.yaml",)),
    Variant("structure_c", "MemoryPack, structure C", 1, ("configs/ablations/structure_c.yaml",)),
    Variant("stage2_teacher", "+ stage 2, teacher history", 2, history="teacher"),
    Variant("stage2_direct", "+ stage 2, Direct Forcing", 2, history="direct"),
    Variant("stage2_student", "+ stage 2, student history (k=5)", 2, history="student"),
)
STAGE2_FROM = "memorypack"  # stage 2 starts from this variant's checkpoint of the same seed


@dataclass(frozen=True)
class Budget:
    """What a study spends. None keeps the shipped config's value.

    seeds: independent replicates; seed s trains every variant with `seed_everything=s` and
        samples its evaluation with seed s (its probe set is drawn with seed s too).
    stage1_steps / stage2_steps: optimizer steps (stage 2: one per video). Stage 2's curriculum
        `grow_every` is scaled by stage2_steps / the shipped max_steps, so it admits the same
        lengths by the end of the run.
    num_train_videos, num_val_videos, max_segments: the synthetic data (shared by all runs).
    probe_train_videos: memory-probe events mixed into the training set (datamodules/synthetic/probe_scene.py).
    lengths: evaluated rollout lengths in segments (Tab. 1 metrics, drift, curves).
    eval_videos, probe_videos, quality_videos: held-out videos per seed for the rollouts, the
        memory probe and `generation_quality`.
    model_overrides: a config layer composed right after stage1.yaml (before the ablation
        fragment, so `semantic_pack: null` still wins): model sizes, only for the smoke budget.
    """

    seeds: tuple[int, ...]
    stage1_steps: int | None
    stage2_steps: int | None
    num_train_videos: int | None
    num_val_videos: int | None
    probe_train_videos: int
    lengths: dict[str, int]
    eval_videos: int
    probe_videos: int
    quality_videos: int
    max_segments: int | None = None
    batch_size: int | None = None
    sample_steps: int | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seeds"] = list(self.seeds)
        return out


_SMOKE_SIZES: dict[str, Any] = {
    "model": {
        "init_args": {
            "dit": {"init_args": {"width": 32, "depth": 1, "heads": 2}},
            "semantic_pack": {"init_args": {"width": 32, "heads": 2, "memory_tokens": 4}},
        }
    }
}

BUDGETS: dict[str, Budget] = {
    # CI: every code path (9 variants, 2 seeds, probe, curves, figures, resume) in about a minute.
    "smoke": Budget(
        seeds=(0, 1),
        stage1_steps=2,
        stage2_steps=2,
        num_train_videos=4,
        num_val_videos=2,
        probe_train_videos=1,
        max_segments=3,
        batch_size=2,
        sample_steps=1,
        lengths={"long": 3},
        eval_videos=1,
        probe_videos=2,
        quality_videos=1,
        model_overrides=_SMOKE_SIZES,
    ),
    # 2-core CPU (--jobs 2), <= 60 minutes for everything: the shipped model and data, stage 1
    # for 1000 of the demo's 4032 steps (a run trains and evaluates in about 4 minutes on one
    # core), stage 2 as shipped (150 videos).
    "demo": Budget(
        seeds=(0, 1, 2),
        stage1_steps=1000,
        stage2_steps=150,
        num_train_videos=None,
        num_val_videos=None,
        probe_train_videos=16,
        lengths={"long": 16},
        eval_videos=4,
        probe_videos=8,
        quality_videos=4,
    ),
    # One GPU: longer training on more (and longer) videos, more seeds, bigger evaluation sets.
    "full": Budget(
        seeds=(0, 1, 2, 3, 4),
        stage1_steps=20000,
        stage2_steps=2000,
        num_train_videos=2048,
        num_val_videos=64,
        probe_train_videos=512,
        max_segments=16,
        lengths={"medium": 8, "long": 16},
        eval_videos=32,
        probe_videos=64,
        quality_videos=16,
    ),
}
