"""Generation quality of a checkpoint against ground truth, with an untrained floor.

    python -m benchmarks.generation_quality --ckpt runs/stage1/version_0/checkpoints/last.ckpt \
        [--json out.json] [--num_videos 8] [--sample_steps N]

On the held-out (val) videos of the checkpoint's own data configuration: PSNR/SSIM of frame 0 of a
rollout against the reference image, and of one segment sampled given the true history against
the true segment (`eval/generation_quality.py`), for the trained model and for an untrained model
of the same configuration (same class and hyperparameters, weights as constructed but the codec's,
which is fitted data; for a stage-2 checkpoint that is the stage-1 model it starts from).
`copy_last` repeats the last true frame: what a model that never moves would score.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from datamodules.video_datamodule import VideoDataModule
from eval.generation_quality import generation_quality
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


def held_out(checkpoint: dict[str, Any], count: int, data_dir: str | None) -> tuple[list, int]:
    """The first `count` val videos of the checkpoint's data config, and frames per segment."""
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
    return [e for e in examples if e is not None], dm.segment_frames


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a Lightning checkpoint written by train.py")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--num_videos", type=int, default=16, help="held-out videos to score")
    parser.add_argument("--next_per_video", type=int, default=2, help="next segments per video")
    parser.add_argument("--sample_steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--data_dir", default=None, help="default: the checkpoint's")
    parser.add_argument("--no_floor", action="store_true", help="skip the untrained model")
    args = parser.parse_args(argv)

    checkpoint = read_checkpoint(args.ckpt)
    examples, frames = held_out(checkpoint, args.num_videos, args.data_dir)
    results: dict[str, Any] = {}
    for name in ("trained", "untrained")[: 1 if args.no_floor else 2]:
        model = load_model(checkpoint, trained=name == "trained")
        if args.sample_steps is not None:
            model.hparams.sample_steps = args.sample_steps
        scores = generation_quality(model, examples, frames, args.next_per_video)
        scores["sample_steps"] = float(model.hparams.sample_steps)
        results[name] = scores
    out: dict[str, Any] = {**results["trained"], "checkpoint": args.ckpt}
    if "untrained" in results:
        out["untrained"] = results["untrained"]

    columns = list(results)
    print(f"{'figure':<22}" + "".join(f"{c:>12}" for c in columns))
    for key in (*ROWS, "copy_last_psnr", "sample_steps", "next_segments"):
        print(f"{key:<22}" + "".join(f"{results[c][key]:>12.3f}" for c in columns))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
