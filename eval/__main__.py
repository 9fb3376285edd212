"""Offline VBench-style scorer: `python -m eval <folder> [--csv out.csv] [--backends role=spec ...]`.

Scores every .mp4 in the folder (decoded with PyAV at its native fps) with the same formulas,
drifts and backends as the training callback, prints the Tab. 1 layout and writes the full CSV.
Example: `python -m eval runs/rollouts --backends subject=dino_vitb16:/ckpt/dino_vitbase16_pretrain.pth`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from eval.backends.registry import ROLES, build_backends
from eval.results_table import format_markdown, write_results_table
from eval.video_scores import score_keys, score_video


def _parse_specs(items: list[str]) -> dict[str, str]:
    specs = {}
    for item in items:
        role, sep, spec = item.partition("=")
        if not sep or role not in ROLES:
            raise SystemExit(f"--backends expects role=spec with role in {ROLES}, got {item!r}")
        specs[role] = spec
    return specs


def main(argv: list[str] | None = None) -> int:
    """Score the folder; return the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder containing .mp4 files")
    parser.add_argument(
        "--csv", type=Path, default=None, help="CSV path (default folder/scores.csv)"
    )
    parser.add_argument(
        "--backends",
        nargs="*",
        default=[],
        metavar="ROLE=SPEC",
        help=f"override backends; roles: {', '.join(ROLES)}",
    )
    parser.add_argument("--fps", type=float, default=None, help="override the container fps")
    parser.add_argument("--device", default=None, help="torch device for network backends")
    args = parser.parse_args(argv)

    if not args.folder.is_dir():
        raise SystemExit(f"not a folder: {args.folder}")
    videos = sorted(args.folder.glob("*.mp4"))
    if not videos:
        raise SystemExit(f"no .mp4 files in {args.folder}")
    from datamodules.video_io import probe_video, read_video  # PyAV decode shared with training

    backends = build_backends(_parse_specs(args.backends), device=args.device)
    keys = score_keys(backends)
    rows = []
    for path in videos:
        fps = args.fps or probe_video(path)[1]
        scores = score_video(read_video(path), backends, fps=fps)
        rows.append(({"video": path.name}, scores))
    mean = {k: math.fsum(s[k] for _, s in rows if not math.isnan(s[k])) for k in keys}
    counts = {k: sum(not math.isnan(s[k]) for _, s in rows) for k in keys}
    rows.append(
        ({"video": "MEAN"}, {k: mean[k] / counts[k] if counts[k] else math.nan for k in keys})
    )

    csv_path = args.csv or args.folder / "scores.csv"
    written = write_results_table(rows, csv_path.parent, stem=csv_path.stem)
    sys.stdout.write(format_markdown(rows))
    sys.stdout.write(f"\nwrote {written} and {written.with_suffix('.md')}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
