"""Drift by rollout depth for stage-2 histories: does Direct Forcing reduce the error that builds
up over long rollouts (paper Sec. 3.2), beside teacher-forced and student history?

    python -m benchmarks.drift_by_history \
        --run teacher=runs/t0/last.ckpt,runs/t1/last.ckpt,runs/t2/last.ckpt \
        --run direct=runs/d0/last.ckpt,runs/d1/last.ckpt,runs/d2/last.ckpt \
        [--run student=...] [--videos 16] [--depth 16] [--seed 0] [--json out.json] \
        [--plot margin.png]

A run is a label and its checkpoints, one per seed (the stage-1 checkpoint itself is a valid run:
the model before stage 2). Every checkpoint rolls out the same `--videos` held-out videos from
their first true segment for `--depth` segments with the same noise
(`eval.generation_quality.rollout_quality`), and samples each depth once more from the TRUE
history: the same model without exposure to its own samples, the floor drift is measured from.

Per run and depth, mean +- std over its seeds: the rollout's PSNR margin over the static copy of
the last true frame (`margin`), the true-history sample's margin (`true`), token-grid edge energy
and verified-flow share as ratios to the truth's. A depth whose video (1 + depth segments) is
longer than the longest training video of the checkpoint's data is extrapolation, marked with
a dagger, and averaged apart (`summary`). The last table is each run's margin minus the first
run's, paired by seed index (runs started from the same stage-1 checkpoint with the same seed),
with the std of the paired differences: the figure the issue's target reads. `--plot` draws the
margin by depth, one line per run with its seed spread, the training length marked.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.generation_quality import held_out, load_model, long_held_out
from eval.generation_quality import rollout_quality
from experiments.report import mean_std
from lightning_modules.loading import read_checkpoint

DAGGER = "\u2020"


def parse_run(text: str) -> tuple[str, list[str]]:
    """'label=a.ckpt,b.ckpt' -> ('label', ['a.ckpt', 'b.ckpt'])."""
    label, sep, paths = text.partition("=")
    ckpts = [p for p in paths.split(",") if p]
    if not sep or not label or not ckpts:
        raise argparse.ArgumentTypeError(f"--run {text!r}: expected LABEL=CKPT[,CKPT...]")
    return label, ckpts


def longest_training_video(checkpoint: dict[str, Any]) -> int:
    """Segments of the longest training video (the datamodule's `max_segments`)."""
    hp = checkpoint.get("datamodule_hyper_parameters") or {}
    if "max_segments" not in hp:
        raise ValueError("the checkpoint holds no datamodule max_segments (train via train.py)")
    return int(hp["max_segments"])


def per_depth(r: dict[str, Any]) -> dict[str, list[float]]:
    """One checkpoint's rollout figures by depth, as margins and ratios to the truth."""
    static = r["static_by_depth"]
    return {
        "margin": [g - s for g, s in zip(r["psnr_by_depth"], static, strict=True)],
        "true": [g - s for g, s in zip(r["true_history_by_depth"], static, strict=True)],
        "edge": [
            g / t
            for g, t in zip(r["grid_edge_by_depth"], r["grid_edge_by_depth_truth"], strict=True)
        ],  # fmt: skip
        "flow": [
            g / t if t else float("nan")
            for g, t in zip(r["flow_share_by_depth"], r["flow_share_by_depth_truth"], strict=True)
        ],  # fmt: skip
        "psnr": list(r["psnr_by_depth"]),
        "static": list(static),
    }


def measure(
    runs: list[tuple[str, list[str]]], videos: int, depth: int, seed: int, data_dir: str | None
) -> dict[str, Any]:
    """Roll out every checkpoint on the same held-out videos; figures per run, seed and depth."""
    first = read_checkpoint(runs[0][1][0])
    longest = longest_training_video(first)
    _, frames, dm = held_out(first, 1, data_dir)
    examples = long_held_out(dm, videos, 1 + depth, seed)
    out: dict[str, Any] = {"videos": len(examples), "depth": depth, "seed": seed,
                           "longest_training_segments": longest, "runs": {}}  # fmt: skip
    for label, ckpts in runs:
        seeds = []
        for path in ckpts:
            model = load_model(read_checkpoint(path), trained=True)
            r = rollout_quality(model, examples, frames, depth, seed=seed, true_history=True)
            seeds.append({"checkpoint": path, **per_depth(r)})
        out["runs"][label] = seeds
    return out


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    """Means over seeds by depth, averages inside / beyond the training length, and each run's
    margin minus the first run's (paired by seed index)."""
    depth, longest = out["depth"], out["longest_training_segments"]
    inside = [d for d in range(depth) if d >= 1 and 1 + (d + 1) <= longest]  # depths 2..
    beyond = [d for d in range(depth) if 1 + (d + 1) > longest]
    runs = out["runs"]
    base_label = next(iter(runs))
    summary: dict[str, Any] = {}
    for label, seeds in runs.items():
        row: dict[str, Any] = {}
        for key in ("margin", "true", "edge", "flow"):
            row[key] = [mean_std([s[key][d] for s in seeds]) for d in range(depth)]
        for name, ds in (("inside", inside), ("beyond", beyond)):
            if ds:
                row[f"margin_{name}"] = mean_std(
                    [statistics.fmean(s["margin"][d] for d in ds) for s in seeds]
                )
        pairs = list(zip(seeds, runs[base_label], strict=False))
        row["vs_" + base_label] = [
            mean_std([a["margin"][d] - b["margin"][d] for a, b in pairs]) for d in range(depth)
        ]
        summary[label] = row
    return {"inside_depths": [d + 1 for d in inside], "beyond_depths": [d + 1 for d in beyond],
            "base": base_label, "by_run": summary}  # fmt: skip


def print_tables(out: dict[str, Any], summary: dict[str, Any]) -> None:
    depth, longest, base = out["depth"], out["longest_training_segments"], summary["base"]
    runs = summary["by_run"]
    fmt = lambda ms: f"{ms[0]:+.2f}+-{ms[1]:.2f}"  # noqa: E731
    mark = lambda d: f"{d + 1}{DAGGER if 1 + (d + 1) > longest else ''}"  # noqa: E731
    print(f"drift by depth: {out['videos']} held-out videos from 1 true segment, seeds per run "
          + ", ".join(f"{k} {len(v)}" for k, v in out["runs"].items())
          + f"; {DAGGER} = longer than the longest training video ({longest} segments)")  # fmt: skip
    tables = (
        ("PSNR margin over the static copy (rollout | the same model from the true history), dB",
         lambda r, d: f"{fmt(r['margin'][d]):>15} |{fmt(r['true'][d]):>12}"),
        ("token-grid edge energy / truth's, verified-flow share / truth's (rollout)",
         lambda r, d: f"{r['edge'][d][0]:>15.2f} |{r['flow'][d][0]:>12.3f}"),
    )  # fmt: skip
    for title, cell in tables:
        print(f"\n{title}\n{'depth':<7}" + "".join(f"{k:>29}" for k in runs))
        for d in range(depth):
            print(f"{mark(d):<7}" + "".join(cell(r, d) for r in runs.values()))
    print(f"\nmargin minus {base}'s, paired by seed (mean +- std of the differences), dB")
    print(f"{'depth':<7}" + "".join(f"{k:>16}" for k in runs if k != base))
    for d in range(depth):
        cells = "".join(f"{fmt(r['vs_' + base][d]):>16}" for k, r in runs.items() if k != base)
        print(f"{mark(d):<7}{cells}")
    for name in ("inside", "beyond"):
        depths = summary[f"{name}_depths"]
        if depths:
            cells = ", ".join(f"{k} {fmt(r[f'margin_{name}'])}" for k, r in runs.items())
            print(f"mean margin over depths {depths[0]}-{depths[-1]} ({name}): {cells}")


def plot(out: dict[str, Any], path: Path) -> None:
    """Rollout margin over the static copy by depth, one line per run (band: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    depths = list(range(1, out["depth"] + 1))
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, row in out["summary"]["by_run"].items():
        mean = [m for m, _ in row["margin"]]
        std = [s for _, s in row["margin"]]
        ax.plot(depths, mean, marker="o", ms=3, label=label)
        ax.fill_between(depths, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], alpha=0.2)  # fmt: skip
    longest = out["longest_training_segments"]
    ax.axvline(longest - 0.5, color="grey", ls="--", lw=1)  # depth d sits in segment 1 + d
    ax.text(longest - 0.4, ax.get_ylim()[1], " longer than training", color="grey", va="top")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="rollout depth (segments generated)", ylabel="PSNR over static copy (dB)",
           title=f"drift by history, {out['videos']} held-out videos")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=parse_run, action="append", required=True,
                        help="LABEL=CKPT[,CKPT...]: one checkpoint per seed; the first run is "
                             "the one the others are compared with")  # fmt: skip
    parser.add_argument("--videos", type=int, default=16, help="held-out videos per checkpoint")
    parser.add_argument("--depth", type=int, default=16, help="generated segments per rollout")
    parser.add_argument("--seed", type=int, default=0, help="noise and held-out video seed")
    parser.add_argument("--data_dir", default=None, help="default: the first checkpoint's")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--plot", type=Path, default=None, help="draw the margin by depth here")
    args = parser.parse_args(argv)
    labels = [label for label, _ in args.run]
    if len(set(labels)) != len(labels):
        parser.error(f"run labels must differ, got {labels}")
    out = measure(args.run, args.videos, args.depth, args.seed, args.data_dir)
    out["summary"] = summarise(out)
    print_tables(out, out["summary"])
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.plot:
        plot(out, args.plot)
    return out


if __name__ == "__main__":
    main()
