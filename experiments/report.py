"""The study's report: DIR/results.json, DIR/results.md (Tab. 2 layout) and the figures.

Reads every finished run (DIR/runs/<variant>/seed<s>/result.json) and reduces over seeds: mean
and sample standard deviation (ddof 1; 0 for a single seed). NaN values (e.g. the gates-shut probe
of a model without SemanticPack) are left out of both; a metric no seed has is NaN ("n/a").

results.json: `{"variants": {NAME: {"metrics": {key: mean}, "seeds": N}}, "std": {NAME: {key:
std}}, "labels", "extrapolation", "ground_truth", "budget", "settings", "code_versions",
"run_seconds"}`. Metric keys: `<length>/<metric>@<backend>` (Tab. 1, `drift/`, `start/`, `end/`),
`probe_<key>` (eval/probe.py), `reference_psnr`, `next_segment_psnr`, ... (generation_quality),
`val_loss` (teacher-forced, held out).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from eval.results_table import tab1_columns
from experiments.budgets import VARIANTS, Budget

__all__ = ["aggregate", "load_results", "write_report"]

DRIFT_CURVES = ("subject_consistency", "background_consistency", "imaging_quality",
                "aesthetic_quality")  # fmt: skip
_HEADS = {
    "imaging_quality": "Imaging ↑", "aesthetic_quality": "Aesthetic ↑",
    "dynamic_degree": "Dynamic ↑", "motion_smoothness": "Smoothness ↑",
    "background_consistency": "Background ↑", "subject_consistency": "Subject ↑",
}  # fmt: skip


def load_results(out: Path) -> dict[str, list[dict[str, Any]]]:
    """variant -> its finished runs' result.json contents, in seed order."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for variant in VARIANTS:
        paths = sorted((out / "runs" / variant.name).glob("seed*/result.json"))
        found = [json.loads(p.read_text()) for p in paths]
        if found:
            runs[variant.name] = sorted(found, key=lambda r: r["seed"])
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std of the finite values (NaN, NaN when none; std 0 for one)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return math.fsum(finite) / len(finite), std


