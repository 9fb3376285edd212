"""Entry point: `python train.py {fit,validate,test,predict} --config configs/<stage>.yaml`.

A plain LightningCLI: every class is chosen in YAML with class_path/init_args, configs compose
(`--config a.yaml --config b.yaml`), and `--print_config` prints a config that can be fed back.
"""

import json
import sys
from copy import deepcopy
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from callbacks.config_logger import ConfigLogger
from callbacks.run_paths import latest_checkpoint, logger_version
from datamodules.video_datamodule import VideoDataModule
from lightning_modules.training.checkpoints import read_checkpoint, upgrade_class_paths
from lightning_modules.training.ckpt_path import assign, model_flags, reconcile
from lightning_modules.training.stage1 import Stage1ChangedError, stage1_changed
from lightning_modules.video_module import VideoModule


class CLI(LightningCLI):
    """LightningCLI whose `--ckpt_path`:

    - accepts `last`: the newest `last.ckpt` of the runs this config writes, which a resumed
      `fit` continues in its own version directory (`callbacks/run_paths.py`);
    - reads checkpoints written before the class paths moved (`training/checkpoints.py`), and
      names the file when it cannot be read;
    - applies the command-line model flags that can change on top of a checkpoint (the sampler)
      and refuses the others (`training/ckpt_path.py`), instead of silently ignoring them.
    """

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        self._argv = list(args) if isinstance(args, (list, tuple)) else sys.argv[1:]
        if isinstance(args, (dict, Namespace)):
            self._argv = []
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Lightning's: a run under `--ckpt_path` is rebuilt from its checkpoint's hyperparameters."""
        if not self.config.get("subcommand"):
            return
        sub = self.config.subcommand
        ckpt_path = self.config[sub].get("ckpt_path")
        if ckpt_path == "last":
            ckpt_path = str(self._resolve_last(sub))
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = upgrade_class_paths(read_checkpoint(ckpt_path).get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        given = deepcopy(self.config[sub].get("model"))
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise
        restored = self.config[sub]["model"]
        for path, value in reconcile(model_flags(self._argv), given, restored, ckpt_path):
            assign(restored, path, value)
            rank_zero_info(f"--ckpt_path {ckpt_path}: model {'.'.join(path)}={value!r} applies")

    def _resolve_last(self, sub: str) -> Path:
        """`--ckpt_path last` -> the newest last.ckpt of this config's runs; `fit` continues
        that run's version directory (its logs and checkpoints)."""
        trainer = self.config[sub].trainer
        path = latest_checkpoint(trainer.as_dict())
        self.config[sub].ckpt_path = str(path)
        version = logger_version(path)
        logger = trainer.get("logger")
        if sub == "fit" and version is not None and isinstance(logger, Namespace):
            if "save_dir" in (logger.get("init_args") or {}):
                logger.init_args.version = version
        rank_zero_info(f"--ckpt_path last: resuming from {path}")
        return path

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            if (changed := stage1_changed(err)) is None:
                raise
            ckpt = self.config[self.config.subcommand].get("ckpt_path")
            raise Stage1ChangedError(f"{changed} (the stage-2 checkpoint: {ckpt})") from err


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
        save_config_callback=ConfigLogger,
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
