"""A callback the subprocess tests add with `--trainer.callbacks+=step_probe.StepProbe`.

Each rank appends one JSON line per training batch to `<directory>/rank<r>.jsonl`: the global
step, the batch index the step was seeded with, the batch's segment counts and video names, and
a digest of the trainable weights. It also saves, per rank, the batch itself
(`batch_rank<r>_<k>.pt`) and the trainable weights before the first and after the last step
(`weights_rank<r>_{start,end}.pt`), so a test can redo the run in one process on the same global
batches (`single_process_reference`) and compare the weights.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights, whole (an FSDP2 DTensor is gathered: every rank must call this)."""
    state = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            state[name] = full.detach().float().cpu().clone()
    return state


def trainable_digest(module: torch.nn.Module) -> str:
    """sha1 of the trainable weights as this rank holds them (a local shard under FSDP2)."""
    parts = []
    for p in module.parameters():
        if p.requires_grad:
            local = p.to_local() if hasattr(p, "to_local") else p  # DTensor shard under FSDP2
            parts.append(local.detach().float().cpu().flatten())
    return hashlib.sha1(torch.cat(parts).numpy().tobytes()).hexdigest()


class StepProbe(L.Callback):
    """Record batches, steps and weights per rank (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.batch_index = -1

    def _save(self, trainer: L.Trainer, obj: Any, name: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save(obj, self.directory / f"{name.format(rank=trainer.global_rank)}.pt")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, trainable_state(pl_module), "weights_rank{rank}_start")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batch_index = trainer.fit_loop.total_batch_idx  # what `seed_batch` was given
        cpu = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        self._save(trainer, cpu, f"batch_rank{{rank}}_{self.batch_index}")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        self.directory.mkdir(parents=True, exist_ok=True)
        loss = trainer.callback_metrics.get("train/loss")
        row = {
            "step": trainer.global_step,
            "batch_index": self.batch_index,
            "segments": batch["num_segments"].tolist(),
            "names": list(batch.get("name", [])),
            "loss": None if loss is None else float(loss),
            "digest": trainable_digest(pl_module),
        }
        with (self.directory / f"rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, trainable_state(pl_module), "weights_rank{rank}_end")


def probes(directory: Path, ranks: int = 2) -> list[list[dict]]:
    """Each rank's JSON lines."""
    return [
        [json.loads(line) for line in (directory / f"rank{r}.jsonl").read_text().splitlines()]
        for r in range(ranks)
    ]


def single_process_reference(
    module: L.LightningModule,
    directory: Path,
    rank_loss: Any,
    ranks: int = 2,
    clip: float | None = None,
) -> dict[str, torch.Tensor]:
    """Redo a data-parallel run in this process: from the saved start weights, each step takes
    the global batch (every rank's saved batch, drawn with that rank's per-batch seed), averages
    the ranks' gradients as DDP does, clips and steps `module.configure_optimizers()`.

    `rank_loss(module, batch, scale)` backpropagates `scale` x one rank's loss of a step (called
    right after that rank's `seed_batch`); the trainable weights after the last step are returned.
    """
    from lightning_modules.training.step_seed import seed_batch

    state = torch.load(directory / "weights_rank0_start.pt")
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    trainable = [params[name] for name in state]
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    module.train()
    for row in probes(directory, ranks)[0]:
        opt.zero_grad(set_to_none=True)
        for r in range(ranks):
            seed_batch(row["batch_index"], r)
            batch = torch.load(directory / f"batch_rank{r}_{row['batch_index']}.pt")
            with torch.enable_grad():
                rank_loss(module, batch, 1.0 / ranks)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, clip)
        opt.step()
        sched.step()
    return {name: params[name].detach().clone() for name in state}
