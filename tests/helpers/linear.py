"""A one-layer LightningModule on fixed data: checkpoint and EMA mechanics in a second."""

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class Linear(L.LightningModule):
    """y = w x + b fitted by SGD to fixed targets; `manual=True` steps the optimizer itself,
    twice per batch (as stage 2 may)."""

    def __init__(self, manual: bool = False, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.lr = lr
        self.automatic_optimization = not manual

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        x, y = batch
        if self.automatic_optimization:
            return (self.layer(x) - y).pow(2).mean()
        opt = self.optimizers()
        for _ in range(2):
            loss = (self.layer(x) - y).pow(2).mean()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        return None

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", (self.layer(x) - y).pow(2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(batches: int = 4) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * batches, 4, generator=gen)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True) + 1), batch_size=2)


def trainer(tmp: Any, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    """CPU, no logger, no progress bar; `callbacks` attached."""
    options = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False,
               "enable_model_summary": False, "default_root_dir": tmp, "max_epochs": 1,
               "num_sanity_val_steps": 0, **kwargs}  # fmt: skip
    return L.Trainer(callbacks=callbacks, **options)
