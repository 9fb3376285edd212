"""Fill a config's latent and conditioning caches before training, without building the DiT.

    python prepare_caches.py --config configs/framepack_f1/stage1.yaml [--config more.yaml]
        [--data.init_args.conditioning_cache=...] [--device cuda]

Takes train.py's arguments (without the subcommand). Builds only what the caches need from the
stage-1 config (the model's `codec` and
`text_encoder`, and the datamodule), encodes every video once into
`data.init_args.latent_cache` and `data.init_args.conditioning_cache`, and exits. The keys are
those `train.py` computes, so a later `train.py fit` with the same config finds both caches
complete and never loads the text encoders; building them here instead of in `prepare_data` keeps
the 13B backbone out of memory while LLaMA runs, and the other ranks out of a long barrier.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from jsonargparse import Namespace

from datamodules.video_datamodule import VideoDataModule
from lightning_modules.codecs.base import LatentCodec
from lightning_modules.networks.text_encoder import TextEncoder
from lightning_modules.training.stage1 import instantiate
from train import parse_config


def _part(model: Namespace, name: str, base: type) -> Any:
    config = model.init_args.get(name)
    if config is None:
        raise ValueError(
            f"the config names no model.init_args.{name}: prepare_caches.py reads a stage-1 "
            "config (a stage-2 config takes its parts from init_checkpoint)"
        )
    return instantiate(config.as_dict(), base)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, rest = parser.parse_known_args(argv)  # the rest: train.py's --config and overrides
    config = parse_config(rest)
    dm = instantiate(config.data.as_dict(), VideoDataModule)
    if dm.latent_cache is None and dm.conditioning_cache is None:
        raise ValueError(
            "the config sets neither data.init_args.latent_cache nor conditioning_cache"
        )
    device = torch.device(args.device)
    start, done = time.perf_counter(), {}
    if dm.source == "synthetic":
        dm._render_synthetic()
    if dm.latent_cache is not None:
        codec = _part(config.model, "codec", LatentCodec).to(device)
        dm.attach_codec(codec)
        done["latent_cache"] = (str(dm._cache_dir()), dm._prepare_cache())
        del codec
    if dm.conditioning_cache is not None:
        encoder = _part(config.model, "text_encoder", TextEncoder).to(device)
        dm.attach_text_encoder(encoder)
        done["conditioning_cache"] = (str(dm._conditioning_dir()), dm._prepare_conditioning())
    for name, (directory, encoded) in done.items():
        print(f"{name}: {directory} ({encoded} videos encoded now)")
    print(f"prepare_caches: {time.perf_counter() - start:.1f} s on {device}")
    return done


if __name__ == "__main__":
    main()
