"""Stage 2 starts from stage 1 (Sec. 4.1): its architecture and its weights, from one checkpoint.

The stage-2 config names only what stage 2 changes; the networks (dit, codec, text encoder,
SemanticPack) are rebuilt from the stage-1 checkpoint's saved hyperparameters, so the two stages
cannot drift apart. Those hold LightningCLI `class_path`/`init_args` configs when stage 1 ran
under the CLI, and the module objects themselves when it ran outside it; a bare state dict holds
none, and then the architecture must be given. A part given explicitly must equal stage 1's:
`architecture_of` compares everything that defines a network apart from its weights' values.
"""

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_modules.codecs.base import LatentCodec, SpaceToDepthCodec
from lightning_modules.networks.backbone import Backbone
from lightning_modules.networks.semantic_pack import SemanticPack
from lightning_modules.networks.text_encoder import HashTextEncoder, TextEncoder
from lightning_modules.training import frozen_parts
from lightning_modules.training.adapters import LoraAdapters
from lightning_modules.training.checkpoints import read_checkpoint

Plain = int | float | str | bool | None
# The networks a stage-1 VideoModule is built from, with the type each must have.
PARTS: dict[str, Any] = {
    "dit": Backbone,  # VideoDiT or FramePackBackbone
    "codec": LatentCodec,
    "text_encoder": TextEncoder,
    "semantic_pack": SemanticPack,
}
# What VideoModule builds for None (semantic_pack None means no SemanticPack).
DEFAULTS = {"codec": SpaceToDepthCodec, "text_encoder": HashTextEncoder}


class Stage1ChangedError(ValueError):
    """The stage-1 file a stage-2 model was trained from is not the file at that path any more."""


def stage1_changed(error: BaseException) -> Stage1ChangedError | None:
    """The `Stage1ChangedError` behind `error` (jsonargparse wraps errors raised while it
    instantiates a class in its own ValueError), or None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, Stage1ChangedError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 8 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def check_stage1_hash(path: str, recorded: str) -> str:
    """The file's sha256, which must equal the `recorded` one (else `Stage1ChangedError`)."""
    digest = file_sha256(path)
    if digest != recorded:
        raise Stage1ChangedError(
            f"init_checkpoint {path!r} changed since this stage-2 model was trained from it: its "
            f"sha256 is {digest[:16]}..., the stage-2 hyperparameters record {recorded[:16]}... "
            "Restore the original stage-1 file, point init_checkpoint at a copy of it, or move "
            "the changed file away (the stage-2 checkpoint holds the architecture and weights)"
        )
    return digest


def architecture_hparams(ckpt: dict[str, Any], parts: Mapping[str, Any]) -> dict[str, Any]:
    """What stage 2 records of stage 1's architecture: the stage-1 checkpoint's saved value of
    each part (a `class_path` config, or the module a run outside the CLI saved), else the part
    itself (a bare state dict saved none)."""
    hparams = ckpt.get("hyper_parameters") or {}
    if "dit" in hparams:
        return {name: hparams.get(name) for name in PARTS}
    return {name: parts[name] for name in PARTS}


def instantiate_parts(given: Mapping[str, Any]) -> dict[str, nn.Module | None]:
    """Parts given as `class_path` configs (a stage-2 checkpoint read without LightningCLI's
    instantiator) -> modules; modules and None pass through."""
    return {
        name: instantiate(value, PARTS[name]) if isinstance(value, Mapping) else value
        for name, value in given.items()
    }


