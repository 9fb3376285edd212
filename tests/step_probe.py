"""A callback the subprocess tests add with `--trainer.callbacks+=step_probe.StepProbe`.

Each rank appends one JSON line per training batch to `<directory>/rank<r>.jsonl`: the global
step, the batch's segment counts and a digest of the trainable weights. Comparing the files of
two ranks shows whether they ran equal-length batches (no rank waits in a collective for
another) and, under DDP, whether the gradient reduction kept their weights bitwise equal.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch


def trainable_digest(module: torch.nn.Module) -> str:
    """sha1 of the trainable weights as this rank holds them (a local shard under FSDP2)."""
    parts = []
    for p in module.parameters():
        if p.requires_grad:
            local = p.to_local() if hasattr(p, "to_local") else p  # DTensor shard under FSDP2
            parts.append(local.detach().float().cpu().flatten())
    return hashlib.sha1(torch.cat(parts).numpy().tobytes()).hexdigest()


class StepProbe(L.Callback):
    """Record (step, segment counts, loss, trainable digest) per batch, one file per rank."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        self.directory.mkdir(parents=True, exist_ok=True)
        loss = trainer.callback_metrics.get("train/loss")
        row = {
            "step": trainer.global_step,
            "segments": batch["num_segments"].tolist(),
            "loss": None if loss is None else float(loss),
            "digest": trainable_digest(pl_module),
        }
        with (self.directory / f"rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
