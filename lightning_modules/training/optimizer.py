"""Stage 1's optimizer: AdamW over the trainable parameters, the memory read-in gates in their own
group when `memory_lr_scale` != 1, and a linear warm-up then constant or cosine learning rate."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

__all__ = ["configure_adamw"]


def configure_adamw(module: L.LightningModule, gates: list[torch.nn.Parameter]) -> dict[str, Any]:
    """AdamW; linear warm-up over `warmup_steps` (torch's LinearLR: lr x (step + 1) /
    warmup_steps), then constant, or cosine decay to 0 at the run's last step (torch's
    CosineAnnealingLR over the steps after the warm-up), stepped every optimizer step."""
    hp = module.hparams
    scale = hp.get("memory_lr_scale", 1.0)
    fast = {id(p) for p in gates if p.requires_grad} if scale != 1 else set()
    rest = [p for p in module.parameters() if p.requires_grad and id(p) not in fast]
    params: list[dict[str, Any]] = [{"params": rest}]
    if fast:  # the read-in gates move faster than the backbone (`memory_lr_scale`)
        params.append({"params": [p for p in gates if id(p) in fast],
                       "lr": hp.lr * scale})  # fmt: skip
    # fused: one kernel per parameter instead of a dozen (issue 24: 4x faster on CPU). Under
    # mixed precision Lightning refuses to clip a fused optimizer's gradients (it would unscale
    # them itself), so there the per-parameter loop: as light on memory as fused (no
    # multi-tensor copy of the gradients, which benchmarks/plan.py does not budget for).
    plugin = getattr(module._trainer, "precision_plugin", None)
    mixed = isinstance(plugin, MixedPrecision)
    opt = torch.optim.AdamW(
        params, lr=hp.lr, betas=hp.betas, weight_decay=hp.weight_decay,
        fused=not mixed, foreach=False if mixed else None,
    )  # fmt: skip
    warmup = max(1, hp.warmup_steps)
    ramp = torch.optim.lr_scheduler.LinearLR(
        opt, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1
    )
    if hp.get("lr_schedule", "constant") == "constant":
        return {"optimizer": opt, "lr_scheduler": {"scheduler": ramp, "interval": "step"}}
    total = module.trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise ValueError("lr_schedule='cosine' needs a finite run: set max_steps or max_epochs")
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(total) - warmup))
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [ramp, decay], milestones=[warmup])
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