def stage1_start(
    path: str, recorded: str | None, given: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, nn.Module | None], str]:
    """What a stage-2 module is built from: (the stage-1 checkpoint, or None when its weights
    are not needed; the parts; the stage-1 file's sha256).

    A fresh stage 2 (`recorded` None) reads `path` for stage 1's architecture and weights. A
    stage-2 model rebuilt from its checkpoint's hyperparameters (`recorded` set, the parts
    given) takes the parts as they are and its weights from that checkpoint; the stage-1 file
    is only checked: absent is fine, a different hash is refused (`Stage1ChangedError`).
    """
    given = instantiate_parts(given)
    if recorded is not None and given.get("dit") is not None:
        if Path(path).is_file():
            check_stage1_hash(path, recorded)
        else:
            rank_zero_info(
                f"init_checkpoint {path!r} is absent: the architecture comes from the stage-2 "
                "hyperparameters, the weights from the stage-2 checkpoint"
            )
        return None, dict(given), recorded
    if recorded is not None and Path(path).is_file():
        check_stage1_hash(path, recorded)  # refuse a changed file before reading it
    ckpt = read_stage1_checkpoint(path)  # a clear error if it is missing
    return ckpt, resolve_architecture(ckpt, path, given), recorded or file_sha256(path)


def read_stage1_checkpoint(path: str) -> dict[str, Any]:
    """The stage-1 checkpoint as a dict (a clear error if the file is missing)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"init_checkpoint {str(file)!r} does not exist: stage 2 starts from stage-1 weights; "
            "train stage 1 first (python train.py fit --config configs/stage1.yaml) and point "
            "model.init_args.init_checkpoint at its last.ckpt"
        )
    return read_checkpoint(file)


def instantiate(config: Mapping[str, Any], base: type) -> Any:
    """A `class_path`/`init_args` config (as LightningCLI saves it) -> the module, type-checked."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--part", type=base)
    return parser.instantiate_classes(parser.parse_object({"part": dict(config)})).part


def stage1_parts(ckpt: dict[str, Any], path: str) -> dict[str, nn.Module | None] | None:
    """Stage 1's networks, rebuilt from the checkpoint's hyperparameters (None: it has none)."""
    hparams = ckpt.get("hyper_parameters") or {}
    if "dit" not in hparams:
        return None
    parts: dict[str, nn.Module | None] = {}
    for name, base in PARTS.items():
        value = hparams.get(name)
        if isinstance(value, Mapping):  # saved by LightningCLI
            value = instantiate(value, base)
        if value is None and name in DEFAULTS:
            value = DEFAULTS[name]()
        if value is not None and not isinstance(value, base):
            raise ValueError(
                f"init_checkpoint {path!r} saved {name}={type(value).__name__}, not a {base.__name__}"
            )
        parts[name] = value
    if parts["dit"] is None:
        raise ValueError(f"init_checkpoint {path!r} saved dit=None: not a stage-1 checkpoint")
    return parts


def resolve_architecture(
    ckpt: dict[str, Any], path: str, given: dict[str, nn.Module | None]
) -> dict[str, nn.Module | None]:
    """The networks stage 2 runs: stage 1's, where `given` has None; a given part must equal
    stage 1's (one error lists every difference). A checkpoint without hyperparameters (a bare
    state dict) uses `given` as it is, and needs at least `dit`."""
    stage1 = stage1_parts(ckpt, path)
    if stage1 is None:
        if given.get("dit") is None:
            raise ValueError(
                f"init_checkpoint {path!r} has no saved hyperparameters (a bare state dict), so "
                "the stage-1 architecture is unknown: pass dit (and codec, text_encoder, "
                "semantic_pack as stage 1 had them), or use a Lightning checkpoint of stage 1"
            )
        return dict(given)
    if stage1["semantic_pack"] is not None:  # memory gates: VideoModule adds them to either
        for dit in (stage1["dit"], given.get("dit")):
            if dit is not None:
                dit.enable_memory()
    problems = []
    for name in PARTS:
        if given.get(name) is not None:
            problems += differences(name, given[name], stage1[name])
    if problems:
        raise ValueError(
            f"the stage-2 architecture conflicts with stage 1's, saved in {path!r}: "
            + "; ".join(problems)
            + ". Leave these parts out of the stage-2 config: they come from the checkpoint"
        )
    return {
        name: given.get(name) if given.get(name) is not None else stage1[name] for name in PARTS
    }


