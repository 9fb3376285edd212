"""Pretrained parts from local folders: the one place that imports `diffusers`/`transformers`.

Everything pretrained (VAEs, text and image encoders, the FramePack-F1 transformer) is read with
`from_pretrained(folder, local_files_only=True)` from a folder in the Hugging Face layout the
user already has on disk; nothing is ever downloaded. Before loading, `check_folder` verifies the
folder holds what the loader needs and otherwise stops with ONE error naming the folder, what
was expected in it and what is there. The libraries are the optional extra `hf`
(`pip install -e '.[hf]'`) and are imported only when a config names a class that needs them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

import torch

DType = Literal["float32", "bfloat16", "float16"]

# What a folder must contain, per kind of component: every group needs one of its names.
DIFFUSERS_MODEL = (
    ("config.json",),
    (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model.bin",
    ),
)
TRANSFORMERS_MODEL = (
    ("config.json",),
    (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ),
)
TOKENIZER = (
    ("tokenizer_config.json",),
    ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model"),
)
IMAGE_PROCESSOR = (("preprocessor_config.json",),)


def import_hf(package: Literal["diffusers", "transformers"]) -> Any:
    """Import an optional dependency, or say which extra to install."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise ImportError(
            f"this config names a pretrained component that needs `{package}`; install the "
            f"optional extra: pip install -e '.[hf]'"
        ) from err


def torch_dtype(name: DType) -> torch.dtype:
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {name!r}")
    return getattr(torch, name)


def check_folder(folder: str | Path, component: str, expects: tuple[tuple[str, ...], ...]) -> Path:
    """`folder` if it holds one file of every group in `expects`; else one error saying what lacks."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        found = "the folder does not exist"
    else:
        names = {p.name for p in path.iterdir()}
        if all(any(n in names for n in group) for group in expects):
            return path
        found = f"it holds {sorted(names)[:12] or 'nothing'}"
    wanted = " and ".join(
        group[0] if len(group) == 1 else "one of (" + ", ".join(group) + ")" for group in expects
    )
    raise FileNotFoundError(
        f"{component}: pretrained folder {str(path)!r} is missing or incomplete: expected "
        f"{wanted} in it, but {found}. Point the config at your local copy (nothing is "
        "downloaded)."
    )


def load_diffusers(class_name: str, folder: Path, dtype: DType) -> Any:
    """`diffusers.<class_name>.from_pretrained(folder, local_files_only=True)`, frozen dtype."""
    cls = getattr(import_hf("diffusers"), class_name)
    return cls.from_pretrained(str(folder), torch_dtype=torch_dtype(dtype), local_files_only=True)


def load_transformers(class_name: str, folder: Path, dtype: DType | None = None) -> Any:
    """`transformers.<class_name>.from_pretrained(folder, local_files_only=True)`."""
    cls = getattr(import_hf("transformers"), class_name)
    kwargs = {} if dtype is None else {"dtype": torch_dtype(dtype)}
    return cls.from_pretrained(str(folder), local_files_only=True, **kwargs)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Frozen and in eval mode: pretrained encoders never train and never drop out."""
    module.requires_grad_(False)
    return module.eval()
