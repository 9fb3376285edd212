"""Entry point: `python train.py {fit,validate,test,predict} --config configs/<stage>.yaml`.

A plain LightningCLI: every class is chosen in YAML with class_path/init_args, configs compose
(`--config a.yaml --config b.yaml`), and `--print_config` prints a config that can be fed back.
"""

from lightning.pytorch.cli import LightningCLI

from datamodules.video_datamodule import VideoDataModule
from lightning_modules.video_module import VideoModule


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run the CLI; `args` lets tests drive it in-process, `run=False` only builds the objects."""
    return LightningCLI(
        VideoModule,
        VideoDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def build_model(*configs: str) -> VideoModule:
    """The model a config describes, without running anything (benchmarks, notebooks)."""
    args = [a for c in (configs or ("configs/stage1.yaml",)) for a in ("--config", c)]
    return main(args, run=False).model


if __name__ == "__main__":
    main()
