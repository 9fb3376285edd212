"""Metric validity table: every metric@backend x degradation -> mean change and PASS / FAIL.

    python benchmarks/metric_validity.py [--json out.json] [--sizes 32 64] [--videos 3]
        [--frames 16] [--backends role=spec ...] [--extra role=spec ...]

Clean videos come from the embedded renderer (`datamodules/synthetic.py: render_video`, seeds
500, 501, ...) at each size; `eval/validity.py` applies the degradations at three strengths and
judges each check (README "Evaluation" explains the expectations). The default backends are
judged first (with `--backends` overrides; the previous defaults, the README's "before" table:
`--backends imaging=laplacian flow=opencv_dis --extra`), then each `--extra` backend on the rows
of its role (default: the previous defaults `imaging=laplacian` and `flow=opencv_dis`, and NIQE
with the natural-image model `imaging=niqe`).
Cells show the degraded videos' mean minus the baseline's mean per strength (for `zero`, `one`,
`near_zero` rows: the degraded mean itself). Deterministic: no timing, no sampling.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from datamodules.synthetic import render_video  # noqa: E402
from eval.backends.registry import DEFAULT_SPECS, ROLES, build_backends  # noqa: E402
from eval.validity import run_checks  # noqa: E402

DEFAULT_EXTRAS = ("imaging=laplacian", "flow=opencv_dis", "imaging=niqe")
SEED = 500


def _only(role: str, spec: str) -> dict[str, str]:
    """Backend specs with every role but `role` unavailable (only its rows are judged)."""
    return {r: (spec if r == role else "unavailable") for r in ROLES}


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        role, sep, spec = item.partition("=")
        if not sep or role not in ROLES:
            raise SystemExit(f"{flag} expects role=spec with role in {ROLES}, got {item!r}")
        pairs.append((role, spec))
    return pairs


def _cell(row: dict[str, object]) -> str:
    values = row["values"]
    if row["expect"] in ("down", "up"):
        base = row["baseline_value"]
        return " ".join(f"{v - base:+.3f}" for v in values)  # type: ignore[union-attr]
    return " ".join(f"{v:.3f}" for v in values)  # type: ignore[union-attr]


def format_table(results: dict[int, list[dict[str, object]]]) -> str:
    """Markdown: metric@backend | degradation (strengths) | expect | one column per size | pass."""
    sizes = sorted(results)
    heads = ["metric@backend", "degradation (strengths)", "expect"]
    heads += [f"{s}x{s}" for s in sizes] + ["pass"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for i, row in enumerate(results[sizes[0]]):
        strengths = ", ".join(f"{s:g}" for s in row["strengths"])  # type: ignore[union-attr]
        cells = [str(row["metric"]), f"{row['degradation']} ({strengths})", str(row["expect"])]
        cells += [_cell(results[s][i]) for s in sizes]
        ok = all(results[s][i]["pass"] for s in sizes)
        lines.append("| " + " | ".join(cells + ["PASS" if ok else "**FAIL**"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the validity table; optionally write it (and every mean) as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--videos", type=int, default=3, help="clean videos per size (>= 2)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument(
        "--backends", nargs="*", default=[], metavar="ROLE=SPEC",
        help="override the default backends judged in the first set",
    )  # fmt: skip
    parser.add_argument(
        "--extra", nargs="*", default=list(DEFAULT_EXTRAS), metavar="ROLE=SPEC",
        help="non-default backends to judge on their role's rows",
    )  # fmt: skip
    args = parser.parse_args(argv)
    overrides, extras = _pairs(args.backends, "--backends"), _pairs(args.extra, "--extra")
    judged = DEFAULT_SPECS | dict(overrides)

    start = time.perf_counter()
    sets = [("defaults", build_backends(judged))]
    sets += [(f"{role}={spec}", build_backends(_only(role, spec))) for role, spec in extras]
    results: dict[int, list[dict[str, object]]] = {}
    for size in args.sizes:
        videos = [render_video(SEED + i, args.frames, (size, size))[0] for i in range(args.videos)]
        results[size] = []
        for label, backends in sets:
            for row in run_checks(videos, backends, args.fps):
                results[size].append({"set": label, **row})
    seconds = time.perf_counter() - start

    print(f"judged set: {', '.join(f'{r}={s}' for r, s in judged.items())}")
    print(format_table(results))
    total = len(results[args.sizes[0]])
    passed = sum(all(results[s][i]["pass"] for s in results) for i in range(total))
    print(
        f"{passed}/{total} rows pass at every size; {seconds:.0f} s on {torch.get_num_threads()} threads"
    )
    if args.json is not None:
        payload = {
            "judged_set": judged,
            "extras": [f"{r}={s}" for r, s in extras],
            "config": {k: v for k, v in vars(args).items() if k != "json"} | {"seed": SEED},
            "rows": {str(size): rows for size, rows in results.items()},
            "passed_rows": passed,
            "total_rows": total,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
