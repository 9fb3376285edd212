"""`python -m eval <folder>`: scores every mp4, prints the Tab. 1 table, writes CSV + Markdown."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from datamodules.video_io import write_video
from eval.__main__ import main


def _write(path: Path, noisy_tail: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=gen) * 255, size=32)
    frames = base.expand(14, -1, -1, -1).clone()
    if noisy_tail:
        frames[-2:] = torch.rand(2, 3, 32, 32, generator=gen) * 255
    write_video(path, frames.clamp(0, 255).to(torch.uint8), fps=8)


def test_cli_scores_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "a_static.mp4", noisy_tail=False)
    _write(tmp_path / "b_noisy.mp4", noisy_tail=True)
    out = tmp_path / "out" / "scores.csv"
    assert main([str(tmp_path), "--csv", str(out), "--backends", "subject=pixel"]) == 0
    printed = capsys.readouterr().out
    assert "subject_consistency@pixel" in printed and "Δ background_consistency@pixel" in printed
    rows = list(csv.DictReader(out.open()))
    assert [r["video"] for r in rows] == ["a_static.mp4", "b_noisy.mp4", "MEAN"]
    drift = "drift/background_consistency@pixel"
    assert float(rows[0][drift]) < 0.05 < 0.5 < float(rows[1][drift])
    assert float(rows[2][drift]) == pytest.approx(
        (float(rows[0][drift]) + float(rows[1][drift])) / 2
    )
    assert out.with_suffix(".md").is_file()


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no .mp4"):
        main([str(tmp_path)])
    with pytest.raises(SystemExit, match="role=spec"):
        _write(tmp_path / "a.mp4", noisy_tail=False)
        main([str(tmp_path), "--backends", "colour=pixel"])
