"""Entry point: `python train.py {fit,validate,test,predict} --config configs/<stage>.yaml`.

A plain LightningCLI: every class is chosen in YAML with class_path/init_args, configs compose
(`--config a.yaml --config b.yaml`), and `--print_config` prints a config that can be fed back.
"""

import json
import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import ArgsType, LightningCLI

from datamodules.video_datamodule import VideoDataModule
from lightning_modules.training.checkpoints import upgrade_class_paths
from lightning_modules.video_module import VideoModule


class CLI(LightningCLI):
    """LightningCLI whose `--ckpt_path` also reads checkpoints written before the class paths
    moved (`training/checkpoints.py`)."""

    def _parse_ckpt_path(self) -> None:
        """Lightning's: a resumed run is rebuilt from its checkpoint's hyperparameters."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        hparams = upgrade_class_paths(ckpt.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object(
                {self.config.subcommand: {"model": hparams}}, self.config
            )
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise


class _ConfigOnly(CLI):
    """Parses and validates only (`parse_config`): no seeding, no objects built."""

    def _set_seed(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def _cli(cls: type[CLI], args: ArgsType, run: bool) -> CLI:
    return cls(
        VideoModule,
        VideoDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: ArgsType = None, run: bool = True) -> LightningCLI:
    """Run the CLI; `args` lets tests drive it in-process, `run=False` only builds the objects."""
    return _cli(CLI, args, run)


def parse_config(args: ArgsType) -> Namespace:
    """The typed, validated config `args` describe (no subcommand), without building anything."""
    return _cli(_ConfigOnly, args, run=False).config


def config_args(*layers: str | Path | dict[str, Any]) -> list[str]:
    """`--config` arguments composing config files and override dicts, later layers winning: a
    dict is one more config (`{"trainer": {"max_steps": 2}}`), typed and checked like a file."""
    out = []
    for layer in layers:
        out += ["--config", json.dumps(layer) if isinstance(layer, dict) else str(layer)]
    return out


def build_model(*configs: str) -> VideoModule:
    """The model a config describes, without running anything (benchmarks, notebooks)."""
    args = [a for c in (configs or ("configs/stage1.yaml",)) for a in ("--config", c)]
    return main(args, run=False).model


if __name__ == "__main__":
    main()
