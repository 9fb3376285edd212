"""Generation quality of a checkpoint against ground truth, with an untrained floor.

    python -m benchmarks.generation_quality --ckpt runs/stage1/version_0/checkpoints/last.ckpt \
        [--json out.json] [--num_videos 16] [--rollout_videos 16] [--depth 6] [--sample_steps N]

On the held-out (val) videos of the checkpoint's own data configuration: PSNR/SSIM of frame 0 of a
rollout against the reference image, and of one segment sampled given the true history against
the true segment (`eval/generation_quality.py`), for the trained model and for an untrained model
of the same configuration (same class and hyperparameters, weights as constructed but the codec's,
which is fitted data; for a stage-2 checkpoint that is the stage-1 model it starts from).
`copy_last` repeats the last true frame: what a model that never moves would score.

Rollouts (`eval.generation_quality.rollout_quality`): `--rollout_videos` held-out videos of
1 + `--depth` segments (synthetic data: rendered for this run from a seed stream no training video
uses; folder data: the val videos that long) are continued from their first true segment on the
model's own samples; PSNR by depth beside the static copy of the last true frame, verified-flow
share, dynamic fraction and token-grid edge energy beside the truth's.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from datamodules.synthetic import held_out_videos
from datamodules.video_datamodule import VideoDataModule
from eval.generation_quality import generation_quality, rollout_quality
from lightning_modules.loading import load_module, read_checkpoint
from lightning_modules.video_module import VideoModule

ROWS = ("reference_psnr", "reference_ssim", "next_segment_psnr", "next_segment_ssim")


def load_model(checkpoint: dict[str, Any], trained: bool) -> VideoModule:
    """The checkpoint's module; `trained=False` builds it with its initial weights instead,
    keeping only the codec's (a stage-0 codec such as PatchPCACodec is fitted data, not the
    model being judged)."""
    if not trained:
        codec = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("codec.")}
        checkpoint = {**checkpoint, "state_dict": codec}
        torch.manual_seed(0)
    with warnings.catch_warnings():  # the untrained model's missing keys are the point
        warnings.filterwarnings("ignore", message="Found keys that are in the model state dict")
        return load_module(checkpoint, strict=trained)


def held_out(
    checkpoint: dict[str, Any], count: int, data_dir: str | None
) -> tuple[list, int, VideoDataModule]:
    """The first `count` val videos of the checkpoint's data config, frames per segment and the
    datamodule."""
    hp = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if not hp:
        raise ValueError("the checkpoint holds no datamodule hyperparameters (train via train.py)")
    hp.pop("_instantiator", None)
    hp.pop("_class_path", None)
    hp.pop("curriculum", None)  # training-batch order only; the val split is what we need
    hp.pop("latent_cache", None)  # we need pixels: the ground truth is scored as video
    if data_dir is not None:
        hp["data_dir"] = data_dir
    dm = VideoDataModule(**hp)
    dm.prepare_data()
    dm.setup("validate")
    examples = [dm.val_set[i] for i in range(min(count, len(dm.val_set)))]
    return [e for e in examples if e is not None], dm.segment_frames, dm


def long_held_out(dm: VideoDataModule, count: int, segments: int, seed: int) -> list:
    """`count` held-out videos of `segments` segments: rendered for synthetic data, else the val
    videos that long (warned when fewer)."""
    if dm.source == "synthetic":
        return held_out_videos(count, segments, dm.segment_frames, dm.resolution, seed, dm.fps)
    found = []
    for i in range(len(dm.val_set)):
        item = dm.val_set[i]
        if item is not None and item["video"].shape[0] >= segments:
            found.append(item)
        if len(found) == count:
            break
    if len(found) < count:
        warnings.warn(f"only {len(found)} val videos have {segments} segments", stacklevel=2)
    return found


def print_rollout(r: dict[str, Any]) -> None:
    print(f"\nrollouts ({int(r['rollout_videos'])} videos, continued from 1 true segment)")
    print(f"{'depth':<7}{'model dB':>9}{'static':>8}{'margin':>8}{'true hist':>10}"
          f"{'grid edge':>10}{'(truth)':>8}{'flow share':>11}{'(truth)':>8}")  # fmt: skip
    true = r.get("true_history_by_depth") or [float("nan")] * len(r["psnr_by_depth"])
    for d, g in enumerate(r["psnr_by_depth"]):
        s = r["static_by_depth"][d]
        print(f"{d + 1:<7}{g:>9.2f}{s:>8.2f}{g - s:>+8.2f}{true[d]:>10.2f}"
              f"{r['grid_edge_by_depth'][d]:>10.2f}{r['grid_edge_by_depth_truth'][d]:>8.2f}"
              f"{r['flow_share_by_depth'][d]:>11.3f}{r['flow_share_by_depth_truth'][d]:>8.3f}")  # fmt: skip
    print(f"{'figure':<22}{'model':>10}{'truth':>10}{'ratio':>8}")
    for key in ("flow_share", "dynamic_fraction", "grid_edge_first", "grid_edge"):
        g, t = r[key], r[key + "_truth"]
        print(f"{key:<22}{g:>10.3f}{t:>10.3f}{g / t if t else float('nan'):>8.2f}")
    if "true_history_flow_share_by_depth" in r:  # no drift: does a sample from the truth move?
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        for key, truth in (("flow_share", "flow_share_by_depth_truth"),
                           ("grid_edge", "grid_edge_by_depth_truth")):  # fmt: skip
            g, t = mean(r[f"true_history_{key}_by_depth"]), mean(r[truth])
            name = f"true hist {key}"
            print(f"{name:<22}{g:>10.3f}{t:>10.3f}{g / t if t else float('nan'):>8.2f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a Lightning checkpoint written by train.py")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--num_videos", type=int, default=16, help="held-out videos to score")
    parser.add_argument("--next_per_video", type=int, default=2, help="next segments per video")
    parser.add_argument("--sample_steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--data_dir", default=None, help="default: the checkpoint's")
    parser.add_argument("--no_floor", action="store_true", help="skip the untrained model")
    parser.add_argument("--rollout_videos", type=int, default=16, help="0: no rollout figures")
    parser.add_argument("--depth", type=int, default=6, help="generated segments per rollout")
    parser.add_argument("--seed", type=int, default=0, help="noise and held-out video seed")
    parser.add_argument("--no_true_history", action="store_true",
                        help="skip sampling each depth from the true history (halves the cost)")  # fmt: skip
    args = parser.parse_args(argv)

    checkpoint = read_checkpoint(args.ckpt)
    examples, frames, dm = held_out(checkpoint, args.num_videos, args.data_dir)
    results: dict[str, Any] = {}
    for name in ("trained", "untrained")[: 1 if args.no_floor else 2]:
        model = load_model(checkpoint, trained=name == "trained")
        if args.sample_steps is not None:
            model.hparams.sample_steps = args.sample_steps
        scores = generation_quality(model, examples, frames, args.next_per_video, args.seed)
        scores["sample_steps"] = float(model.hparams.sample_steps)
        results[name] = scores
        if name == "trained" and args.rollout_videos:
            long = long_held_out(dm, args.rollout_videos, 1 + args.depth, args.seed)
            rollout = rollout_quality(model, long, frames, args.depth, seed=args.seed,
                                      true_history=not args.no_true_history)  # fmt: skip
    out: dict[str, Any] = {**results["trained"], "checkpoint": args.ckpt}
    if "untrained" in results:
        out["untrained"] = results["untrained"]

    columns = list(results)
    print(f"{'figure':<22}" + "".join(f"{c:>12}" for c in columns))
    keys = (*ROWS, "copy_last_psnr", "next_segment_margin", "sample_steps", "next_segments")
    for key in keys:
        print(f"{key:<22}" + "".join(f"{results[c][key]:>12.3f}" for c in columns))
    if args.rollout_videos:
        out["rollout"] = rollout
        print_rollout(rollout)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
