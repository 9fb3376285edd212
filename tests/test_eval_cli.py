"""`python -m eval <folder>`: scores every mp4, prints the Tab. 1 table, writes CSV + Markdown;
skips unreadable files with a warning and flags degenerate videos instead of scoring them."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from datamodules.video_io import read_video, write_video
from eval.__main__ import main
from eval.backends.registry import build_backends
from eval.degenerate import degenerate_reason
from eval.video_scores import score_video

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_cli_defaults_are_the_real_footage_set_and_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "a.mp4", noisy_tail=True)
    assert main([str(tmp_path), "--backends", "subject=pixel"]) == 0
    printed = capsys.readouterr().out
    # Real footage: NIQE with the natural-image model, no aesthetic proxy (NaN, named).
    assert "imaging_quality@niqe:" in printed and "real footage only" in printed
    assert "aesthetic_quality@unavailable" in printed and "| n/a |" in printed
    assert "(defaults for footage" in (tmp_path / "scores.md").read_text()
    assert main([str(tmp_path), "--domain", "renders", "--backends", "subject=pixel"]) == 0
    printed = capsys.readouterr().out
    assert "imaging_quality@niqe_synthetic:" in printed and "renders only" in printed
    assert "aesthetic_quality@colorfulness" in printed


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no .mp4"):
        main([str(tmp_path)])
    with pytest.raises(SystemExit, match="role=spec"):
        _write(tmp_path / "a.mp4", noisy_tail=False)
        main([str(tmp_path), "--backends", "colour=pixel"])


def test_cli_reference_adds_ground_truth_row(tmp_path: Path) -> None:
    generated, source = tmp_path / "generated", tmp_path / "source"
    _write(generated / "a.mp4", noisy_tail=True)  # 14 frames at 32x32
    gen = torch.Generator().manual_seed(1)
    for name, frames in (("long.mp4", 20), ("short.mp4", 10)):
        base = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=gen), size=48)
        video = torch.stack([base[0].roll(t, dims=-1) for t in range(frames)])  # 48x48: resized
        write_video(source / name, (video * 255).to(torch.uint8), fps=8)
    out = tmp_path / "scores.csv"
    specs = ["subject=pixel", "imaging=laplacian"]
    assert (
        main([str(generated), "--csv", str(out), "--reference", str(source), "--backends", *specs])
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert [r["video"] for r in rows] == ["a.mp4", "MEAN", "ground truth (2 videos)"]
    # The row is the source videos' scores, decoded at 8 fps, resized to 32x32, cut to 14 frames.
    backends = build_backends(dict(s.split("=") for s in specs))
    truth = [
        score_video(read_video(source / n, fps=8, size=(32, 32))[:14], backends, fps=8)
        for n in ("long.mp4", "short.mp4")
    ]
    for key in (
        "subject_consistency@pixel",
        "imaging_quality@laplacian",
        "drift/imaging_quality@laplacian",
    ):
        assert float(rows[2][key]) == pytest.approx((truth[0][key] + truth[1][key]) / 2, rel=1e-9)
    assert float(rows[2]["subject_consistency@pixel"]) != pytest.approx(
        float(rows[1]["subject_consistency@pixel"])
    )
    with pytest.raises(SystemExit, match="no .mp4"):
        main([str(generated), "--reference", str(tmp_path / "empty")])


def test_cli_skips_unreadable_files_and_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "a.mp4", noisy_tail=True)
    (tmp_path / "b_garbage.mp4").write_bytes(b"not a video at all")
    whole = (tmp_path / "a.mp4").read_bytes()
    (tmp_path / "c_truncated.mp4").write_bytes(whole[: len(whole) // 3])
    out = tmp_path / "out" / "scores.csv"
    with pytest.warns(UserWarning, match="skipping unreadable video .*b_garbage.mp4"):
        assert main([str(tmp_path), "--csv", str(out), "--backends", "subject=pixel"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["video"] for r in rows] == ["a.mp4", "MEAN"]
    printed = capsys.readouterr().out
    assert "skipped 2 unreadable: b_garbage.mp4, c_truncated.mp4" in printed
    (tmp_path / "a.mp4").unlink()
    with pytest.warns(UserWarning), pytest.raises(SystemExit, match="no readable .mp4"):
        main([str(tmp_path), "--csv", str(out)])


def test_degenerate_reason_names_short_and_flat_clips() -> None:
    gen = torch.Generator().manual_seed(0)
    texture = (torch.rand(1, 3, 32, 32, generator=gen) * 255).to(torch.uint8)
    assert degenerate_reason(texture.expand(8, -1, -1, -1), fps=8) is None  # a still: 0% is right
    assert "too short: 2 frames" in str(degenerate_reason(texture.expand(2, -1, -1, -1), fps=8))
    # At 24 fps flow is measured every 3rd frame: 7 frames give 3 samples, 6 give 2.
    assert degenerate_reason(texture.expand(7, -1, -1, -1), fps=24) is None
    assert "too short: 6 frames" in str(degenerate_reason(texture.expand(6, -1, -1, -1), fps=24))
    flat = torch.full((8, 3, 32, 32), 120, dtype=torch.uint8)
    assert str(degenerate_reason(flat, fps=8)).startswith("flat")
    flat[3, :, :16] = 200  # one textured frame: scored
    assert degenerate_reason(flat, fps=8) is None


def test_cli_flags_degenerate_videos_instead_of_scoring_them(tmp_path: Path) -> None:
    _write(tmp_path / "a.mp4", noisy_tail=True)
    write_video(tmp_path / "b_flat.mp4", torch.full((14, 3, 32, 32), 90, dtype=torch.uint8), fps=8)
    texture = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 255
    write_video(tmp_path / "c_two.mp4", texture.to(torch.uint8).expand(2, -1, -1, -1), fps=8)
    out = tmp_path / "scores.csv"
    with pytest.warns(UserWarning, match="not scoring .*b_flat.mp4: flat"):
        assert main([str(tmp_path), "--csv", str(out), "--backends", "subject=pixel"]) == 0
    rows = {r["video"]: r for r in csv.DictReader(out.open())}
    assert rows["a.mp4"]["status"] == "scored" and rows["MEAN"]["status"] == "1 scored"
    assert rows["b_flat.mp4"]["status"].startswith("flat")
    assert rows["c_two.mp4"]["status"].startswith("too short: 2 frames")
    for key in ("background_consistency@pixel", "dynamic_degree@opencv_dis_verified"):
        assert math.isnan(float(rows["b_flat.mp4"][key])) and math.isnan(
            float(rows["c_two.mp4"][key])
        )
        assert float(rows["MEAN"][key]) == pytest.approx(float(rows["a.mp4"][key]))
