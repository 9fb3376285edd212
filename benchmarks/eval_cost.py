"""Time per frame of each metric backend vs time per frame of rollout generation (CPU by default).

    python -m benchmarks.eval_cost [--json out.json] [--rollout-factory MODULE:FUNC]

Rollout: FUNC() must return a LightningModule with `generate(image, captions, num_segments,
generator=None, frames_per_segment=...)`; the default is
`train:build_model` (the model of configs/stage1.yaml). When it cannot be imported
the rollout row and `metrics_over_rollout` are reported as unavailable (null), never guessed.
Medians over `--reps` repetitions after one warm-up run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from eval.backends.registry import build_backends
from eval.formulas import smoothness_errors
from eval.video_scores import score_video


def _median_time(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up: lazy initialisation, allocator, thread pools
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synthetic_video(frames: int, height: int, width: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, height // 4, width // 4 + frames, generator=gen)
    big = torch.nn.functional.interpolate(base, size=(height, width + 4 * frames), mode="bicubic")
    video = torch.stack([big[0, :, :, 4 * t : 4 * t + width] for t in range(frames)])
    return (video.clamp(0, 1) * 255).to(torch.uint8)


def _backend_rows(video: torch.Tensor, fps: float, reps: int) -> dict[str, float]:
    """Seconds per frame of each default backend and of the whole `score_video`."""
    backends = build_backends()
    num = video.shape[0]
    hwc = video.permute(0, 2, 3, 1).contiguous().numpy()
    rows = {
        f"subject@{backends.subject.name}": _median_time(
            lambda: backends.subject.features(video), reps
        ),
        f"background@{backends.background.name}": _median_time(
            lambda: backends.background.features(video), reps
        ),
        f"aesthetic@{backends.aesthetic.name}": _median_time(
            lambda: backends.aesthetic.scores(video), reps
        ),
        f"imaging@{backends.imaging.name}": _median_time(
            lambda: backends.imaging.scores(video), reps
        ),
        f"flow@{backends.flow.name}": _median_time(
            lambda: [
                backends.flow.flow_magnitude(a, b) for a, b in zip(hwc[:-1], hwc[1:], strict=True)
            ],
            reps,
        ),
        f"interpolation@{backends.interpolation.name}": _median_time(
            lambda: smoothness_errors(video, backends.interpolation.interpolate), reps
        ),
        "score_video (all metrics + drifts)": _median_time(
            lambda: score_video(video, backends, fps=fps), reps
        ),
    }
    return {name: seconds / num for name, seconds in rows.items()}


def _rollout_per_frame(factory: str, args: argparse.Namespace) -> float:
    module_name, _, func_name = factory.partition(":")
    build = getattr(importlib.import_module(module_name), func_name)
    model = build().eval()
    image = torch.zeros(1, 3, args.height, args.width)
    gen = torch.Generator().manual_seed(0)

    def rollout() -> torch.Tensor:
        return model.generate(
            image, ["a benchmark"], args.segments, generator=gen,
            frames_per_segment=args.frames_per_segment,
        )  # fmt: skip

    frames = rollout().shape[1]
    return _median_time(rollout, args.reps) / frames


def main(argv: list[str] | None = None) -> int:
    """Print the table; optionally write JSON with `metrics_over_rollout`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rollout-factory", default="train:build_model")
    parser.add_argument(
        "--frames", type=int, default=32, help="frames of the synthetic scored video"
    )
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--frames-per-segment", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

    metrics = _backend_rows(
        _synthetic_video(args.frames, args.height, args.width), args.fps, args.reps
    )
    try:
        rollout: float | None = _rollout_per_frame(args.rollout_factory, args)
        rollout_note = args.rollout_factory
    except (ImportError, AttributeError) as err:
        rollout, rollout_note = None, f"unavailable ({err})"
    total = metrics["score_video (all metrics + drifts)"]
    ratio = None if rollout is None else total / rollout

    print(f"{'what':<45} {'ms / frame':>12}")
    for name, seconds in metrics.items():
        print(f"{name:<45} {1000 * seconds:>12.3f}")
    print(
        f"{'rollout generation':<45} {'n/a' if rollout is None else f'{1000 * rollout:12.3f}':>12}"
    )
    print(
        f"metrics / rollout: {'n/a' if ratio is None else f'{ratio:.3f}'}   (rollout: {rollout_note})"
    )
    if args.json is not None:
        payload = {
            "metrics_over_rollout": ratio,
            "metric_seconds_per_frame": metrics,
            "rollout_seconds_per_frame": rollout,
            "rollout_factory": rollout_note,
            "config": vars(args) | {"json": str(args.json)},
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