def aggregate(runs: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, std) over seeds of every metric key any run has."""
    keys = sorted({k for r in runs for k in r["metrics"]})
    mean, std = {}, {}
    for key in keys:
        mean[key], std[key] = mean_std([r["metrics"].get(key, math.nan) for r in runs])
    return mean, std


def _curves(runs: list[dict[str, Any]], length: str) -> dict[str, tuple[list[float], list[float]]]:
    """metric -> (mean, std) per segment over seeds."""
    out = {}
    for metric in runs[0]["curves"].get(length, {}):
        per_seed = [r["curves"][length][metric] for r in runs]
        columns = list(zip(*per_seed, strict=True))
        stats = [mean_std(list(c)) for c in columns]
        out[metric] = ([m for m, _ in stats], [s for _, s in stats])
    return out


def _cell(mean: float, std: float, percent: bool = True) -> str:
    if math.isnan(mean):
        return "n/a"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    return f"{scale * mean:.2f} ± {scale * std:.2f}{unit}"


def write_report(out: Path, name: str, budget: Budget) -> dict[str, Any] | None:
    """Write results.json, results.md and the figures from the runs finished so far."""
    runs = load_results(out)
    if not runs:
        return None
    labels = {v.name: v.label for v in VARIANTS}
    lengths = dict(budget.lengths)
    first = next(iter(runs.values()))[0]
    truth = first["ground_truth"]
    trained = {n: max(r["trained_segments"] for r in rs) for n, rs in runs.items()}
    extrapolation = {n: {k: s > trained[n] for k, s in lengths.items()} for n in runs}
    means, stds = {}, {}
    for variant, rs in runs.items():
        means[variant], stds[variant] = aggregate(rs)
    report = {
        "variants": {n: {"metrics": means[n], "seeds": len(rs)} for n, rs in runs.items()},
        "std": stds,
        "labels": {n: labels[n] for n in runs},
        "extrapolation": extrapolation,
        "ground_truth": truth,
        "budget": name,
        "settings": budget.as_dict(),
        "code_versions": sorted({r["code_version"] for rs in runs.values() for r in rs}),
        "run_seconds": math.fsum(
            r["train_seconds"] + r["eval_seconds"] for rs in runs.values() for r in rs
        ),
    }
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    figures = [_plot_drift(out, runs, lengths, trained), _plot_probe(out, report)]
    (out / "results.md").write_text(_markdown(report, runs, lengths, trained, figures))
    return report


def _markdown(
    report: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
    lengths: dict[str, int],
    trained: dict[str, int],
    figures: list[str],
) -> str:
    variants, std = report["variants"], report["std"]
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    steps = {n: rs[0]["steps"] for n, rs in runs.items()}
    lines = [
        f"# Miniature Tab. 1-2 study (budget `{report['budget']}`)",
        "",
        f"Code version {', '.join(report['code_versions'])}; seeds {seeds} (each seed trains and "
        f"samples every variant); cells are mean ± std over seeds. Runs took "
        f"{report['run_seconds'] / 60:.1f} min in all (training + evaluation, this machine). "
        f"Optimizer steps: "
        + ", ".join(f"{n} {s}" for n, s in steps.items())
        + f". Longest training video: {max(trained.values())} segments (without the probe "
        f"videos: {max(r.get('trained_segments_without_probes', 0) for rs in runs.values() for r in rs)}); "
        "rows marked † evaluate longer rollouts than any training video (extrapolation).",
    ]
    for length, segments in lengths.items():
        keys = [f"{length}/{k}" for k in tab1_columns(list(report["ground_truth"][length]))]
        heads = [_HEADS.get(k.split("/")[-1].split("@")[0]) for k in keys[:6]]
        heads += ["Δ" + _HEADS[k.split("/")[-1].split("@")[0]][:-2] + " ↓" for k in keys[6:]]
        lines += ["", f"## Tab. 2 layout: {length} rollouts ({segments} segments)", ""]
        lines += ["| Method | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for n, entry in variants.items():
            mark = " †" if report["extrapolation"][n][length] else ""
            cells = [
                _cell(entry["metrics"].get(k, math.nan), std[n].get(k, math.nan)) for k in keys
            ]
            lines.append(f"| {report['labels'][n]}{mark} | " + " | ".join(cells) + " |")
        gt = report["ground_truth"][length]
        shorter = gt.get("fraction_shorter", 0.0)
        label = "ground truth" + (f" ({100 * shorter:.0f}% of videos shorter)" if shorter else "")
        cells = [_cell(gt.get(k.split("/", 1)[1], math.nan), 0.0) for k in keys]
        lines.append(f"| {label} | " + " | ".join(c.replace(" ± 0.00", "") for c in cells) + " |")
        lines += ["", "Backends: " + ", ".join(k.split("/", 1)[1] for k in keys[:6]) + "."]
    lines += [
        "",
        "## Memory probe (eval/probe.py)",
        "",
        "Landmark colour after the shutter reopens: accuracy of its nearest colour (memory) and "
        "its RGB distance / 255 (colour error); 'gates shut' is the same model with SemanticPack's "
        "read-in gates forced to 0.",
        "",
        "| Method | memory ↑ | memory, gates shut | colour error ↓ | colour error, gates shut |",
        "|---|---|---|---|---|",
    ]
    for n, entry in variants.items():
        m, s = entry["metrics"], std[n]
        keys = ("probe_memory", "probe_memory_gates_shut", "probe_colour_error",
                "probe_colour_error_gates_shut")  # fmt: skip
        cells = [_cell(m.get(k, math.nan), s.get(k, math.nan), "error" not in k) for k in keys]
        lines.append(f"| {report['labels'][n]} | " + " | ".join(cells) + " |")
    any_run = next(iter(variants.values()))["metrics"]
    for label, memory, error in (
        ("chance (random colour)", "probe_chance", "probe_colour_error_chance"),
        ("oracle (ground truth)", "probe_oracle", "probe_colour_error_oracle"),
        ("oracle through the codec", "probe_oracle_codec", None),
    ):
        error_cell = "" if error is None else f"{any_run.get(error, math.nan):.3f}"
        lines.append(f"| {label} | {100 * any_run.get(memory, math.nan):.1f}% | | {error_cell} | |")
    lines += [
        "",
        "## Generation quality (held-out, against ground truth; eval/generation_quality.py)",
        "",
        "| Method | reference PSNR (dB) | next-segment PSNR (dB) | copy-last PSNR (dB) | "
        "val loss |",
        "|---|---|---|---|---|",
    ]
    for n, entry in variants.items():
        m, s = entry["metrics"], std[n]
        keys = ("reference_psnr", "next_segment_psnr", "copy_last_psnr", "val_loss")
        cells = [_cell(m.get(k, math.nan), s.get(k, math.nan), percent=False) for k in keys]
        lines.append(f"| {report['labels'][n]} | " + " | ".join(cells) + " |")
    lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _plot_drift(
    out: Path,
    runs: dict[str, list[dict[str, Any]]],
    lengths: dict[str, int],
    trained: dict[str, int],
) -> str:
    """drift_curves.png: per-segment metric along the longest rollout, one line per variant."""
    plt = _pyplot()
    length = max(lengths, key=lengths.get)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, metric in zip(axes.flat, DRIFT_CURVES, strict=True):
        for variant, rs in runs.items():
            curves = _curves(rs, length)
            key = next((k for k in curves if k.startswith(metric + "@")), None)
            if key is None:
                continue
            mean, std = curves[key]
            x = list(range(len(mean)))
            (line,) = ax.plot(x, mean, label=variant, marker=".")
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.12)
            ax.set_title(key)
        boundary = min(trained.values())
        if boundary < lengths[length]:
            ax.axvline(boundary - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("segment")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        f"Per-segment metrics along {lengths[length]}-segment rollouts (mean ± std over seeds; "
        "dotted: longest training video)"
    )
    fig.tight_layout()
    fig.savefig(out / "drift_curves.png", dpi=90)
    plt.close(fig)
    return "drift_curves.png"


def _plot_probe(out: Path, report: dict[str, Any]) -> str:
    """memory_probe.png: memory accuracy per variant (and gates shut), chance and oracle lines."""
    plt = _pyplot()
    names = list(report["variants"])
    fig, ax = plt.subplots(figsize=(10, 4))
    for offset, key, hatch in ((-0.2, "probe_memory", ""), (0.2, "probe_memory_gates_shut", "//")):
        means = [report["variants"][n]["metrics"].get(key, math.nan) for n in names]
        stds = [report["std"][n].get(key, math.nan) for n in names]
        xs = [i + offset for i in range(len(names))]
        label = "memory" if not hatch else "memory, gates shut"
        ax.bar(xs, [0 if math.isnan(m) else m for m in means], 0.38, yerr=stds, hatch=hatch,
               label=label, capsize=3, alpha=0.8)  # fmt: skip
    metrics = report["variants"][names[0]]["metrics"]
    ax.axhline(metrics["probe_chance"], color="red", linestyle="--", label="chance")
    ax.axhline(metrics["probe_oracle"], color="green", label="oracle (ground truth)")
    codec = metrics.get("probe_oracle_codec", math.nan)
    if not math.isnan(codec):
        ax.axhline(codec, color="green", linestyle=":", label="oracle through the codec")
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("landmark colour accuracy")
    ax.set_title("Memory probe: colour of the landmark when it returns (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "memory_probe.png", dpi=90)
    plt.close(fig)
    return "memory_probe.png"
