"""Offline VBench-style scorer: `python -m eval <folder> [--csv out.csv] [--backends role=spec ...]
[--reference DIR]`.

Scores every .mp4 in the folder (decoded with PyAV at its native fps) with the same formulas,
drifts and backends as the training callback, prints the Tab. 1 layout and writes the full CSV.
Example: `python -m eval runs/rollouts --backends subject=dino_vitb16:/ckpt/dino_vitbase16_pretrain.pth`.

`--reference DIR` adds a `ground truth` row: the mean scores of DIR's .mp4s (the source videos the
generated ones imitate), each decoded at the scored videos' fps, resized and centre-cropped to their
size and cut to the longest scored video's frame count (a shorter one contributes all it has), so
both rows are measured alike.

A file that cannot be opened or decoded is skipped with a warning naming it (training skips such
files too) and counted at the end; a degenerate video (too short for the dynamic-degree rule, or
flat frames: `eval/degenerate.py`) gets a row that says so, with no scores, and stays out of the
MEAN. The same holds for the reference videos.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import torch

from eval.backends.registry import ROLES, build_backends
from eval.degenerate import degenerate_reason
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


def _mean(scores: list[dict[str, float]], keys: list[str]) -> dict[str, float]:
    """Per-key mean over videos, ignoring NaN (a metric no video has is NaN)."""
    out = {}
    for key in keys:
        values = [s[key] for s in scores if not math.isnan(s[key])]
        out[key] = math.fsum(values) / len(values) if values else math.nan
    return out


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
    parser.add_argument(
        "--reference", type=Path, default=None,
        help="folder of source .mp4s scored into a 'ground truth' row",
    )  # fmt: skip
    args = parser.parse_args(argv)

    if not args.folder.is_dir():
        raise SystemExit(f"not a folder: {args.folder}")
    videos = sorted(args.folder.glob("*.mp4"))
    if not videos:
        raise SystemExit(f"no .mp4 files in {args.folder}")
    references = [] if args.reference is None else sorted(args.reference.glob("*.mp4"))
    if args.reference is not None and not references:
        raise SystemExit(f"--reference: no .mp4 files in {args.reference}")
    from datamodules.video_io import probe_video, read_video  # PyAV decode shared with training

    unreadable: list[str] = []  # names of the files skipped, reported at the end
    degenerate: list[str] = []

    def decode(path: Path, label: str, **kwargs: object) -> tuple[torch.Tensor, float] | None:
        """(frames, fps), or None after a warning naming the file that cannot be read."""
        try:
            fps = args.fps or kwargs.get("fps") or probe_video(path)[1]
            return read_video(path, **kwargs), float(fps)  # type: ignore[arg-type]
        except (RuntimeError, ValueError, OSError) as err:
            warnings.warn(f"skipping unreadable video {path}: {err}", stacklevel=2)
            unreadable.append(label)
            return None

    backends = build_backends(_parse_specs(args.backends), device=args.device)
    keys = score_keys(backends)
    nan = dict.fromkeys(keys, math.nan)
    rows: list[tuple[dict[str, str], dict[str, float]]] = []
    scored: list[dict[str, float]] = []
    longest, size, first_fps = 0, (0, 0), 0.0
    for path in videos:
        if (decoded := decode(path, path.name)) is None:
            continue
        frames, fps = decoded
        if not scored and not degenerate:
            size, first_fps = (frames.shape[-2], frames.shape[-1]), fps
        if (reason := degenerate_reason(frames, fps)) is not None:
            warnings.warn(f"not scoring {path}: {reason}", stacklevel=1)
            degenerate.append(path.name)
            rows.append(({"video": path.name, "status": reason}, nan))
            continue
        longest = max(longest, frames.shape[0])
        scored.append(score_video(frames, backends, fps=fps))
        rows.append(({"video": path.name, "status": "scored"}, scored[-1]))
    if not rows:
        raise SystemExit(f"no readable .mp4 files in {args.folder} ({len(unreadable)} unreadable)")
    rows.append(({"video": "MEAN", "status": f"{len(scored)} scored"}, _mean(scored, keys)))
    if references:
        truth = []
        for path in references:
            label = f"{args.reference.name}/{path.name}"
            if (decoded := decode(path, label, fps=first_fps, size=size)) is None:
                continue
            frames = decoded[0][: longest or None]
            if (reason := degenerate_reason(frames, first_fps)) is not None:
                warnings.warn(f"--reference: not scoring {path}: {reason}", stacklevel=1)
                degenerate.append(label)
                continue
            truth.append(score_video(frames, backends, first_fps))
        if not truth:
            raise SystemExit(f"--reference: no scorable .mp4 files in {args.reference}")
        label = f"ground truth ({len(truth)} videos)"
        rows.append(({"video": label, "status": f"{len(truth)} scored"}, _mean(truth, keys)))

    csv_path = args.csv or args.folder / "scores.csv"
    written = write_results_table(rows, csv_path.parent, stem=csv_path.stem)
    sys.stdout.write(format_markdown(rows))
    sys.stdout.write(f"\nwrote {written} and {written.with_suffix('.md')}\n")
    if unreadable:
        sys.stdout.write(f"skipped {len(unreadable)} unreadable: {', '.join(unreadable)}\n")
    if degenerate:
        sys.stdout.write(f"not scored, degenerate: {len(degenerate)}: {', '.join(degenerate)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
