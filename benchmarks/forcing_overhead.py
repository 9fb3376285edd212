"""Cost of the history modes of stage 2: teacher vs direct vs student(k) (Sec. 3.2, Fig. 2).

The paper claims Direct Forcing "incurs no additional overhead" over teacher forcing: the one-step
estimate reuses the loss's forward pass. Student forcing runs the sampler (k extra forwards per
segment). This trains on the same videos (same segment count, tiny model, CPU), switching the
mode every step on one module and Trainer (order rotating), and prints the median wall time per
video step; ratios are medians of ratios of neighbouring steps, so bursts of load on a shared
machine hit the modes alike.

    python benchmarks/forcing_overhead.py [--segments 4] [--rounds 20] [--json out.json]
"""

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from datamodules.video_dataset import collate_videos
from lightning_modules.codec import SpaceToDepthCodec
from lightning_modules.direct_forcing import DirectForcingModule
from lightning_modules.dit import VideoDiT
from lightning_modules.text_encoder import HashTextEncoder
from lightning_modules.video_module import VideoModule


def parts(args: argparse.Namespace) -> dict[str, Any]:
    dit = VideoDiT(
        latent_channels=48, text_dim=128, width=args.width, depth=args.depth, heads=2,
        frame_pack=(1, 2, 4),
    )  # fmt: skip
    return {"dit": dit, "codec": SpaceToDepthCodec(4), "text_encoder": HashTextEncoder(128)}


class ModeCycler(L.Callback):
    """Switches the history mode every step and times each step (one video, one optimizer step).

    Cycling modes step by step on one module and one Trainer gives every mode the same machine
    load, weights and data, so the comparison is paired at the finest grain.
    """

    def __init__(self, modes: tuple[str, ...], warmup: int) -> None:
        self.modes = modes
        self.warmup = warmup
        self.times: dict[str, list[float]] = {m: [] for m in modes}
        self._mode = modes[0]
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        n = len(self.modes)
        order = self.modes[(idx // n) % n :] + self.modes[: (idx // n) % n]  # rotate per cycle
        self._mode = order[idx % n]
        module.hparams.history = self._mode
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        elapsed = time.perf_counter() - self._start
        if trainer.global_step > self.warmup * len(self.modes):
            self.times[self._mode].append(elapsed)


def videos(n: int, segments: int, frames: int, size: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        video = torch.rand(segments, frames, 3, size, size, generator=gen) * 2 - 1
        out.append({"video": video, "image": video[0, 0].clone(), "caption": f"a clip {i}",
                    "num_segments": segments, "name": str(i)})  # fmt: skip
    return out


def main() -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=4, help="segments per video")
    parser.add_argument("--rounds", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    parser.add_argument("--student_steps", type=int, default=5)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--frames", type=int, default=8, help="pixel frames per segment")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # one table, not Trainer chatter
    warnings.filterwarnings("ignore")

    modes = ("teacher", "direct", "student")
    cycler = ModeCycler(modes, args.warmup)
    data = videos(len(modes) * (args.warmup + args.rounds), args.segments, args.frames, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "stage1.ckpt"
        stage1 = VideoModule(**parts(args))
        with torch.no_grad():  # off the adaLN-zero init, as a trained stage-1 network would be
            for p in stage1.parameters():
                p.add_(0.02 * torch.randn_like(p))
        torch.save({"state_dict": stage1.state_dict()}, ckpt)
        module = DirectForcingModule(
            init_checkpoint=str(ckpt), student_steps=args.student_steps, **parts(args)
        )
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, max_epochs=1, callbacks=[cycler],
        )  # fmt: skip
        trainer.fit(module, DataLoader(data, batch_size=1, collate_fn=collate_videos))
    times = cycler.times
    med = {m: statistics.median(t) for m, t in times.items()}
    teacher = times["teacher"]
    ratio = {
        m: statistics.median([a / b for a, b in zip(t, teacher, strict=True)])
        for m, t in times.items()
    }
    best = {m: min(t) for m, t in times.items()}  # the least-disturbed step: a load-free reference
    result = {
        "teacher_s": med["teacher"],
        "direct_s": med["direct"],
        "student_s": med["student"],
        "direct_over_teacher": ratio["direct"],
        "student_over_teacher": ratio["student"],
        "best_direct_over_teacher": best["direct"] / best["teacher"],
        "best_student_over_teacher": best["student"] / best["teacher"],
        "segments": args.segments,
        "student_steps": args.student_steps,
        "steps_per_mode": len(times["teacher"]),
    }
    print(
        f"{'mode':<18}{'median s/video step':>22}{'vs teacher':>12}{'best s':>10}{'best ratio':>12}"
    )
    for mode in modes:
        name = f"student(k={args.student_steps})" if mode == "student" else mode
        print(
            f"{name:<18}{med[mode]:>22.4f}{ratio[mode]:>12.3f}"
            f"{best[mode]:>10.4f}{best[mode] / best['teacher']:>12.3f}"
        )
    print(f"({len(times['teacher'])} timed steps per mode, {args.segments} segments per video)")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
