"""Reading checkpoints written by any version of this code: the file, its pickles, its class paths.

A checkpoint names classes: LightningCLI saves `class_path` strings (and the module's
`_class_path`) in `hyper_parameters`, and a stage 1 trained outside the CLI pickles its networks
there. Classes moved when `lightning_modules/` got its sub-packages (e.g.
`lightning_modules.dit.VideoDiT` is `lightning_modules.networks.dit.VideoDiT`), so every reader
renames old paths with the one table `MOVED`: stage 2's `init_checkpoint` (`training/stage1.py`),
`loading.load_module` (the offline tools) and `train.py`'s CLI (`fit --ckpt_path` resumes).

To rewrite a file once instead, so that any tool reads it:

    python -m lightning_modules.training.checkpoints OLD.ckpt NEW.ckpt
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MOVED",
    "CheckpointReadError",
    "new_class_path",
    "read_checkpoint",
    "upgrade_class_paths",
]

# Old module (or module.Class) -> new; an entry for a class wins over its module's.
MOVED: dict[str, str] = {
    "lightning_modules.dit": "lightning_modules.networks.dit",
    "lightning_modules.frame_pack": "lightning_modules.networks.frame_pack",
    "lightning_modules.semantic_pack": "lightning_modules.networks.semantic_pack",
    "lightning_modules.rope": "lightning_modules.networks.rope",
    "lightning_modules.text_encoder": "lightning_modules.networks.text_encoder",
    "lightning_modules.codec": "lightning_modules.codecs.base",
    "lightning_modules.codec.PatchPCACodec": "lightning_modules.codecs.patch_pca.PatchPCACodec",
    "lightning_modules.framepack_backbone": "lightning_modules.pretrained.framepack_backbone",
    "lightning_modules.hf_codecs": "lightning_modules.pretrained.vae",
    "lightning_modules.hf_text_encoders": "lightning_modules.pretrained.text_encoders",
    "lightning_modules.hf_loading": "lightning_modules.pretrained.folders",
}


def new_class_path(path: str) -> str:
    """`path` (module.Class) in this layout: renamed by `MOVED`, else unchanged."""
    if path in MOVED:
        return MOVED[path]
    module, _, name = path.rpartition(".")
    return f"{MOVED[module]}.{name}" if module in MOVED else path


def upgrade_class_paths(config: Any) -> Any:
    """Rename, in place, every `class_path` / `_class_path` string in a nested config (a
    checkpoint's `hyper_parameters`, or the whole checkpoint); returns it."""
    if isinstance(config, MutableMapping):
        for key, value in config.items():
            if key in ("class_path", "_class_path") and isinstance(value, str):
                config[key] = new_class_path(value)
            else:
                upgrade_class_paths(value)
    elif isinstance(config, list):
        for value in config:
            upgrade_class_paths(value)
    return config


class _Unpickler(pickle.Unpickler):
    """Finds pickled classes (networks a stage 1 outside the CLI saved) at their new paths."""

    def find_class(self, module: str, name: str) -> Any:
        module, _, name = new_class_path(f"{module}.{name}").rpartition(".")
        return super().find_class(module, name)


class _RenamingPickle:
    """The `pickle_module` torch.load unpickles with."""

    __name__ = "pickle"
    Unpickler = _Unpickler
    load = staticmethod(lambda file, **kwargs: _Unpickler(file, **kwargs).load())


class CheckpointReadError(ValueError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, not a checkpoint)."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint file as a dict, on CPU, its class paths in this layout.

    A full unpickle, as Lightning's own `--ckpt_path` does: a run outside the CLI stores its
    networks in the hyperparameters. Only load checkpoints you trust. A file torch cannot read
    raises `CheckpointReadError` naming it (torch's own error does not).
    """
    try:
        ckpt = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_RenamingPickle
        )
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as err:
        size = Path(path).stat().st_size if Path(path).is_file() else None
        raise CheckpointReadError(
            f"cannot read checkpoint {str(path)!r} ({size} bytes): {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}. The file is probably truncated "
            "(a save or copy that did not finish, a full disk) or not a torch checkpoint; use "
            "another checkpoint of the run (e.g. its step checkpoint) or copy it again"
        ) from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{str(path)!r} is not a checkpoint dict")
    return upgrade_class_paths(ckpt)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_modules.training.checkpoints", description=__doc__.split("\n")[0]
    )
    parser.add_argument("old", help="a checkpoint written before the move")
    parser.add_argument("new", help="where to write it with this layout's class paths")
    args = parser.parse_args(argv)
    torch.save(read_checkpoint(args.old), args.new)
    print(f"wrote {args.new}")


if __name__ == "__main__":
    main()
