"""Metric validity table: every metric@backend x degradation -> mean change and PASS / FAIL, on the
embedded renderer's videos and on real imagery.

    python -m benchmarks.metric_validity [--json out.json] [--sizes 32 64] [--renders 3]
        [--frames 16] [--photos 5] [--photo-size 192 256] [--videos DIR] [--extra role=spec ...]

Domains (one column each):
- renders: clean videos of the embedded renderer (`datamodules/synthetic.py: render_video`, seeds
  500, 501, ...) at each `--sizes`;
- photos: scikit-image's bundled photographs panned and zoomed into clips (`eval/real_clips.py`;
  skipped, saying why, when scikit-image is not installed);
- `--videos DIR`: every .mp4 in DIR (real recorded clips), decoded at `--fps`, resized and
  centre-cropped to `--photo-size`, first `--frames` frames.

Every backend of both default sets (`DEFAULT_SPECS`, the training callbacks' defaults for renders;
`FOOTAGE_SPECS`, `python -m eval`'s defaults for real footage) and each `--extra` backend (default:
the earlier defaults `imaging=laplacian`, `flow=opencv_dis`) is judged alone on its role's rows in
every domain (`eval/validity.py`). Cells: the degraded videos' mean minus the baseline's mean per
strength (for `zero`, `one`, `near_zero` rows the degraded mean itself). The `default` column says
in which domain the row's backend is the default. Deterministic: no timing, no sampling.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from datamodules.synthetic import render_video
from eval.backends.registry import (
    DEFAULT_SPECS,
    FOOTAGE_SPECS,
    ROLES,
    UNAVAILABLE,
    build_backends,
)
from eval.real_clips import load_clip_folder, photo_clips, skimage_available
from eval.validity import run_checks

DEFAULT_EXTRAS = ("imaging=laplacian", "flow=opencv_dis")
SEED = 500
_DEFAULT_OF = {"renders": "renders", "real": "footage"}  # domain kind -> its default set


def _only(role: str, spec: str) -> dict[str, str]:
    """Backend specs with every role but `role` unavailable (only its rows are judged)."""
    return {r: (spec if r == role else UNAVAILABLE) for r in ROLES}


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        role, sep, spec = item.partition("=")
        if not sep or role not in ROLES:
            raise SystemExit(f"{flag} expects role=spec with role in {ROLES}, got {item!r}")
        pairs.append((role, spec))
    return pairs


def judged_backends(extras: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(role, spec) of every default backend of both domains, then the extras, without repeats."""
    out: list[tuple[str, str]] = []
    for role in ROLES:
        for spec in (DEFAULT_SPECS[role], FOOTAGE_SPECS[role]):
            if spec != UNAVAILABLE and (role, spec) not in out:
                out.append((role, spec))
    out += [pair for pair in extras if pair not in out]
    return out


def default_in(role: str, spec: str) -> str:
    """Which default set holds (role, spec): renders, footage, both or '-'."""
    where = [
        d for d, s in (("renders", DEFAULT_SPECS), ("footage", FOOTAGE_SPECS)) if s[role] == spec
    ]
    return "both" if len(where) == 2 else (where[0] if where else "-")


def _cell(row: dict[str, object]) -> str:
    values = row["values"]
    if row["expect"] in ("down", "up"):
        base = row["baseline_value"]
        return " ".join(f"{v - base:+.3f}" for v in values)  # type: ignore[union-attr]
    return " ".join(f"{v:.3f}" for v in values)  # type: ignore[union-attr]


def format_table(results: dict[str, list[dict[str, object]]], kinds: dict[str, str]) -> str:
    """Markdown: metric@backend | degradation | expect | default | one column per domain | pass
    per kind of domain (renders / real)."""
    domains = list(results)
    kind_names = list(dict.fromkeys(kinds[d] for d in domains))
    heads = ["metric@backend", "degradation (strengths)", "expect", "default", *domains]
    heads += [f"pass ({k})" for k in kind_names]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for i, row in enumerate(results[domains[0]]):
        strengths = ", ".join(f"{s:g}" for s in row["strengths"])  # type: ignore[union-attr]
        cells = [str(row["metric"]), f"{row['degradation']} ({strengths})", str(row["expect"])]
        cells += [str(row["default"])] + [_cell(results[d][i]) for d in domains]
        for kind in kind_names:
            ok = all(results[d][i]["pass"] for d in domains if kinds[d] == kind)
            cells.append("PASS" if ok else "**FAIL**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the validity table; optionally write it (and every mean) as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--sizes", type=int, nargs="*", default=[32, 64])
    parser.add_argument("--renders", type=int, default=3, help="rendered videos per size (>= 2)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--photos", type=int, default=5, help="photograph clips (0: none)")
    parser.add_argument("--photo-size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--videos", type=Path, default=None, help="folder of real .mp4 clips")
    parser.add_argument(
        "--extra", nargs="*", default=list(DEFAULT_EXTRAS), metavar="ROLE=SPEC",
        help="non-default backends to judge on their role's rows",
    )  # fmt: skip
    args = parser.parse_args(argv)
    size = tuple(args.photo_size)

    domains: dict[str, tuple[str, list[torch.Tensor]]] = {}
    for side in args.sizes:
        videos = [render_video(SEED + i, args.frames, (side, side))[0] for i in range(args.renders)]
        domains[f"renders {side}x{side}"] = ("renders", videos)
    if args.photos > 0 and not skimage_available():
        print("photos skipped: scikit-image is not installed (pip install 'memorypack[eval]')")
    elif args.photos > 0:
        clips = photo_clips(args.photos, args.frames, size)
        domains[f"photos {size[0]}x{size[1]}"] = ("real", clips)
    if args.videos is not None:
        clips = load_clip_folder(args.videos, args.frames, size, args.fps)
        domains[f"{args.videos.name} {size[0]}x{size[1]}"] = ("real", clips)
    if not domains:
        raise SystemExit("nothing to judge: give --sizes, --photos or --videos")

    judged = judged_backends(_pairs(args.extra, "--extra"))
    start = time.perf_counter()
    results: dict[str, list[dict[str, object]]] = {}
    for label, (_, videos) in domains.items():
        results[label] = []
        for role, spec in judged:
            for row in run_checks(videos, build_backends(_only(role, spec)), args.fps):
                results[label].append({"default": default_in(role, spec), **row})
    seconds = time.perf_counter() - start

    kinds = {label: kind for label, (kind, _) in domains.items()}
    print(
        "defaults: renders = DEFAULT_SPECS (training callbacks), footage = FOOTAGE_SPECS (python -m eval)"
    )
    print(format_table(results, kinds))
    rows = results[next(iter(results))]
    for kind in dict.fromkeys(kinds.values()):
        labels = [d for d in results if kinds[d] == kind]
        own = [i for i, r in enumerate(rows) if r["default"] in ("both", _DEFAULT_OF[kind])]
        passed = sum(all(results[d][i]["pass"] for d in labels) for i in own)
        print(f"{kind}: {passed}/{len(own)} rows of its default backends pass")
    print(f"{seconds:.0f} s on {torch.get_num_threads()} threads")
    if args.json is not None:
        payload = {
            "judged": [f"{r}={s}" for r, s in judged],
            "config": {k: str(v) for k, v in vars(args).items() if k != "json"} | {"seed": SEED},
            "kinds": kinds,
            "rows": results,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