def stage1_adapters(
    ckpt: dict[str, Any] | None, path: str, given: LoraAdapters | Mapping[str, Any] | None
) -> LoraAdapters | None:
    """Stage 1's low-rank adapters (stage 2 runs on top of the adapted model); `given` must
    equal them. Without `ckpt` (a stage-2 model rebuilt from its own hyperparameters,
    `stage1_start`) the given ones are stage 1's: those hyperparameters recorded them."""
    if isinstance(given, Mapping):  # a stage-2 checkpoint saved by LightningCLI
        given = instantiate(given, LoraAdapters)
    if ckpt is None:
        return given
    saved = (ckpt.get("hyper_parameters") or {}).get("adapters")
    if isinstance(saved, Mapping):  # saved by LightningCLI
        saved = instantiate(saved, LoraAdapters)
    if given is not None and given != saved:
        raise ValueError(
            f"adapters: given {given!r}, but stage 1 ({path!r}) had {saved!r}. Leave adapters "
            "out of the stage-2 config: they come from the checkpoint"
        )
    return saved


def differences(name: str, given: nn.Module | None, stage1: nn.Module | None) -> list[str]:
    """'name.key: given X, stage 1 Y' for each setting where the two architectures differ."""
    if (given is None) != (stage1 is None):
        kinds = [type(m).__name__ if m is not None else "None" for m in (given, stage1)]
        return [f"{name}: given {kinds[0]}, stage 1 {kinds[1]}"]
    a, b = architecture_of(given), architecture_of(stage1)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            shown = [short(d.get(key, "<absent>")) for d in (a, b)]
            out.append(f"{name}.{key}: given {shown[0]}, stage 1 {shown[1]}")
    return out


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_stage1_weights(module: nn.Module, ckpt: dict[str, Any], path: str) -> None:
    """Copy the stage-1 weights into `module`; one error lists everything that does not match."""
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"init_checkpoint {path!r} holds no state_dict of tensors")
    frozen_parts.check_records(module, ckpt, f"init_checkpoint {path!r}")
    own = module.state_dict()  # pretrained parts left out: rebuilt from their folders
    # Stage 1's memory-recall head is a training loss's decoder; the model never runs it.
    state = {k: v for k, v in state.items() if not k.startswith("memory_recall.") or k in own}
    missing = sorted(set(own) - set(state))
    extra = set(state) - set(own)
    unexpected = sorted(extra - frozen_parts.left_out(module, extra))  # an older file saved them
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(items)}): {', '.join(items)}"
                 for name, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", shapes)) if items]  # fmt: skip
        raise ValueError(
            f"init_checkpoint {path!r} does not match this model's architecture (the dit/"
            "codec/text_encoder/semantic_pack must equal stage 1's): " + "; ".join(parts)
        )
    module.load_state_dict(state, strict=True)


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, Plain)


def architecture_of(module: nn.Module | None) -> dict[str, Any]:
    """What defines a network besides its weights' values: per submodule its class and scalar
    settings (ints, floats, strings, bools and tuples of them), the shape of each parameter and
    buffer, and the values of non-persistent buffers (derived from settings, e.g. RoPE
    frequencies, and not in the state dict). Two modules with equal results compute the same
    function once they hold the same state dict. LoRA adapters (a network pickled after they
    were added) are left to the `adapters` comparison."""
    if module is None:
        return {"": None}
    out: dict[str, Any] = {}
    for prefix, sub in module.named_modules():
        if "lora" in prefix.split("."):  # adapters are compared as `adapters` (stage1_adapters)
            continue
        at = f"{prefix}." if prefix else ""
        out[f"{at}<class>"] = f"{type(sub).__module__}.{type(sub).__qualname__}"
        for key, value in vars(sub).items():
            if not key.startswith("_") and key != "training" and _plain(value):
                out[at + key] = tuple(value) if isinstance(value, list) else value
        for key, param in sub._parameters.items():
            if param is not None:
                out[f"{at}{key}:shape"] = tuple(param.shape)
        for key, buffer in sub._buffers.items():
            if buffer is not None:
                out[f"{at}{key}:shape"] = tuple(buffer.shape)
                if key in sub._non_persistent_buffers_set:
                    out[at + key] = buffer.tolist()
    return out
