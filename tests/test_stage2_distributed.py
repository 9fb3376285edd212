"""Stage 2 (Direct Forcing) under DDP and FSDP2 on 2 CPU ranks (gloo), as `train.py` subprocesses.

The stage-1 checkpoint is made once, in-process, through the CLI (single process); both stage-2
runs then start from it, overlapped as in test_distributed.py. Each rank records its batches with
`tests/helpers/step_probe.py`: the curriculum must hand both ranks videos of one length per step (or a
rank would wait in the gradient all-reduce for segments the other never runs), and under DDP
the trainable weights must stay bitwise equal across ranks (the once-per-step reduction ran) and
equal those of a single-process run of the same global batches (`single_process_reference`:
every rank's videos, each with its rank's seed, gradients accumulated over all their segments
and averaged over ranks, clipped, one step per batch).
"""

import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.launch import ROOT, finish, start
from tests.helpers.step_probe import probes, single_process_reference
from train import main

pytestmark = pytest.mark.slow  # CLI runs / multi-process launches

STEPS = 4  # grow_every=1: steps 1-3 run 2-segment videos, step 4 a 3-segment one


def stage1_checkpoint(tmp: Path) -> Path:
    cli = main([
        "fit", "--config", str(ROOT / "configs/stage1.yaml"),
        "--config", str(ROOT / "tests/configs/tiny.yaml"),
        f"--data.init_args.data_dir={tmp / 'data'}", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp / 'stage1'}", "--trainer.limit_val_batches=0",
        "--trainer.max_steps=1",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp / 'stage1' / 'ckpt'}",
        "--trainer.callbacks.save_last=true",
    ])  # fmt: skip
    return Path(cli.trainer.checkpoint_callback.last_model_path)


def command(tmp: Path, name: str, strategy: str, ckpt: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "train.py", "fit",
        "--config", "configs/stage2_direct_forcing.yaml",
        "--config", "tests/configs/tiny_stage2.yaml",
        "--config", f"configs/strategy/{strategy}.yaml",  # before the CPU overrides below
        f"--data.init_args.data_dir={tmp / name / 'data'}",
        f"--model.init_args.init_checkpoint={ckpt}",
        "--data.init_args.curriculum.init_args.grow_every=1",  # lengths mix within the run
        f"--trainer.default_root_dir={tmp / name}",
        "--trainer.logger=false",
        "--trainer.limit_val_batches=0",
        "--trainer.limit_train_batches=null",
        f"--trainer.max_steps={STEPS}",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp / name / 'ckpt'}",
        "--trainer.callbacks.save_last=true",
        "--trainer.callbacks+=tests.helpers.step_probe.StepProbe",
        f"--trainer.callbacks.directory={tmp / name / 'probe'}",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy.init_args.process_group_backend=gloo",
        *extra,
    ]  # fmt: skip


def check_against_single_process(tmp: Path, ckpt: Path, probe: Path) -> None:
    end = [torch.load(probe / f"weights_rank{r}_end.pt") for r in range(2)]
    assert all(torch.equal(end[0][k], end[1][k]) for k in end[0])  # replicas stayed equal
    cli = main([
        "--config", str(ROOT / "configs/stage2_direct_forcing.yaml"),
        "--config", str(ROOT / "tests/configs/tiny_stage2.yaml"),
        f"--data.init_args.data_dir={tmp / 'ddp' / 'data'}",
        f"--model.init_args.init_checkpoint={ckpt}", "--trainer.logger=false",
    ], run=False)  # fmt: skip

    def rank_loss(module: torch.nn.Module, batch: dict, scale: float) -> None:
        for segment in module.video_segments(batch):  # the whole video: one step per batch
            (segment.loss / segment.window * scale).backward()

    module = cli.model
    reference = single_process_reference(
        module, probe, rank_loss, clip=module.hparams.gradient_clip_val
    )
    assert reference.keys() == end[0].keys() and all(k.startswith("dit.head.") for k in reference)
    for name, value in reference.items():
        torch.testing.assert_close(end[0][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_stage2_ddp_and_fsdp2_on_two_cpu_ranks(tmp_path: Path) -> None:
    ckpt = stage1_checkpoint(tmp_path)
    assert ckpt.is_file()
    ddp = start(
        command(tmp_path, "ddp", "ddp", ckpt, "--trainer.precision=32-true"), tmp_path / "ddp.log"
    )
    fsdp = start(command(tmp_path, "fsdp2", "fsdp2", ckpt), tmp_path / "fsdp2.log")
    for name, proc in (("ddp", ddp), ("fsdp2", fsdp)):
        text = finish(proc, tmp_path / f"{name}.log")
        assert f"max_steps={STEPS}` reached" in text
        rank0, rank1 = probes(tmp_path / name / "probe")
        assert [r["step"] for r in rank0] == list(range(1, STEPS + 1))  # one step per batch
        assert [r["step"] for r in rank1] == [r["step"] for r in rank0]
        for a, b in zip(rank0, rank1, strict=True):
            # One length per global batch: every video on both ranks has the same segment count.
            assert len(set(a["segments"] + b["segments"])) == 1, (a, b)
        assert len({r["segments"][0] for r in rank0}) > 1  # the curriculum grew mid-run
        if name == "ddp":  # replicated weights: the reduced gradients kept the ranks in step
            assert [r["digest"] for r in rank0] == [r["digest"] for r in rank1]
            assert len({r["digest"] for r in rank0}) == STEPS  # and the weights did train
            check_against_single_process(tmp_path, ckpt, tmp_path / "ddp" / "probe")
    assert (tmp_path / "fsdp2" / "ckpt" / "last.ckpt").is_dir()  # sharded checkpoint
