"""Stage 2 starts from stage 1's checkpoint: architecture and weights from it (also through the
CLI and from a checkpoint written before the class paths moved), clear errors otherwise."""

import math
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.generation_quality import main as generation_quality_main
from lightning_modules.direct_forcing import DirectForcingModule
from lightning_modules.loading import load_module
from lightning_modules.networks.dit import VideoDiT
from lightning_modules.training.checkpoints import CheckpointReadError
from lightning_modules.training.checkpoints import main as convert
from lightning_modules.training.stage1 import Stage1ChangedError, architecture_of
from tests.helpers.tiny import (
    one_block_parts,
    perturb,
    save_checkpoint,
    tiny_dit,
    tiny_module,
    tiny_pack,
    tiny_stage2,
)
from train import main

ROOT = Path(__file__).resolve().parents[1]


def test_missing_or_mismatched_stage1_checkpoint_fails_clearly(
    stage1_ckpt: Path, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist: stage 2 starts from stage-1"):
        tiny_stage2(tmp_path / "nope.ckpt")
    state = torch.load(stage1_ckpt, weights_only=False)["state_dict"]
    torch.save({"state_dict": state}, tmp_path / "bare.ckpt")  # weights only, no hyperparameters
    with pytest.raises(ValueError, match="no saved hyperparameters .* pass dit"):
        tiny_stage2(tmp_path / "bare.ckpt")
    assert (
        tiny_stage2(tmp_path / "bare.ckpt", **one_block_parts()).dit.width == 32
    )  # explicit: used as given
    with pytest.raises(ValueError, match=r"shape mismatches .*dit.x_embed.weight: checkpoint"):
        tiny_stage2(tmp_path / "bare.ckpt", **one_block_parts(width=16))
    state["dit.extra"] = torch.zeros(1)
    del state["dit.head.linear.bias"]
    torch.save({"state_dict": state}, tmp_path / "keys.ckpt")
    with pytest.raises(ValueError, match=r"missing keys \(1\): dit.head.linear.bias; unexpected"):
        tiny_stage2(tmp_path / "keys.ckpt", **one_block_parts())
    with pytest.raises(ValueError, match="trainable pattern 'dit.nothing.\\*' matches no"):
        tiny_stage2(stage1_ckpt, trainable=["dit.nothing.*"])


def test_stage2_checkpoint_is_self_contained_and_refuses_a_changed_stage1(
    stage1_ckpt: Path, tmp_path: Path
) -> None:
    """The stage-2 checkpoint records stage 1's architecture and the file's sha256: it loads
    without the stage-1 file, refuses a different file at that path (naming both files), and a
    truncated stage-1 file is named in the error."""
    stage1 = tmp_path / "stage1.ckpt"
    shutil.copy(stage1_ckpt, stage1)
    module = tiny_stage2(stage1)
    perturb(module.dit.head)  # stage-2 training moved the head
    ckpt2 = save_checkpoint(module, tmp_path / "stage2.ckpt")
    moved = stage1.rename(tmp_path / "moved.ckpt")
    loaded = load_module(ckpt2)  # no stage-1 file: architecture and weights from ckpt2
    assert type(loaded) is DirectForcingModule
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    other = torch.load(moved, weights_only=False)
    other["state_dict"]["dit.head.linear.weight"] += 1  # another stage-1 model, same shapes
    torch.save(other, stage1)
    with pytest.raises(Stage1ChangedError, match=rf"'{stage1}' changed .* checkpoint: {ckpt2}"):
        load_module(ckpt2)
    shutil.copy(moved, stage1)  # the original file back: accepted
    assert torch.equal(load_module(ckpt2).dit.head.linear.weight, module.dit.head.linear.weight)
    stage1.write_bytes(moved.read_bytes()[:1000])  # truncated: named, not a raw torch error
    with pytest.raises(CheckpointReadError, match=f"cannot read checkpoint '{stage1}'"):
        tiny_stage2(stage1)


def test_architecture_comes_from_the_checkpoint_and_overrides_must_match(stage1_ckpt: Path) -> None:
    """A stage-1 run outside the CLI saves its modules in the hyperparameters: stage 2 rebuilds
    them; an explicit part equal to stage 1's is accepted, a different one is refused, also where
    the weights' shapes agree (RoPE layout and base)."""
    stage1 = torch.load(stage1_ckpt, weights_only=False)["hyper_parameters"]
    module = tiny_stage2(stage1_ckpt)
    for part in ("dit", "codec", "text_encoder"):
        assert architecture_of(getattr(module, part)) == architecture_of(stage1[part]), part
    assert module.semantic_pack is None  # stage 1 had none
    same = one_block_parts()
    assert tiny_stage2(stage1_ckpt, **same).dit is same["dit"]  # equal to stage 1's: used as given
    relative = one_block_parts()["dit"]
    relative.rope_layout = "relative"
    with pytest.raises(ValueError, match="dit.rope_layout: given 'relative', stage 1 'absolute'"):
        tiny_stage2(stage1_ckpt, dit=relative)
    theta = tiny_dit(depth=1, rope_theta=500.0)
    with pytest.raises(ValueError, match="dit.rope.inv_freq_t: given"):
        tiny_stage2(stage1_ckpt, dit=theta)
    pack = tiny_pack()
    with pytest.raises(ValueError, match="semantic_pack: given SemanticPack, stage 1 None"):
        tiny_stage2(stage1_ckpt, semantic_pack=pack)


@pytest.mark.slow
def test_cli_stage2_takes_its_architecture_from_stage1(tmp_path: Path) -> None:
    """The README sequence: stage 1 through the CLI, then stage 2 from its last.ckpt with a config
    that names no architecture; then the stage-2 run resumed with `fit --ckpt_path`."""
    stage2_config = yaml.safe_load((ROOT / "configs/stage2_direct_forcing.yaml").read_text())
    architecture = {"dit", "codec", "text_encoder", "semantic_pack"}
    assert not architecture & set(stage2_config["model"]["init_args"])  # no copy to drift
    run = [
        f"--data.init_args.data_dir={tmp_path / 'data'}", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}", "--trainer.limit_val_batches=0",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_last=true",
    ]  # fmt: skip
    stage1 = main([
        "fit", "--config", str(ROOT / "configs/stage1.yaml"),
        "--config", str(ROOT / "tests/configs/tiny.yaml"), *run, "--trainer.max_steps=1",
        f"--trainer.callbacks.dirpath={tmp_path / 's1'}",
    ])  # fmt: skip
    ckpt1 = stage1.trainer.checkpoint_callback.last_model_path
    assert Path(ckpt1).is_file()
    stage2_args = [
        "--config", str(ROOT / "configs/stage2_direct_forcing.yaml"),
        "--config", str(ROOT / "tests/configs/tiny_stage2.yaml"), *run,
        f"--model.init_args.init_checkpoint={ckpt1}", f"--trainer.callbacks.dirpath={tmp_path / 's2'}",
    ]  # fmt: skip
    cli = main(["fit", *stage2_args, "--trainer.max_steps=1"])
    assert isinstance(cli.model, DirectForcingModule)
    assert cli.trainer.global_step == 1
    for part in architecture:  # stage 1's tiny architecture, not a default or a copy
        assert architecture_of(getattr(cli.model, part)) == architecture_of(
            getattr(stage1.model, part)
        ), part
    assert cli.model.dit.width == 32 and cli.model.semantic_pack.memory_tokens == 4
    metrics = cli.trainer.callback_metrics
    assert {"train/loss", "train/loss_seg_0", "train/trainable_param_norm"} <= set(metrics)
    shortest = min(cli.datamodule.train_set.lengths)  # the curriculum starts at the shortest
    assert metrics["train/curriculum_max_segments"] == shortest
    assert metrics["train/segments"] == shortest
    # A resumed stage-2 run rebuilds the module from its own saved hyperparameters.
    last2 = cli.trainer.checkpoint_callback.last_model_path
    resumed = main(["fit", *stage2_args, "--trainer.max_steps=2", f"--ckpt_path={last2}"])
    assert resumed.trainer.global_step == 2
    # The offline tools read a stage-2 checkpoint as the class that wrote it, also once the
    # stage-1 file is gone (its architecture is in the stage-2 hyperparameters).
    Path(ckpt1).rename(tmp_path / "away.ckpt")
    assert type(load_module(torch.load(last2, weights_only=False))) is DirectForcingModule
    (tmp_path / "away.ckpt").rename(ckpt1)
    quality = generation_quality_main(
        ["--ckpt", last2, "--num_videos", "1", "--no_floor", "--rollout_videos", "0"]
    )
    assert math.isfinite(quality["next_segment_psnr"])
    # An explicit architecture must equal the checkpoint's; a different setting is refused.
    dit = stage1.model.hparams["dit"]
    overrides = {}
    for layout in ("absolute", "relative"):
        override = {"dit": {**dit, "init_args": {**dit["init_args"], "rope_layout": layout}}}
        overrides[layout] = tmp_path / f"{layout}.yaml"
        overrides[layout].write_text(yaml.safe_dump({"model": {"init_args": override}}))
    same = main([*stage2_args, "--config", str(overrides["absolute"])], run=False)
    assert same.model.dit.rope_layout == "absolute"
    with pytest.raises(ValueError, match="dit.rope_layout: given 'relative', stage 1 'absolute'"):
        main([*stage2_args, "--config", str(overrides["relative"])], run=False)


