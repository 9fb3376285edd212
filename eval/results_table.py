"""Results table laid out like the paper's Tab. 1: six global metrics, then the four drifts.

Rows are (model, length); Markdown shows percentages as the paper does, CSV keeps raw 0..1 values
and every logged key (start/end values and dynamic_fraction too) after the Tab. 1 columns.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from eval.video_scores import DRIFT_METRICS, GLOBAL_METRICS

__all__ = ["format_markdown", "tab1_columns", "write_results_table"]

# Tab. 1: the six global metrics, then the drifts of the four that the paper tracks (the
# continuous dynamic-degree drift is logged but is not a Tab. 1 column).
_GLOBAL = GLOBAL_METRICS
_DRIFTED = tuple(m for m in DRIFT_METRICS if m in GLOBAL_METRICS)

Row = tuple[Mapping[str, str], Mapping[str, float]]  # (labels such as model/length, scores)


def tab1_columns(keys: Sequence[str]) -> list[str]:
    """Score keys in Tab. 1 order: globals `<metric>@<b>` then drifts `drift/<metric>@<b>`."""

    def find(metric: str, prefix: str = "") -> str:
        for key in keys:
            if key.startswith(f"{prefix}{metric}@"):
                return key
        raise KeyError(f"no score for {prefix}{metric} among {list(keys)}")

    return [find(m) for m in _GLOBAL] + [find(m, "drift/") for m in _DRIFTED]


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}%"


def format_markdown(rows: Sequence[Row]) -> str:
    """Markdown table; drift columns are headed `Δ <metric>@<backend>` (lower is better)."""
    if not rows:
        raise ValueError("format_markdown: no rows")
    labels = list(rows[0][0])
    columns = tab1_columns(list(rows[0][1]))
    heads = labels + [c.replace("drift/", "Δ ") for c in columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for label, scores in rows:
        cells = [str(label[k]) for k in labels] + [_percent(float(scores[c])) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results_table(rows: Sequence[Row], out_dir: str | Path, stem: str = "results") -> Path:
    """Write `<stem>.md` and `<stem>.csv` into `out_dir`; return the CSV path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(format_markdown(rows))
    labels = list(rows[0][0])
    first = tab1_columns(list(rows[0][1]))
    rest = [k for k in rows[0][1] if k not in first]
    path = out / f"{stem}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(labels + first + rest)
        for label, scores in rows:
            writer.writerow([label[k] for k in labels] + [float(scores[c]) for c in first + rest])
    return path
