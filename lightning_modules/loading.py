"""Loading a `train.py` checkpoint of either stage as the module class that wrote it.

Offline tools (`benchmarks/generation_quality.py`, `python -m eval.probe`) take a checkpoint of stage
1 (`VideoModule`) or stage 2 (`DirectForcingModule`). `VideoModule.load_from_checkpoint` cannot
read a stage-2 checkpoint: its hyperparameters name no `dit` (stage 2 rebuilds its architecture
from `init_checkpoint`, see `training/stage1.py`), so the class must be the one LightningCLI
recorded (`_class_path`). A stage-2 checkpoint holds stage 1's architecture and the sha256 of its
`init_checkpoint`, so it loads without that file, and refuses a file whose hash changed
(`training/stage1.py`); stage-2 checkpoints written before that need the file. Checkpoints written
before the sub-packages existed load too (their class paths are renamed,
`training/checkpoints.py`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from lightning_modules.direct_forcing import DirectForcingModule
from lightning_modules.training.checkpoints import read_checkpoint, upgrade_class_paths
from lightning_modules.training.stage1 import Stage1ChangedError, stage1_changed
from lightning_modules.video_module import VideoModule

__all__ = ["load_module", "module_class", "read_checkpoint"]

CLASSES: dict[str, type[VideoModule]] = {
    f"{cls.__module__}.{cls.__qualname__}": cls for cls in (VideoModule, DirectForcingModule)
}


def module_class(checkpoint: dict[str, Any]) -> type[VideoModule]:
    """The class that wrote `checkpoint`: LightningCLI's `_class_path`; outside the CLI,
    DirectForcingModule when the hyperparameters name an `init_checkpoint`, else VideoModule."""
    hparams = checkpoint.get("hyper_parameters") or {}
    path = hparams.get("_class_path")
    if path is None:
        return DirectForcingModule if "init_checkpoint" in hparams else VideoModule
    if path not in CLASSES:
        raise ValueError(f"checkpoint module {path!r} is none of {sorted(CLASSES)}")
    return CLASSES[path]


def load_module(checkpoint: dict[str, Any] | str | Path, strict: bool = True) -> VideoModule:
    """`checkpoint` (a loaded dict or a file) as its own module class, on CPU."""
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "the given checkpoint"
    if isinstance(checkpoint, (str, Path)):
        checkpoint = read_checkpoint(checkpoint)
    upgrade_class_paths(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    cls = module_class(checkpoint)  # the checkpoint was unpickled in full already (networks)
    try:
        return cls.load_from_checkpoint(
            buffer, map_location="cpu", strict=strict, weights_only=False
        )
    except ValueError as err:
        if (changed := stage1_changed(err)) is None:
            raise
        raise Stage1ChangedError(f"{changed} (the stage-2 checkpoint: {source})") from err
