"""Why does a stage-1 model copy instead of continue? Measurements on held-out videos.

    python -m benchmarks.motion_diagnosis --ckpt runs/stage1/version_0/checkpoints/last.ckpt \
        [--videos 32] [--json out.json]

Every segment i >= 1 of `--videos` held-out synthetic videos (rendered from a seed stream no
training video uses) is a target, with its true history and teacher-forced psi. Printed:

1. the one-step estimate x~ = x_t + (1 - t) v (Eq. 7) at several t, from fixed noise: its PSNR
   against the true segment, the flow loss on latent pixels that change from the last true frame
   ("moving") and on those that do not, and the share of the copy-last error it removes on the
   moving pixels; then segments sampled with 2, the model's and 32 Euler steps;
2. context ablations of the estimate at t = 0: the 1x history frames all replaced by the last one
   (no velocity left to read), and the 2x/4x history zeroed;
3. PSNR by frame ahead (1..T) of the t = 0 estimate and of copy-last;
4. the trivial predictors: copy-last, and a flow extrapolation that measures optical flow between
   the last two true frames and moves the last frame along it (no learning: what the two 1x frames
   carry about motion);
5. the motion in one segment against one DiT token: mean verified flow of the truth times the
   segment's frames, over the token's size in pixels;
6. how much each frame of a sampled segment (the model's steps) changes from the one before (the
   last true frame before the first), beside the truth's change and the t = 0 estimate's: a still
   sample changes by nothing, an incoherent one as much as the truth without moving (its verified
   flow, `generation_quality`'s flow share, tells the two apart from real motion).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from datamodules.synthetic import held_out_videos
from eval.backends.opencv_flow import OpenCVFlow
from eval.generation_quality import token_grid
from lightning_modules import rectified_flow as rf
from lightning_modules.codecs import to_uint8
from lightning_modules.loading import load_module, read_checkpoint
from lightning_modules.memory_pack import MemoryPack

TIMES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)


def targets(model: Any, videos: list[dict[str, Any]]) -> dict[str, Any]:
    """Every segment i >= 1 of the videos as one batch: latents x, index, history, psi, text."""
    pixel = torch.stack([v["video"] for v in videos])  # [n, s, T, 3, H, W]
    image = torch.stack([v["image"] for v in videos])
    latents, frames = model.encode_video(pixel, image)
    s = pixel.shape[1]
    rows = torch.arange(len(videos)).repeat_interleave(s - 1)
    seg = torch.arange(1, s).repeat(len(videos))
    flat, img = latents[rows], model.encode_image(image)[rows]
    text = model.encode_text([videos[r]["caption"] for r in rows.tolist()], image=image[rows])
    ctx = MemoryPack.teacher_forced(model.dit, model.semantic_pack, flat, frames, seg, text, img)
    x = rearrange(flat, "b (s t) c h w -> b s t c h w", t=frames)[torch.arange(len(seg)), seg]
    return {"x": x, "seg": seg, "history": ctx.history, "memory": ctx.memory, "image": img,
            "text": text, "frames": frames}  # fmt: skip


def frame_change(model: Any, last: Tensor, segment: Tensor) -> list[float]:
    """Mean squared change [T] of each decoded frame from the one before, the first from `last`
    [n, 1, c, h, w] (pixels in [-1, 1], halved like PSNR's), averaged over the targets."""
    frames = model.codec.decode(torch.cat((last, segment), 1)).clamp(-1, 1) / 2
    return (frames[:, 1:] - frames[:, :-1]).square().flatten(2).mean(2).mean(0).tolist()


def decoded_psnr(model: Any, a: Tensor, b: Tensor) -> Tensor:
    """Per frame PSNR [n, T] of two latent segments after decoding (pixels in [-1, 1])."""
    da, db = model.codec.decode(a).clamp(-1, 1), model.codec.decode(b).clamp(-1, 1)
    mse = ((da - db) / 2).square().flatten(2).mean(2)
    return -10 * torch.log10(mse.clamp(min=1e-10))


@torch.no_grad()
def estimates(
    model: Any, tg: dict[str, Any], history: Tensor | None = None, times: tuple = TIMES
) -> dict[float, Any]:
    """{t: (eps, v, x~)} from fixed noise; `history` replaces the true one (ablations)."""
    eps = torch.randn(tg["x"].shape, generator=torch.Generator().manual_seed(0))
    out = {}
    for t in times:
        tt = torch.full((len(tg["seg"]),), t)
        x_t = rf.interpolate(tg["x"], eps, tt)
        h = tg["history"] if history is None else history
        v = model.dit(x_t, tt, tg["seg"], h, tg["image"], *tg["text"], memory=tg["memory"])
        out[t] = (eps, v, rf.one_step_estimate(x_t, v, tt))
    return out


def at_zero(model: Any, tg: dict[str, Any], history: Tensor | None = None) -> Tensor:
    """The one-step estimate from pure noise (t = 0): the model's mean prediction."""
    return estimates(model, tg, history, times=(0.0,))[0.0][2]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255**2 / max(float(((a - b) ** 2).mean()), 1e-6))


