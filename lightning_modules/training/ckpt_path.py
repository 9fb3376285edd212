"""What `--ckpt_path` does to the rest of the command line (`train.py`'s CLI).

Under `--ckpt_path`, LightningCLI rebuilds the model from the checkpoint's saved hyperparameters,
which replaces whatever the config files and the command line said about the model. For config
files that is the point (a checkpoint is predicted with the architecture it was trained with);
for a flag typed on the command line it silently did nothing (`predict --ckpt_path X
--model.init_args.sample_steps=4` sampled with the checkpoint's 8 steps). Now a command-line
model flag either applies or stops the command:

- `APPLICABLE` settings (the sampler, `rollout_segments`, and stage 2's `init_checkpoint` path,
  whose content is checked by hash) apply on top of the checkpoint's hyperparameters;
- any other model flag whose value differs from the checkpoint's is refused with a message
  naming the flag, its value and the checkpoint's (weights of another architecture, or a
  resumed optimizer with other settings, cannot follow it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jsonargparse import Namespace

__all__ = ["APPLICABLE", "ModelFlag", "model_flags", "reconcile"]

# Model settings a command-line flag may change on top of a checkpoint's hyperparameters.
APPLICABLE = ("sample_steps", "sample_shift", "cfg_scale", "rollout_segments", "init_checkpoint")
_MISSING = object()


@dataclass(frozen=True)
class ModelFlag:
    """A `--model.<key>` command-line argument: the text typed and the key's path below the
    model's init arguments (`init_args` / `dict_kwargs` levels dropped)."""

    text: str
    path: tuple[str, ...]


def model_flags(args: Sequence[str]) -> list[ModelFlag]:
    """The `--model.<key>[=value]` arguments in `args` (argv without the program)."""
    flags = []
    for arg in args:
        if not arg.startswith("--model."):
            continue
        key = arg[len("--model.") :].partition("=")[0]
        path = tuple(p for p in key.split(".") if p not in ("init_args", "dict_kwargs"))
        if path:
            flags.append(ModelFlag(arg, path))
    return flags


def lookup(config: Any, path: tuple[str, ...]) -> Any:
    """The value at `path` in a model config, looking through `init_args` / `dict_kwargs`."""
    node = config
    for key in path:
        node = _child(node, key)
        if node is _MISSING:
            return _MISSING
    return node


def _child(node: Any, key: str) -> Any:
    if not isinstance(node, (Namespace, dict)):
        return _MISSING
    for level in (node, node.get("init_args"), node.get("dict_kwargs")):
        if isinstance(level, (Namespace, dict)) and key in level:
            return level[key]
    return _MISSING


def assign(config: Any, path: tuple[str, ...], value: Any) -> None:
    """Set the value at `path` (which `lookup` found) in a model config."""
    node = config
    for key in path[:-1]:
        node = _child(node, key)
    for level in (node, node.get("init_args"), node.get("dict_kwargs")):
        if isinstance(level, (Namespace, dict)) and path[-1] in level:
            level[path[-1]] = value
            return
    raise KeyError(f"model config has no {'.'.join(path)}")


def _plain(value: Any) -> Any:
    return value.as_dict() if isinstance(value, Namespace) else value


def reconcile(
    flags: Sequence[ModelFlag], given: Any, restored: Any, checkpoint: str
) -> list[tuple[tuple[str, ...], Any]]:
    """The (path, value) of each command-line flag to apply on top of `restored` (the model
    config after the checkpoint's hyperparameters); raises ValueError naming every flag that
    differs from the checkpoint and cannot apply. `given` is the model config before."""
    apply, refused = [], []
    for flag in flags:
        want, have = lookup(given, flag.path), lookup(restored, flag.path)
        if want is _MISSING or _plain(want) == _plain(have):
            continue
        if flag.path[0] in APPLICABLE and len(flag.path) == 1 and have is not _MISSING:
            apply.append((flag.path, want))
        else:
            shown = "absent" if have is _MISSING else repr(_plain(have))
            refused.append(f"{flag.text} (the checkpoint has {shown})")
    if refused:
        raise ValueError(
            f"--ckpt_path {checkpoint}: the model is rebuilt from the checkpoint's saved "
            "hyperparameters, so these command-line model flags cannot apply: "
            + "; ".join(refused)
            + f". Only {', '.join(APPLICABLE)} can change there; drop the others, or train a "
            "new model (no --ckpt_path) with them"
        )
    return apply