def validation_epochs(trainer: dict, steps_per_epoch: int) -> list[int]:
    """Epochs in which the demo's validations run: every `val_check_interval` steps when it is an
    int and `check_val_every_n_epoch` is null, else at the end of every n-th complete epoch."""
    interval, every = trainer.get("val_check_interval"), trainer.get("check_val_every_n_epoch")
    steps = trainer["max_steps"]
    if every is None:
        return [(s - 1) // steps_per_epoch for s in range(interval, steps + 1, interval)]
    return [e for e in range(steps // steps_per_epoch) if (e + 1) % every == 0]


def test_stage2_config_evaluates_drift_and_memory_during_the_demo() -> None:
    """Stage 2's TensorBoard shows drift like stage 1's: its config has RolloutEvalCallback, and
    the callback fires at a validation the demo reaches (epoch = num_train_videos steps)."""
    config = yaml.safe_load((ROOT / "configs/stage2_direct_forcing.yaml").read_text())
    trainer, data = config["trainer"], config["data"]["init_args"]
    evals = [
        c["init_args"]
        for c in trainer["callbacks"]
        if c["class_path"] == "callbacks.rollout_eval.RolloutEvalCallback"
    ]
    assert len(evals) == 1 and evals[0]["probe_videos"] > 0
    assert max(evals[0]["lengths"].values()) >= 16
    epochs = validation_epochs(trainer, data["num_train_videos"] // data["batch_size"])
    fires = [e for e in epochs if (e + 1) % evals[0]["every_n_epochs"] == 0]
    assert fires, f"no evaluation at the demo's validations (epochs {epochs})"


# What a checkpoint written before `lightning_modules/` had sub-packages names (LightningCLI's
# class_path strings): each must still load (training/checkpoints.py renames them).
OLD_PATHS = {
    "dit": "lightning_modules.dit.VideoDiT",
    "codec": "lightning_modules.codec.PatchPCACodec",
    "text_encoder": "lightning_modules.text_encoder.HashTextEncoder",
    "semantic_pack": "lightning_modules.semantic_pack.SemanticPack",
}


@pytest.mark.slow
def test_checkpoints_from_before_the_move_still_load(tmp_path: Path) -> None:
    """A stage-1 checkpoint with the old class paths loads as the same model in the offline
    tools, as stage 2's init_checkpoint and under `fit --ckpt_path`; the networks of a run outside
    the CLI, pickled under their old module, load too; the converter rewrites a file for good."""
    run = [
        "--config", str(ROOT / "configs/stage1.yaml"),
        "--config", str(ROOT / "tests/configs/tiny.yaml"),
        f"--data.init_args.data_dir={tmp_path / 'data'}", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}", "--trainer.limit_val_batches=0",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_last=true", f"--trainer.callbacks.dirpath={tmp_path / 's1'}",
    ]  # fmt: skip
    stage1 = main(["fit", *run, "--trainer.max_steps=1"])
    ckpt = torch.load(stage1.trainer.checkpoint_callback.last_model_path, weights_only=False)
    for part, old in OLD_PATHS.items():
        assert ckpt["hyper_parameters"][part]["class_path"] != old  # the new layout
        ckpt["hyper_parameters"][part]["class_path"] = old
    old_ckpt = tmp_path / "old.ckpt"
    torch.save(ckpt, old_ckpt)

    loaded = load_module(str(old_ckpt))
    for name, tensor in stage1.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    stage2 = DirectForcingModule(init_checkpoint=str(old_ckpt))
    assert architecture_of(stage2.dit) == architecture_of(stage1.model.dit)
    resumed = main(["fit", *run, "--trainer.max_steps=2", f"--ckpt_path={old_ckpt}"])
    assert resumed.trainer.global_step == 2

    converted = tmp_path / "converted.ckpt"
    convert([str(old_ckpt), str(converted)])
    hparams = torch.load(converted, weights_only=False)["hyper_parameters"]
    assert hparams["dit"]["class_path"] == "lightning_modules.networks.dit.VideoDiT"

    # A run outside the CLI pickles its networks: one pickled as `lightning_modules.dit.VideoDiT`.
    module = tiny_module()
    stub = types.ModuleType("lightning_modules.dit")
    stub.VideoDiT = VideoDiT
    sys.modules[stub.__name__], VideoDiT.__module__ = stub, stub.__name__
    try:
        pickled = save_checkpoint(module, tmp_path / "pickled.ckpt")
    finally:
        del sys.modules[stub.__name__]
        VideoDiT.__module__ = "lightning_modules.networks.dit"
    reloaded = load_module(pickled)
    assert type(reloaded.dit) is VideoDiT  # found at its new path
    assert torch.equal(reloaded.dit.head.linear.weight, module.dit.head.linear.weight)
