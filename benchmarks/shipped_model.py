"""The shipped models at benchmark sizes: stage 1 from its config, stage 2 from stage 1's weights.

Benchmarks measure what `train.py` trains: `build_stage1` composes `configs/stage1.yaml` (DiT +
SemanticPack, the demo's codec and text encoder) with a fragment that overrides only sizes, and
`build_stage2` wraps the same architecture in `DirectForcingModule`, loading the stage-1 weights
through a checkpoint file as `init_checkpoint` does. Benchmarks run from the repository root as
`python -m benchmarks.<name>`, which puts `train.py` on the path.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_modules.direct_forcing import DirectForcingModule
from lightning_modules.video_module import VideoModule

ROOT = Path(__file__).resolve().parents[1]
STAGE1_CONFIG = ROOT / "configs/stage1.yaml"


def size_overrides(
    width: int | None = None,
    depth: int | None = None,
    heads: int | None = None,
    grad_checkpointing: bool = False,
    compile: str = "none",
) -> dict[str, Any]:
    """A config fragment composed after the stage-1 config: sizes, checkpointing and compile.

    `width` and `heads` apply to the DiT and SemanticPack alike (psi joins the DiT's tokens, so
    their widths must agree); None keeps the config's value.
    """
    dit: dict[str, Any] = {"grad_checkpointing": grad_checkpointing}
    pack: dict[str, Any] = {}
    for key, value in (("width", width), ("heads", heads)):
        if value is not None:
            dit[key] = pack[key] = value
    if depth is not None:
        dit["depth"] = depth
    init: dict[str, Any] = {"dit": {"init_args": dit}, "compile": compile}
    if pack:
        init["semantic_pack"] = {"init_args": pack}
    return {"model": {"init_args": init}}


def build_stage1(config: str | Path = STAGE1_CONFIG, **sizes: Any) -> VideoModule:
    """`train.build_model(config, size overrides)`: the shipped stage-1 model, on CPU."""
    from train import build_model  # the repository root (python -m benchmarks.<name>)

    with tempfile.TemporaryDirectory() as tmp:
        fragment = Path(tmp) / "sizes.yaml"
        fragment.write_text(yaml.safe_dump(size_overrides(**sizes)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LightningCLI's notes about the unused Trainer
            model = build_model(str(config), str(fragment))
    if type(model) is not VideoModule:
        raise ValueError(f"{config} builds a {type(model).__name__}, not a stage-1 VideoModule")
    if getattr(model.codec, "needs_fit", False):
        # A codec learned in stage 0 (PatchPCACodec) costs the same whatever it was fitted on, and
        # benchmarks feed random videos: fit it on seeded random frames instead of the data.
        gen = torch.Generator().manual_seed(0)
        model.codec.fit(torch.rand(64, 3, 32, 32, generator=gen) * 2 - 1)
    return model


def build_stage2(stage1: VideoModule, **kwargs: Any) -> DirectForcingModule:
    """Direct Forcing on a copy of `stage1`'s architecture, initialised from its weights.

    `kwargs` go to `DirectForcingModule` (history, student_steps, ...); prompt dropout and the
    timestep sampling default to stage 1's.
    """
    parts = {k: copy.deepcopy(getattr(stage1, k))
             for k in ("dit", "codec", "text_encoder", "semantic_pack")}  # fmt: skip
    hp = stage1.hparams
    kwargs = {"prompt_dropout": hp.prompt_dropout, "timestep_sampling": hp.timestep_sampling,
              **kwargs}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "stage1.ckpt"
        torch.save({"state_dict": stage1.state_dict()}, ckpt)
        return DirectForcingModule(init_checkpoint=str(ckpt), **parts, **kwargs)
