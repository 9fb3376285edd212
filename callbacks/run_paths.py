"""Where a run's files are: its latest `last.ckpt` (resume), and per-run, per-step output paths.

- `latest_checkpoint`: `fit --ckpt_path last` resolves here (`train.py`). Lightning's own `last`
  looks only in the new run's version directory, which a new run has just created empty, so it
  trained from scratch with a warning; this finds the newest `last*.ckpt` of the runs the config
  writes (`<save_dir>/<name>/version_*/checkpoints/`, or a checkpoint callback's `dirpath`).
- `run_label` + `model_step`: the name and step of the weights being evaluated or sampled, so
  evaluation tables, rollout mp4s and predictions of different runs, stages and steps never land
  on the same path; `fresh_dir` adds `-2`, `-3`, ... rather than overwrite what a previous
  command wrote.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["fresh_dir", "latest_checkpoint", "model_step", "run_label"]

CHECKPOINT_CALLBACKS = ("ModelCheckpoint", "ResumableCheckpoint")


def _init_args(config: Any) -> Mapping[str, Any]:
    if not isinstance(config, Mapping):
        return {}
    return config.get("init_args") or {}


def checkpoint_dirs(trainer: Mapping[str, Any]) -> list[Path]:
    """The directories a run of this trainer config writes `last.ckpt` to (all versions)."""
    dirs = []
    callbacks = trainer.get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        path = callback.get("class_path", "") if isinstance(callback, Mapping) else ""
        dirpath = _init_args(callback).get("dirpath")
        if path.rpartition(".")[2] in CHECKPOINT_CALLBACKS and dirpath:
            dirs.append(Path(dirpath))
    if dirs:
        return dirs
    root = Path(trainer.get("default_root_dir") or ".")
    logger = trainer.get("logger")
    if logger is False or logger is None:
        return [root / "checkpoints"]
    if logger is True:
        return sorted((root / "lightning_logs").glob("*/checkpoints"))
    for entry in logger if isinstance(logger, list) else [logger]:
        args = _init_args(entry)
        if "save_dir" in args:
            base = Path(args["save_dir"]) / (args.get("name") or "")
            version = args.get("version")
            if version is not None:
                name = version if isinstance(version, str) else f"version_{version}"
                return [base / name / "checkpoints"]
            return sorted(base.glob("*/checkpoints"))
    return [root / "checkpoints"]


def latest_checkpoint(trainer: Mapping[str, Any]) -> Path:
    """The newest `last*.ckpt` (file, or FSDP2 directory) among `checkpoint_dirs(trainer)`."""
    dirs = checkpoint_dirs(trainer)
    found = [p for d in dirs for p in d.glob("last*.ckpt")]
    if not found:
        shown = ", ".join(str(d) for d in dirs) or "(no run directory of this config exists)"
        raise FileNotFoundError(
            f"--ckpt_path last: no last.ckpt in {shown}. Start a new run without --ckpt_path, "
            "or pass the checkpoint's path"
        )
    return max(found, key=lambda p: (p.stat().st_mtime, str(p)))


def logger_version(checkpoint: Path) -> int | str | None:
    """The logger version a `<name>/<version>/checkpoints/last.ckpt` belongs to (None: other)."""
    if checkpoint.parent.name != "checkpoints":
        return None
    name = checkpoint.parent.parent.name
    match = re.fullmatch(r"version_(\d+)", name)
    return int(match.group(1)) if match else name


def run_label(checkpoint: str | Path | None) -> str:
    """A checkpoint's run as a path-safe name: `stage1_version_0` for
    `runs/stage1/version_0/checkpoints/last.ckpt`, else the file's stem; `untrained` for None."""
    if checkpoint is None:
        return "untrained"
    path = Path(checkpoint)
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        parts = [path.parent.parent.parent.name, path.parent.parent.name]
        return "_".join(p for p in parts if p)
    return path.name.removesuffix(".ckpt")


def model_step(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
    """The optimizer step of the weights in use: the trainer's while fitting, else the step of
    the checkpoint they were loaded from (0 for weights that never trained)."""
    if trainer.state.fn == TrainerFn.FITTING:
        return trainer.global_step
    return int(getattr(pl_module, "loaded_step", None) or trainer.global_step)


def fresh_dir(path: Path) -> Path:
    """`path` if it does not exist or is empty, else the first free `path-2`, `path-3`, ..."""
    candidate, n = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
