"""Frozen pretrained parts stay out of checkpoints: rebuilt from their folders, recorded by hash.

A pretrained part (the HF VAE, the LLaMA/CLIP/SigLIP or UMT5 encoders, and, when low-rank
adapters train the backbone, the backbone's pretrained weights) never changes in training, and
the module rebuilds it from its `pretrained_dir` at construction. Saving it would put ~16 GB that
never changes in every `last.ckpt` (8B LLaMA parameters in bf16 alone) and reload it on resume.
So its weights are left out of `state_dict()` (which every save path reads: Lightning, FSDP2's
sharded checkpoints, stage 2's `init_checkpoint`) and a checkpoint instead records, per part, the
folders it was built from and every file's sha256:

    checkpoint["pretrained_parts"] = {"text_encoder": {"class": "...", "sources":
        {"/data/HunyuanVideo/text_encoder": {"config.json": "3f...", "model.safetensors": ...}}}}

Loading compares the record with the folders this run built its parts from, by content (a moved
copy is fine), and refuses different files, naming both folders. Checkpoints written before this
(no record, the weights in the state dict) still load: their saved weights replace the folders'.

A part is pretrained when it has `pretrained_sources()` (the folders its weights come from,
`lightning_modules/pretrained/`); the backbone's folder weights are named by `pretrained_keys`.
The demo's `PatchPCACodec` (fitted in stage 0) and `HashTextEncoder` (trained) are not: they
stay in the checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "RECORD_KEY", "check_records", "frozen_keys", "install", "left_out", "records", "sources_of",
]  # fmt: skip

RECORD_KEY = "pretrained_parts"
_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def sources_of(part: nn.Module | None) -> list[Path]:
    """The folders a part's weights are loaded from (empty: not a pretrained part)."""
    get = getattr(part, "pretrained_sources", None)
    return [Path(s) for s in get()] if callable(get) else []


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per process (keyed by path, size and mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def hash_folder(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (hidden files skipped)."""
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    )  # fmt: skip
    return {str(p.relative_to(folder)): file_sha256(p) for p in files}


def _parts(module: nn.Module) -> dict[str, nn.Module]:
    """The parts whose pretrained weights `module` rebuilds instead of saving."""
    parts = {}
    for name in ("codec", "text_encoder"):
        part = getattr(module, name, None)
        if sources_of(part):
            parts[name] = part
    adapters = getattr(module, "adapters", None)
    dit = getattr(module, "dit", None)
    if adapters is not None and not getattr(module, "adapters_merged", False) and sources_of(dit):
        parts["dit"] = dit  # low-rank adapters train it: its folder weights never change
    return parts


def frozen_keys(module: nn.Module) -> dict[str, set[str]]:
    """{part: the state-dict keys of `module` that are rebuilt from pretrained folders}.

    The codec and the text encoder: all their keys. The backbone (only under adapters): the keys
    its folder provided (`pretrained_keys`), except trainable ones and those the adapters train
    in full (`LoraAdapters.train_in_full`), so a stage 2 on an adapted model keeps its head.
    """
    out: dict[str, set[str]] = {}
    for name, part in _parts(module).items():
        keys = {f"{name}.{k}" for k in part.state_dict()}
        if name == "dit":
            trainable = {n for n, p in module.named_parameters() if p.requires_grad}
            keys = {f"dit.{k}" for k in part.pretrained_keys} & keys
            keys = {k for k in keys if k not in trainable and not module.adapters.trains_in_full(k)}
        out[name] = keys
    return out


def left_out(module: nn.Module, keys: set[str]) -> set[str]:
    """The `keys` (of a checkpoint's state dict) that belong to parts `module` rebuilds: a
    checkpoint written before parts were left out holds them (an unloaded lazy encoder has no
    keys yet, so its whole prefix counts)."""
    frozen = set().union(*frozen_keys(module).values())
    prefixes = tuple(f"{name}." for name in _parts(module) if name != "dit")
    return {k for k in keys if k in frozen or k.startswith(prefixes)}


def _drop_frozen(module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    for keys in frozen_keys(module).values():
        for key in keys:
            state.pop(prefix + key, None)


def _forgive_missing(module: nn.Module, incompatible: Any) -> None:
    frozen = set().union(*frozen_keys(module).values())

    def rebuilt(key: str) -> bool:  # also under a wrapper's prefix (`_forward_module.dit...`)
        return key in frozen or any(key[i + 1 :] in frozen for i, ch in enumerate(key) if ch == ".")

    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not rebuilt(k)]


def install(module: nn.Module) -> None:
    """`module.state_dict()` leaves the frozen keys out; `load_state_dict` does not miss them."""
    module.register_state_dict_post_hook(_drop_frozen)
    module.register_load_state_dict_post_hook(_forgive_missing)


def records(module: nn.Module) -> dict[str, Any]:
    """What a checkpoint records of each rebuilt part: its class and its folders' file hashes."""
    return {
        name: {
            "class": f"{type(part).__module__}.{type(part).__qualname__}",
            "sources": {str(folder): hash_folder(folder) for folder in sources_of(part)},
        }
        for name, part in _parts(module).items()
    }


def _difference(name: str, recorded: Mapping[str, Any], current: dict[str, Any]) -> str | None:
    """None if the recorded folders hold the same files as the current ones; else what differs."""
    old, new = list(recorded["sources"].items()), list(current["sources"].items())
    if [files for _, files in old] == [files for _, files in new]:
        return None
    lines = []
    for i in range(max(len(old), len(new))):
        (a, fa), (b, fb) = (
            old[i] if i < len(old) else ("<none>", {}),
            (new[i] if i < len(new) else ("<none>", {})),
        )
        if fa == fb:
            continue
        files = [
            f"{f} (sha256 {fa.get(f, 'absent')[:12]} vs {fb.get(f, 'absent')[:12]})"
            for f in sorted(set(fa) | set(fb))
            if fa.get(f) != fb.get(f)
        ]
        lines.append(f"trained with {a!r}, this run loads {b!r}: " + ", ".join(files[:6]))
    return f"{name} ({recorded['class'].rpartition('.')[2]}): " + "; ".join(lines)


def check_records(module: nn.Module, checkpoint: Mapping[str, Any], what: str) -> None:
    """Refuse a checkpoint whose pretrained parts were built from other files than `module`'s.

    `what` names the checkpoint in the error. A checkpoint without a record (written before
    parts were left out) must hold their weights, which then load over the folders' weights.
    """
    recorded: Mapping[str, Any] | None = checkpoint.get(RECORD_KEY)
    parts = _parts(module)
    state = checkpoint.get("state_dict")  # absent from a sharded checkpoint's metadata
    problems = []
    for name in parts:
        if (recorded is None or name not in recorded) and state is not None:
            lacking = [k for k in frozen_keys(module)[name] if k not in state]
            if lacking:
                problems.append(
                    f"{name}: the checkpoint holds neither its weights ({len(lacking)} keys, "
                    f"e.g. {lacking[0]!r}) nor a record of the folders they came from"
                )
    for name, entry in (recorded or {}).items():
        if name not in parts:
            folders = ", ".join(repr(f) for f in entry["sources"])
            problems.append(
                f"{name}: the checkpoint left its pretrained weights out, to be rebuilt from "
                f"{folders}, but this model's {name} does not load them from a folder"
            )
            continue
        current = {"sources": {str(f): hash_folder(f) for f in sources_of(parts[name])}}
        diff = _difference(name, entry, current)
        if diff:
            problems.append(diff)
    if problems:
        raise ValueError(
            f"{what} does not match this model's pretrained parts: "
            + "; ".join(problems)
            + ". Point the config at the folders the checkpoint was trained with"
        )
