"""ResumableCheckpoint: atomic writes, the last step saved, step checkpoints under manual
optimization, a checkpoint on SIGTERM; unreadable checkpoint files named in the error."""

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from callbacks.checkpointing import ResumableCheckpoint
from lightning_modules.training.checkpoints import CheckpointReadError, read_checkpoint
from tests.helpers.linear import Linear, loader, trainer


def steps_of(directory: Path) -> dict[str, int]:
    return {p.name: torch.load(p, weights_only=False)["global_step"] for p in directory.iterdir()}


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    """The disk fills during the step-2 save: last.ckpt is still step 1's, whole, and no
    partial file is left under any name."""
    ckpt = ResumableCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=1, save_last=True)
    run = trainer(tmp_path, [ckpt], max_steps=2)
    io, saves = run.strategy.checkpoint_io, []
    original = io.save_checkpoint

    def full_disk(checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        saves.append(path)
        if checkpoint["global_step"] < 2:
            return original(checkpoint, path, storage_options)
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")  # what a full disk leaves
        raise OSError(28, "No space left on device")

    io.save_checkpoint = full_disk
    with pytest.raises(OSError, match="No space left"):
        run.fit(Linear(), loader())
    assert steps_of(tmp_path / "c") == {"epoch=0-step=1.ckpt": 1, "last.ckpt": 1}
    assert all(Path(p).name.endswith(".partial") for p in saves)  # written aside, then renamed


def test_the_last_step_is_saved_when_the_schedule_misses_it(tmp_path: Path) -> None:
    ckpt = ResumableCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_last=True)
    trainer(tmp_path, [ckpt], max_steps=4).fit(Linear(), loader())
    saved = steps_of(tmp_path)
    assert saved.pop("last.ckpt") == 4 and list(saved.values()) == [4]  # the step-3 file replaced


def test_a_finished_run_continues_mid_epoch(tmp_path: Path) -> None:
    """A run stopped by max_steps inside an epoch saves its last step so that a longer run
    continues that epoch (saved at `on_train_end`, the epoch would count as complete)."""
    ckpt = ResumableCheckpoint(dirpath=tmp_path, every_n_train_steps=100, save_last=True)
    trainer(tmp_path, [ckpt], max_steps=2).fit(Linear(), loader(4))
    longer = trainer(tmp_path, [ResumableCheckpoint(dirpath=tmp_path)], max_steps=4)
    longer.fit(Linear(), loader(4), ckpt_path=tmp_path / "last.ckpt")
    assert longer.global_step == 4


def test_step_checkpoints_under_manual_optimization(tmp_path: Path) -> None:
    """Two optimizer steps per batch: global steps 2, 4, 6, 8 cross every multiple of 3 (3 at
    step 4, 6 at step 6); Lightning's manual branch would save only at exact multiples (step 6)
    and warn each time."""
    seen: list[int] = []

    class Record(L.Callback):
        def on_save_checkpoint(self, trainer: L.Trainer, *args: Any) -> None:
            seen.append(trainer.global_step)

    ckpt = ResumableCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_last=True)
    trainer(tmp_path, [Record(), ckpt], max_steps=8).fit(Linear(manual=True), loader())
    assert sorted(set(seen)) == [4, 6, 8]
    assert steps_of(tmp_path)["last.ckpt"] == 8


class Terminate(L.Callback):
    """Sends this process SIGTERM after optimizer step `at` (a pre-emption)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_writes_a_checkpoint_before_exiting(tmp_path: Path) -> None:
    ckpt = ResumableCheckpoint(dirpath=tmp_path, every_n_train_steps=100, save_last=True)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit):  # Lightning's SIGTERMException
            trainer(tmp_path, [Terminate(at=2), ckpt], max_steps=4).fit(Linear(), loader())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert steps_of(tmp_path) == {"epoch=0-step=2.ckpt": 2, "last.ckpt": 2}


def test_an_unreadable_checkpoint_is_named(tmp_path: Path) -> None:
    path = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    for size in (0, 100, path.stat().st_size // 2):
        cut = tmp_path / f"cut{size}.ckpt"
        cut.write_bytes(path.read_bytes()[:size])
        with pytest.raises(CheckpointReadError, match=rf"cannot read checkpoint '{cut}' \({size}"):
            read_checkpoint(cut)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.ckpt")
