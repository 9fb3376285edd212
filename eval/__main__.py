"""Offline VBench-style scorer: `python -m eval <folder> [--csv out.csv] [--backends role=spec ...]
[--reference DIR]`.

Scores every .mp4 in the folder (decoded with PyAV at its native fps, chunk by chunk: memory does
not grow with a clip's length or resolution) with the same formulas and drifts as the training
callback, prints the Tab. 1 layout and writes the full CSV. The default backends are those valid
on real footage (`FOOTAGE_SPECS`); `--domain renders` takes the training callback's defaults
(valid on the embedded renderer's videos) instead. The printed legend names each column's backend
and the domain where `benchmarks/metric_validity.py` validated it.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from eval.backends.registry import (
    DEFAULT_SPECS,
    FOOTAGE_SPECS,
    ROLES,
    BackendSet,
    build_backends,
    domain_of,
)
from eval.degenerate import reason_for, spatial_std
from eval.results_table import format_markdown, write_results_table
from eval.video_scores import GLOBAL_METRICS, metric_names, score_keys, score_video_stream

_DEFAULTS = {"footage": FOOTAGE_SPECS, "renders": DEFAULT_SPECS}


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


def legend(backends: BackendSet, domain: str) -> str:
    """Markdown lines naming each metric's backend and where it was validated."""
    names = metric_names(backends)
    lines = [f"Backends (defaults for {domain}; validity: benchmarks/metric_validity.py):"]
    for metric in GLOBAL_METRICS:
        lines.append(f"- {names[metric]}: {domain_of(names[metric].partition('@')[2])}")
    return "\n".join(lines) + "\n\n"


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
    parser.add_argument(
        "--domain", choices=tuple(_DEFAULTS), default="footage",
        help="which defaults: valid on real footage (default) or on the embedded renderer",
    )  # fmt: skip
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
    from datamodules.video_io import probe_video  # PyAV, shared with training
    from eval.video_stream import iter_video_chunks

    specs = _parse_specs(args.backends)
    backends = build_backends(specs, device=args.device, defaults=_DEFAULTS[args.domain])
    keys = score_keys(backends)
    nan = dict.fromkeys(keys, math.nan)
    unreadable: list[str] = []  # the files skipped, reported at the end
    degenerate: list[str] = []

    def score(path: Path, label: str, **kwargs: Any) -> tuple[dict[str, float], _Shape] | None:
        """(scores, the stream's shape), or None after a warning naming a file that cannot be
        read (only probing and decoding errors: an error while scoring is a bug and stops)."""
        shape = _Shape()
        try:
            shape.fps = float(kwargs.get("fps") or args.fps or probe_video(path)[1])
            chunks = shape.track(iter_video_chunks(path, **kwargs))
            return score_video_stream(chunks, backends, shape.fps), shape
        except (_Unreadable, RuntimeError, ValueError, OSError) as err:
            if not isinstance(err, _Unreadable) and shape.frames:
                raise  # decoded fine, so scoring failed: not the file's fault
            warnings.warn(f"skipping unreadable video {path}: {err}", stacklevel=2)
            unreadable.append(label)
            return None

    rows: list[tuple[dict[str, str], dict[str, float]]] = []
    scored: list[dict[str, float]] = []
    longest, size, first_fps = 0, (0, 0), 0.0
    for path in videos:
        if (result := score(path, path.name)) is None:
            continue
        scores, shape = result
        if not rows:
            size, first_fps = shape.size, shape.fps
        if (reason := reason_for(shape.frames, shape.spread, shape.fps)) is not None:
            warnings.warn(f"not scoring {path}: {reason}", stacklevel=1)
            degenerate.append(path.name)
            rows.append(({"video": path.name, "status": reason}, nan))
            continue
        longest = max(longest, shape.frames)
        scored.append(scores)
        rows.append(({"video": path.name, "status": "scored"}, scores))
    if not rows:
        raise SystemExit(f"no readable .mp4 files in {args.folder} ({len(unreadable)} unreadable)")
    rows.append(({"video": "MEAN", "status": f"{len(scored)} scored"}, _mean(scored, keys)))
    if references:
        truth = []
        for path in references:
            label = f"{args.reference.name}/{path.name}"
            cut = {"fps": first_fps, "size": size, "max_frames": longest or None}
            if (result := score(path, label, **cut)) is None:
                continue
            if (reason := reason_for(result[1].frames, result[1].spread, first_fps)) is not None:
                warnings.warn(f"--reference: not scoring {path}: {reason}", stacklevel=1)
                degenerate.append(label)
                continue
            truth.append(result[0])
        if not truth:
            raise SystemExit(f"--reference: no scorable .mp4 files in {args.reference}")
        label = f"ground truth ({len(truth)} videos)"
        rows.append(({"video": label, "status": f"{len(truth)} scored"}, _mean(truth, keys)))

    csv_path = args.csv or args.folder / "scores.csv"
    written = write_results_table(rows, csv_path.parent, stem=csv_path.stem)
    text = legend(backends, args.domain) + format_markdown(rows)
    written.with_suffix(".md").write_text(text)
    sys.stdout.write(text)
    sys.stdout.write(f"\nwrote {written} and {written.with_suffix('.md')}\n")
    if unreadable:
        sys.stdout.write(f"skipped {len(unreadable)} unreadable: {', '.join(unreadable)}\n")
    if degenerate:
        sys.stdout.write(f"not scored, degenerate: {len(degenerate)}: {', '.join(degenerate)}\n")
    return 0


class _Unreadable(Exception):
    """A decoding error met inside the stream, told apart from an error while scoring."""


class _Shape:
    """Records the frame count, size and largest spatial std (`eval/degenerate.py`) of a chunk
    stream as it passes through; a decoding error comes out as `_Unreadable`."""

    def __init__(self) -> None:
        self.frames = 0
        self.size = (0, 0)
        self.spread = 0.0
        self.fps = 0.0

    def track(self, chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        try:
            for chunk in chunks:
                self.frames += chunk.shape[0]
                self.size = (int(chunk.shape[-2]), int(chunk.shape[-1]))
                self.spread = max(self.spread, spatial_std(chunk))
                yield chunk
        except (RuntimeError, ValueError, OSError) as err:
            raise _Unreadable(str(err)) from err


if __name__ == "__main__":
    raise SystemExit(main())
