"""Does the generator generate? Reconstruction figures against ground truth on held-out videos.

Two questions a working image-to-video model must answer well before any VBench-style metric
means anything:

- reference: frame 0 of a rollout (segment 0, sampled from noise) against the reference image it
  was given. The image is frame 0 of the video, so a working model nearly copies it.
- next segment: segment i (i >= 1) sampled from noise given the TRUE history (segments 0..i-1 of
  the real video as FramePack context and through SemanticPack's recurrence, via `generate`'s
  `prefix`), against the true segment i.

Both are PSNR (dB, uint8 frames, mean over samples of the per-sample PSNR) and SSIM (Gaussian
window, mean over frames). Two reference points come with them: `copy_last` repeats the last true
frame before segment i for the whole segment (what a model that never moves would score), and the
caller may score an untrained model of the same configuration as a floor.

`rollout_quality` continues long held-out videos from their first segment(s) for `depth`
segments on the model's own samples and reports, beside the same figures of the truth: PSNR at
each depth with the static copy of the last true frame at the same depth, how much verified motion
the rollout holds (`eval/motion.py`), and the seams on the DiT's token grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from eval.motion import MOTION_KEYS, grid_edge, motion_scores, pair_motion
from lightning_modules.codecs import to_uint8

__all__ = ["generation_quality", "psnr", "rollout_quality", "ssim", "token_grid"]
MAX_PSNR = 100.0  # dB


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of two uint8 videos/images of the same shape (peak 255; torchmetrics), capped
    at 100 dB (identical inputs: torchmetrics gives inf, which would swamp a mean)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    value = peak_signal_noise_ratio(a.float(), b.float(), data_range=255.0)
    return min(float(value), MAX_PSNR)


def ssim(a: Tensor, b: Tensor) -> float:
    """Mean SSIM over frames of uint8 [..., 3, H, W] (11x11 Gaussian window, sigma 1.5)."""
    x = a.reshape(-1, *a.shape[-3:]).float() / 255
    y = b.reshape(-1, *b.shape[-3:]).float() / 255
    return float(structural_similarity_index_measure(x, y, data_range=1.0))


@torch.no_grad()
def generation_quality(
    model: Any,
    examples: Sequence[dict[str, Any]],
    segment_frames: int,
    max_next_per_video: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Reference and next-segment PSNR/SSIM of `model` (a `VideoModule`) on `examples`.

    examples: dataset items with `video` [s, T, 3, H, W] and `image` [3, H, W] in [-1, 1] and
    `caption`. For the next-segment figures up to `max_next_per_video` segments per video are
    sampled, evenly spread over 1..s-1 (always including the last), so long videos do not dominate.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ref_psnr, ref_ssim, nxt_psnr, nxt_ssim, copy_psnr = [], [], [], [], []
    try:
        for index, ex in enumerate(examples):
            video = ex["video"].to(device)  # [s, T, 3, H, W]
            image = ex["image"][None].to(device)
            caption = [ex["caption"]]
            gen = torch.Generator(device=device).manual_seed(seed + index)
            first = model.generate(image, caption, 1, gen, frames_per_segment=segment_frames)
            truth_image = to_uint8(image)
            ref_psnr.append(psnr(first[:, 0], truth_image.cpu()))
            ref_ssim.append(ssim(first[:, 0], truth_image.cpu()))
            s = video.shape[0]
            for i in _next_segments(s, max_next_per_video):
                prefix = video[:i].flatten(0, 1)[None]
                out = model.generate(
                    image, caption, i + 1, gen, frames_per_segment=segment_frames, prefix=prefix
                )
                sample = out[0, i * segment_frames :]
                truth = to_uint8(video[i]).cpu()
                nxt_psnr.append(psnr(sample, truth))
                nxt_ssim.append(ssim(sample, truth))
                last = to_uint8(video[i - 1, -1:]).cpu().expand_as(truth)
                copy_psnr.append(psnr(last, truth))
    finally:
        model.train(was_training)
    if not nxt_psnr:
        raise ValueError("generation_quality needs at least one example with >= 2 segments")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "reference_psnr": mean(ref_psnr),
        "reference_ssim": mean(ref_ssim),
        "next_segment_psnr": mean(nxt_psnr),
        "next_segment_ssim": mean(nxt_ssim),
        "copy_last_psnr": mean(copy_psnr),
        "next_segment_margin": mean(nxt_psnr) - mean(copy_psnr),
        "videos": float(len(examples)),
        "next_segments": float(len(nxt_psnr)),
    }


def _next_segments(num_segments: int, count: int) -> list[int]:
    """Up to `count` segment indices in 1..num_segments-1, evenly spread, the last included."""
    if num_segments < 2 or count < 1:
        return []
    picks = {round(1 + (num_segments - 2) * (j + 1) / count) for j in range(count)}
    return sorted(min(max(p, 1), num_segments - 1) for p in picks)


def _continue(
    model: Any, video: Tensor, ex: dict[str, Any], frames: int, seed: int, k: int, total: int
) -> Tensor:
    """`total` segments of `ex`: its first k true segments, then the model's (uint8)."""
    gen = torch.Generator(device=video.device).manual_seed(seed)
    image = ex["image"][None].to(video.device)
    prefix = video[:k].flatten(0, 1)[None]
    return model.generate(image, [ex["caption"]], total, gen, frames_per_segment=frames,
                          prefix=prefix)[0]  # fmt: skip


