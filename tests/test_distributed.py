"""Stage 1 under DDP and FSDP2 on 2 CPU ranks (gloo), as subprocesses of `train.py fit`.

The DDP run and the first FSDP2 run are launched together (they are mostly process start-up and
rendezvous, so overlapping them halves the wall time); the FSDP2 run then resumes from its
sharded `last.ckpt` directory. The DDP run is checked against a single-process run of the same
global batches (`tests/helpers/step_probe.py`): the ranks must hold equal weights, and
those weights must be the ones one process gets from the averaged gradient of both ranks' shares.
"""

import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.launch import ROOT, finish, start
from tests.helpers.step_probe import probes, single_process_reference
from train import main

pytestmark = pytest.mark.slow  # CLI runs / multi-process launches


def command(tmp: Path, name: str, strategy: str, *extra: str) -> list[str]:
    return [
        sys.executable, "train.py", "fit",
        "--config", "configs/stage1.yaml",
        "--config", "tests/configs/tiny.yaml",
        "--config", f"configs/strategy/{strategy}.yaml",
        f"--data.init_args.data_dir={tmp / 'data'}",
        f"--trainer.default_root_dir={tmp / name}",
        "--trainer.logger=false",
        "--trainer.limit_val_batches=0",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp / name / 'ckpt'}",
        "--trainer.callbacks.save_last=true",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy.init_args.process_group_backend=gloo",
        "--trainer.callbacks+=tests.helpers.step_probe.StepProbe",
        f"--trainer.callbacks.directory={tmp / name / 'probe'}",
        *extra,
    ]  # fmt: skip


def check_against_single_process(tmp: Path, probe: Path) -> None:
    """DDP = one process stepping on the mean gradient of the ranks' shares of each batch."""
    rank0, rank1 = probes(probe)
    for a, b in zip(rank0, rank1, strict=True):  # one global batch: disjoint shares, all videos
        assert not set(a["names"]) & set(b["names"]) and len(a["names"] + b["names"]) == 4
    end = [torch.load(probe / f"weights_rank{r}_end.pt") for r in range(2)]
    assert end[0].keys() == end[1].keys()
    assert all(torch.equal(end[0][k], end[1][k]) for k in end[0])  # replicas stayed equal
    cli = main([
        "--config", str(ROOT / "configs/stage1.yaml"), "--config", str(ROOT / "tests/configs/tiny.yaml"),
        f"--data.init_args.data_dir={tmp / 'data'}", "--trainer.logger=false",
    ], run=False)  # fmt: skip
    cli.datamodule.setup("fit")
    cli.datamodule.fit_codec(cli.model.codec)  # stage 0, as every rank's setup did (deterministic)

    def rank_loss(module: torch.nn.Module, batch: dict, scale: float) -> None:
        (module.teacher_forcing_loss(batch, module.hparams.prompt_dropout) * scale).backward()

    clip = cli.trainer.gradient_clip_val
    reference = single_process_reference(cli.model, probe, rank_loss, clip=clip)
    start = torch.load(probe / "weights_rank0_start.pt")
    assert any(not torch.equal(start[k], end[0][k]) for k in start)  # the run did train
    for name, value in reference.items():
        torch.testing.assert_close(end[0][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_and_fsdp2_on_two_cpu_ranks(tmp_path: Path) -> None:
    # Separate data_dirs: two jobs rendering one synthetic dataset at once would race.
    ddp = start(
        command(tmp_path, "ddp", "ddp", "--trainer.precision=32-true"), tmp_path / "ddp.log"
    )
    fsdp = start(command(tmp_path / "f", "fsdp2", "fsdp2"), tmp_path / "fsdp.log")
    text = finish(ddp, tmp_path / "ddp.log")
    assert "max_steps=2` reached" in text
    check_against_single_process(tmp_path, tmp_path / "ddp" / "probe")
    text = finish(fsdp, tmp_path / "fsdp.log")
    assert "max_steps=2` reached" in text

    last = tmp_path / "f" / "fsdp2" / "ckpt" / "last.ckpt"
    assert last.is_dir(), "FSDP2 checkpoints are sharded directories"
    assert len(list(last.glob("*.distcp"))) == 2  # one shard file per rank
    resume = start(
        command(tmp_path / "f", "fsdp2", "fsdp2", "--trainer.max_steps=3", f"--ckpt_path={last}"),
        tmp_path / "resume.log",
    )
    text = finish(resume, tmp_path / "resume.log")
    assert "Restored all states" in text and "max_steps=3` reached" in text


def test_fsdp1_fragment_composes_with_stage1(capsys: pytest.CaptureFixture[str]) -> None:
    """Lightning's FSDPStrategy refuses CPU, so its fragment is checked by parsing only (the
    DDP and FSDP2 fragments are run above)."""
    fragment = "fsdp"
    import yaml

    from train import main

    with pytest.raises(SystemExit):
        main([
            "fit", "--config", str(ROOT / "configs/stage1.yaml"),
            "--config", str(ROOT / f"configs/strategy/{fragment}.yaml"), "--print_config",
        ])  # fmt: skip
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["precision"] == "bf16-mixed"
    assert trainer["strategy"]["class_path"].startswith("lightning.pytorch.strategies.")
    assert trainer["strategy"]["init_args"]["auto_wrap_policy"] == [
        "lightning_modules.networks.dit.DiTBlock"
    ]


def test_every_parameter_gets_a_gradient_when_no_video_needs_memory() -> None:
    """A batch whose videos all sit at segment 0 has nothing to remember; its memory parameters
    must still take part (with zero gradient): data-parallel ranks reduce the same gradients, and
    one rank without them left the other waiting (the demo config on 2 CPU ranks at batch 4 hung
    under DDP and under FSDP2)."""
    from tests.helpers.tiny import perturb, tiny_batch, tiny_module, tiny_pack

    module = tiny_module(semantic_pack=tiny_pack())
    perturb(module)
    grads = {}
    for lengths in ((1, 1, 1), (3, 3, 3)):
        module.zero_grad(set_to_none=True)
        batch = tiny_batch(lengths=lengths)
        generator = torch.Generator().manual_seed(0)
        module.teacher_forcing_loss(batch, generator=generator).backward()
        grads[lengths] = {n: p.grad for n, p in module.named_parameters()}
    assert all(g is not None for g in grads[(1, 1, 1)].values())
    # psi's first update (Memorize's blocks, Squeeze) took part and changed nothing; psi_0's
    # init (text projection, pooled image) is used by every segment and learns.
    update = [n for n in grads[(1, 1, 1)] if ".memorize.norm1." in n or ".squeeze." in n]
    assert update and all(not grads[(1, 1, 1)][n].any() for n in update)
    assert all(grads[(3, 3, 3)][n].any() for n in update if n.endswith("weight"))
