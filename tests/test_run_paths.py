"""Where a run's files are (`callbacks/run_paths.py`), what `--ckpt_path` does to command-line
model flags (`training/ckpt_path.py`), and the study's progress bar."""

import json
import os
from pathlib import Path
from typing import Any

import pytest
from jsonargparse import Namespace

from callbacks.run_paths import fresh_dir, latest_checkpoint, logger_version, run_label
from lightning_modules.training.ckpt_path import model_flags, reconcile


def touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def test_last_is_the_newest_last_ckpt_of_the_runs_a_config_writes(tmp_path: Path) -> None:
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": str(tmp_path / "runs"), "name": "stage1"}}  # fmt: skip
    trainer: dict[str, Any] = {"logger": logger, "callbacks": []}
    with pytest.raises(FileNotFoundError, match="no last.ckpt in .*Start a new run"):
        latest_checkpoint(trainer)
    runs = tmp_path / "runs" / "stage1"
    touch(runs / "version_0/checkpoints/last.ckpt", 1000)
    newest = touch(runs / "version_1/checkpoints/last.ckpt", 3000)
    touch(runs / "version_2/checkpoints/last.ckpt", 2000)  # a higher version, older file
    touch(runs / "version_3/events.out", 4000)  # a run that wrote no checkpoint
    assert latest_checkpoint(trainer) == newest and logger_version(newest) == 1
    # A checkpoint callback's dirpath wins; without a logger: <default_root_dir>/checkpoints.
    dirpath = {"class_path": "callbacks.checkpointing.ResumableCheckpoint",
               "init_args": {"dirpath": str(tmp_path / "mine")}}  # fmt: skip
    mine = touch(tmp_path / "mine/last.ckpt", 10)
    assert latest_checkpoint({**trainer, "callbacks": [dirpath]}) == mine
    root = touch(tmp_path / "root/checkpoints/last.ckpt", 10)
    assert latest_checkpoint({"logger": False, "default_root_dir": str(tmp_path / "root")}) == root


def test_output_names_never_collide(tmp_path: Path) -> None:
    assert run_label("runs/stage1/version_3/checkpoints/last.ckpt") == "stage1_version_3"
    assert run_label("study/model.ckpt") == "model" and run_label(None) == "untrained"
    first = fresh_dir(tmp_path / "step_0000100")
    assert first == tmp_path / "step_0000100"
    touch(first / "a.mp4", 1)
    assert fresh_dir(first) == tmp_path / "step_0000100-2"
    touch(tmp_path / "step_0000100-2" / "a.mp4", 1)
    assert fresh_dir(first) == tmp_path / "step_0000100-3"


def model(**init_args: Any) -> Namespace:
    return Namespace(class_path="lightning_modules.video_module.VideoModule",
                     init_args=Namespace(**init_args))  # fmt: skip


def test_command_line_model_flags_apply_or_are_refused() -> None:
    flags = model_flags(["fit", "--model.init_args.sample_steps=4", "--model.cfg_scale", "2",
                         "--data.init_args.batch_size=2"])  # fmt: skip
    assert [f.path for f in flags] == [("sample_steps",), ("cfg_scale",)]
    given = model(sample_steps=4, cfg_scale=2.0, lr=0.1)
    restored = model(sample_steps=8, cfg_scale=2.0, lr=0.001)
    assert reconcile(flags, given, restored, "x.ckpt") == [(("sample_steps",), 4)]
    refused = model_flags(["--model.init_args.lr=0.1", "--model.dit.width=64"])
    given.init_args.dit = Namespace(class_path="VideoDiT", init_args=Namespace(width=64))
    restored.init_args.dit = Namespace(class_path="VideoDiT", init_args=Namespace(width=128))
    with pytest.raises(ValueError, match=r"x.ckpt: .*--model.init_args.lr=0.1 \(the checkpoint "
                       r"has 0.001\); --model.dit.width=64 \(the checkpoint has 128\)"):  # fmt: skip
        reconcile(refused, given, restored, "x.ckpt")
    restored.init_args.lr = 0.1  # the same value as the checkpoint's: nothing to refuse
    assert reconcile(model_flags(["--model.init_args.lr=0.1"]), given, restored, "x.ckpt") == []


def test_the_study_shows_a_progress_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One tick per finished run (the runs themselves stubbed out)."""
    from experiments import reproduce

    ticks: list[int] = []

    class Bar:
        def __init__(self, total: int, **kwargs: Any) -> None:
            self.total = total

        def update(self, n: int) -> None:
            ticks.append(n)

        def set_postfix_str(self, text: str) -> None:
            pass

        def close(self) -> None:
            assert sum(ticks) == self.total

    def run_variant(out: Path, budget: Any, variant: Any, seed: int, keep: bool) -> None:
        directory = reproduce.run_dir(out, variant.name, seed)
        directory.mkdir(parents=True)
        (directory / reproduce.RESULT).write_text(json.dumps({}))

    monkeypatch.setattr(reproduce, "tqdm", Bar)
    monkeypatch.setattr(reproduce, "run_variant", run_variant)
    monkeypatch.setattr("experiments.report.write_report", lambda *args: None)
    summary = reproduce.main(["--out", str(tmp_path), "--budget", "smoke", "--variants", "f1"])
    assert len(summary["ran"]) == len(ticks) == 2  # f1, two seeds