def token_grid(model: Any) -> int:
    """Pixels between the DiT's token boundaries: the codec's spatial factor x the patch."""
    return model.codec.spatial_factor * model.dit.patch[-1]


@torch.no_grad()
def rollout_quality(
    model: Any,
    examples: Sequence[dict[str, Any]],
    segment_frames: int,
    depth: int,
    prefix_segments: int = 1,
    seed: int = 0,
    true_history: bool = False,
) -> dict[str, Any]:
    """Continue each example from its first `prefix_segments` true segments for `depth`
    generated segments (examples need prefix_segments + depth segments) and score the rollout.

    Per depth d = 1..depth (lists): `psnr_by_depth` of generated segment d against the true one;
    `static_by_depth`, the last true frame repeated, against the same; with `true_history`,
    `true_history_by_depth`: segment d sampled by the same model from the TRUE segments before it
    (no exposure to its own samples), with its `true_history_flow_share_by_depth` (the pair
    entering it included) and `true_history_grid_edge_by_depth`, so motion and seams can be told
    apart from drift; `grid_edge_by_depth` and `flow_share_by_depth` (the frame
    pairs ending in segment d, the one entering it included), each with the truth's
    (`..._truth`). Over the whole rollout, with the truth's: `flow_share`, `dynamic_fraction`,
    `grid_edge` (`eval/motion.py`), and `grid_edge_first` of its first segment.
    """
    need = prefix_segments + depth
    usable = [ex for ex in examples if ex["video"].shape[0] >= need]
    if not usable or depth < 1 or prefix_segments < 1:
        raise ValueError(
            f"rollout_quality needs depth >= 1, prefix_segments >= 1 and examples of >= {need} "
            f"segments; got depth={depth}, prefix_segments={prefix_segments}, "
            f"{len(usable)} long enough of {len(examples)}"
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    grid, f = token_grid(model), segment_frames
    start = prefix_segments * f
    lists = ["psnr_by_depth", "static_by_depth", "grid_edge_by_depth", "flow_share_by_depth",
             "grid_edge_by_depth_truth", "flow_share_by_depth_truth"]  # fmt: skip
    lists += ["true_history_by_depth", "true_history_flow_share_by_depth",
              "true_history_grid_edge_by_depth"] if true_history else []  # fmt: skip
    by_depth: dict[str, list[list[float]]] = {k: [[] for _ in range(depth)] for k in lists}
    totals: dict[str, list[float]] = {
        f"{k}{s}": [] for k in (*MOTION_KEYS, "grid_edge_first") for s in ("", "_truth")
    }
    try:
        for index, ex in enumerate(usable):
            video = ex["video"][:need].to(device)
            continued = partial(_continue, model, video, ex, f, seed + index)
            out = continued(prefix_segments, need)
            truth = to_uint8(video.flatten(0, 1)).cpu()
            last = truth[start - 1 : start]
            for suffix, frames in (("", out), ("_truth", truth)):
                share, _ = pair_motion(frames[start - 1 :])  # the pair entering depth 1 first
                for d in range(depth):
                    part = frames[start + d * f : start + (d + 1) * f]
                    by_depth["grid_edge_by_depth" + suffix][d].append(grid_edge(part, grid))
                    by_depth["flow_share_by_depth" + suffix][d].append(
                        float(share[d * f : (d + 1) * f].mean())
                    )
                for key, value in motion_scores(frames[start:], grid).items():
                    totals[key + suffix].append(value)
                totals["grid_edge_first" + suffix].append(
                    grid_edge(frames[start : start + f], grid)
                )
            for d in range(depth):
                part = slice(start + d * f, start + (d + 1) * f)
                by_depth["psnr_by_depth"][d].append(psnr(out[part], truth[part]))
                by_depth["static_by_depth"][d].append(
                    psnr(last.expand_as(truth[part]), truth[part])
                )
                if true_history:
                    sample = continued(prefix_segments + d, prefix_segments + d + 1)[part]
                    by_depth["true_history_by_depth"][d].append(psnr(sample, truth[part]))
                    entering = torch.cat((truth[part.start - 1 : part.start], sample))
                    by_depth["true_history_flow_share_by_depth"][d].append(
                        float(pair_motion(entering)[0].mean())
                    )
                    by_depth["true_history_grid_edge_by_depth"][d].append(grid_edge(sample, grid))
    finally:
        model.train(was_training)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        **{k: [mean(x) for x in v] for k, v in by_depth.items()},
        **{k: mean(v) for k, v in totals.items()},
        "rollout_videos": float(len(usable)),
    }
