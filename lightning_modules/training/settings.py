"""Stage 1's settings checked by name and value before anything is built: one error lists every
bad `name=value` with its rule, and SemanticPack's widths must match the DiT it joins."""

from __future__ import annotations

from typing import Any

from lightning_modules.networks.backbone import Backbone
from lightning_modules.networks.semantic_pack import SemanticPack

__all__ = ["check_semantic_pack", "check_settings"]


def check_settings(**settings: Any) -> None:
    """Stage 1's scalar settings: one ValueError listing each bad `name=value` and the rule."""
    rules = {
        "timestep_sampling": (lambda v: v in ("uniform", "logit_normal", "shifted"),
                              "uniform, logit_normal or shifted"),
        "logit_std": (lambda v: v > 0, "> 0"),
        "shift": (lambda v: v > 0, "> 0"),
        "prompt_dropout": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "lr": (lambda v: v > 0, "> 0"),
        "weight_decay": (lambda v: v >= 0, ">= 0"),
        "betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two values in [0, 1)"),
        "warmup_steps": (lambda v: v >= 0, ">= 0"),
        "lr_schedule": (lambda v: v in ("constant", "cosine"), "constant or cosine"),
        "sample_steps": (lambda v: v >= 1, ">= 1"),
        "sample_shift": (lambda v: v > 0, "> 0"),
        "cfg_scale": (lambda v: v >= 0, ">= 0"),
        "rollout_segments": (lambda v: v >= 1, ">= 1"),
        "memory_focus": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
        "memory_lr_scale": (lambda v: v > 0, "> 0"),
        "memory_recall": (lambda v: v >= 0, ">= 0"),
        "memory_guidance": (lambda v: v >= 0, ">= 0"),
        "change_weight": (lambda v: v >= 0, ">= 0"),
        "history_noise": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    }  # fmt: skip
    bad = [f"{name}={settings[name]!r} (must be {rule})"
           for name, (ok, rule) in rules.items() if name in settings and not ok(settings[name])]  # fmt: skip
    if bad:
        raise ValueError("invalid model settings: " + "; ".join(bad))


def check_semantic_pack(pack: SemanticPack, dit: Backbone, text_dim: int) -> None:
    """psi joins the DiT's token sequence, so widths and input channels must agree."""
    for name, got, want in (
        ("width", pack.width, dit.width),
        ("latent_channels", pack.latent_channels, dit.latent_channels),
        ("text_dim", pack.text_dim, text_dim),
    ):
        if got != want:
            raise ValueError(f"semantic_pack.{name}={got} must equal the model's {want}")