def flow_extrapolation(videos: list[dict[str, Any]], frames: int) -> tuple[float, float]:
    """(PSNR of moving the last true frame along the flow of the last two, copy-last PSNR)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    up, warped, copied = 4, [], []
    for v in videos:
        rgb = to_uint8(v["video"].flatten(0, 1)).permute(0, 2, 3, 1).numpy().astype(np.float32)
        h, w = rgb.shape[1:3]
        grey = lambda f: cv2.resize(f.mean(2).astype(np.uint8), None, fx=up, fy=up)  # noqa: E731
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        for i in range(1, v["video"].shape[0]):
            last, prev, truth = rgb[i * frames - 1], rgb[i * frames - 2], rgb[i * frames :][:frames]
            back = cv2.resize(dis.calc(grey(last), grey(prev), None), (w, h)) / up  # last -> prev
            pred = np.stack([cv2.remap(last, xs + k * back[..., 0], ys + k * back[..., 1],
                                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                             for k in range(1, frames + 1)])  # fmt: skip
            warped.append(_psnr(pred, truth))
            copied.append(_psnr(np.broadcast_to(last, truth.shape), truth))
    return float(np.mean(warped)), float(np.mean(copied))


@torch.no_grad()
def diagnose(
    model: Any, videos: list[dict[str, Any]], segment_frames: int, many_steps: int = 32
) -> dict[str, Any]:
    """The figures of the module docstring for `videos` (held-out, >= 2 segments each)."""
    model.eval()
    tg = targets(model, videos)
    x, frames = tg["x"], tg["frames"]
    last = tg["history"][:, -1:].expand_as(x)
    moving = ((x - last).square().sum(2, keepdim=True) > 0.5).float()
    copy_err = ((last - x).square() * moving).sum()
    out: dict[str, Any] = {"targets": len(x), "moving_share": float(moving.mean())}
    out["copy_last_psnr"] = float(decoded_psnr(model, last, x).mean())
    rows = []
    for t, (eps, v, est) in estimates(model, tg).items():
        err = (v - rf.target_velocity(x, eps)).square().mean(2, keepdim=True)
        rows.append({"t": t, "psnr": float(decoded_psnr(model, est, x).mean()),
                     "loss_moving": float((err * moving).sum() / moving.sum()),
                     "loss_static": float((err * (1 - moving)).sum() / (1 - moving).sum()),
                     "explained_moving": float(1 - ((est - x).square() * moving).sum() / copy_err)})  # fmt: skip
    out["one_step"] = rows
    sampled = {}
    for steps in (2, int(model.hparams.sample_steps), many_steps):
        ctx = (tg["seg"], tg["history"], tg["image"], *tg["text"])

        def velocity(z: Tensor, t: Tensor, ctx: tuple = ctx) -> Tensor:
            return model.dit(z, t, *ctx, memory=tg["memory"])

        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        seg = rf.euler_sample(velocity, noise, steps, shift=model.hparams.sample_shift)
        sampled[steps] = float(decoded_psnr(model, seg, x).mean())
        if steps == int(model.hparams.sample_steps):
            out["frame_change"] = {"truth": frame_change(model, last[:, :1], x),
                                   "sampled": frame_change(model, last[:, :1], seg)}  # fmt: skip
    out["sampled_psnr"] = sampled
    h, n1 = tg["history"], model.dit.history_frames
    one_x = model.dit.context.counts[0] if hasattr(model.dit, "context") else 1
    no_velocity = h.clone()
    no_velocity[:, n1 - one_x :] = h[:, -1:]
    no_old = h.clone()
    no_old[:, : n1 - one_x] = 0
    out["ablation_t0"] = {
        "full": rows[0]["psnr"],
        "1x_frames_all_last": float(decoded_psnr(model, at_zero(model, tg, no_velocity), x).mean()),
        "2x_4x_zeroed": float(decoded_psnr(model, at_zero(model, tg, no_old), x).mean()),
    }  # fmt: skip
    est0 = at_zero(model, tg)
    out["frame_change"]["estimate"] = frame_change(model, last[:, :1], est0)
    out["by_frame_ahead"] = {"estimate": decoded_psnr(model, est0, x).mean(0).tolist(),
                             "copy_last": decoded_psnr(model, last, x).mean(0).tolist()}  # fmt: skip
    out["flow_extrapolation_psnr"], out["copy_last_pixel_psnr"] = flow_extrapolation(videos, frames)
    flow = OpenCVFlow("dis", verified=True)
    mags = []
    for v in videos:
        rgb = to_uint8(v["video"].flatten(0, 1)).permute(0, 2, 3, 1).numpy()
        for a, b in zip(rgb[:-1], rgb[1:], strict=True):
            m = flow.flow_magnitude(a, b)
            mags.append(float(m[m > 0.25].mean()) if (m > 0.25).any() else 0.0)
    out["motion_per_segment_px"] = float(np.mean(mags)) * segment_frames
    out["token_px"] = token_grid(model)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--videos", type=int, default=32, help="held-out videos of 8 segments")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    checkpoint = read_checkpoint(args.ckpt)
    model = load_module(checkpoint)
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    frames, size = int(data.get("segment_frames", 4)), tuple(data.get("resolution", (32, 32)))
    fps = float(data.get("fps", 8.0))
    videos = held_out_videos(args.videos, 8, frames, size, seed=args.seed, fps=fps)
    out = diagnose(model, videos, frames)
    print(f"{out['targets']} targets; moving share of latent pixels {out['moving_share']:.2f}; "
          f"copy-last {out['copy_last_psnr']:.2f} dB")  # fmt: skip
    print(f"{'t':>5}{'x~ dB':>8}{'loss moving':>13}{'loss static':>13}{'explained':>11}")
    for r in out["one_step"]:
        print(f"{r['t']:>5.2f}{r['psnr']:>8.2f}{r['loss_moving']:>13.3f}{r['loss_static']:>13.3f}"
              f"{r['explained_moving']:>+11.3f}")  # fmt: skip
    print("sampled dB by Euler steps:", {k: round(v, 2) for k, v in out["sampled_psnr"].items()})
    print(
        "t=0 estimate with history ablated:",
        {k: round(v, 2) for k, v in out["ablation_t0"].items()},
    )
    print(
        "by frame ahead:", {k: [round(x, 1) for x in v] for k, v in out["by_frame_ahead"].items()}
    )
    print(f"flow extrapolation {out['flow_extrapolation_psnr']:.2f} dB vs copy-last "
          f"{out['copy_last_pixel_psnr']:.2f} dB (pixels)")  # fmt: skip
    print(f"motion per segment {out['motion_per_segment_px']:.1f} px vs token {out['token_px']} px")
    print(
        "frame-to-frame change (MSE) by frame ahead:",
        {k: [round(c, 4) for c in v] for k, v in out["frame_change"].items()},
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
