"""The memory probe: does a continued video bring back what left the view long ago?

    python -m eval.probe --ckpt runs/stage1/version_0/checkpoints/last.ckpt [--json out.json]

Each probe (`datamodules/synthetic/probe_scene.py`) is continued from its real prefix, in which a landmark shows
behind a sliding shutter; the shutter then stays shut for longer than FramePack's history, so when
it reopens only a long-term memory (SemanticPack's psi) can know what was behind it. Scores, mean
over probe videos, from the mean colour of the generated frames inside the landmark's true pixels
in the return frames where it is fully uncovered:

- `memory`: that colour's nearest landmark colour is the true one (accuracy, 0..1);
- `chance`: what a guess scores: 1/8, because the colour is drawn independently of everything the
  model sees outside the prefix (reference image, caption, the rest of the scene);
- `oracle`: the ground-truth frames scored alike (1 unless the scorer is broken);
  `oracle_codec`: the ground truth after the model's codec (encode + decode), what a perfect
  generator behind this codec could reach;
- `colour_error`: distance between that colour and the true one (RGB / 255, 0..sqrt(3)), with
  `colour_error_chance` (a random landmark colour) and `colour_error_oracle`;
- `memory_gates_shut`, `colour_error_gates_shut` (models with SemanticPack): the same model and
  noise with psi never read (`generate(read_memory=False)`, exactly what memory-read gates at 0
  give): a model that cannot remember, which must score near chance.

The model generates the gap itself (only the prefix is real), as a user's continuation would. The
gap shows only the shutter, so without psi the landmark could reach the return only if the model
wrote it into the frames it generates there; `prefix_segments` = prefix + gap gives the true gap
instead, which cuts that path too (FramePack then holds no frame of the landmark at all).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from datamodules.synthetic.drawing import OBJECT_COLOURS
from datamodules.synthetic.probe_scene import LANDMARK_COLOURS, ProbeVideo, probe_set
from lightning_modules.codecs import to_uint8
from lightning_modules.memory_pack import history_reach

__all__ = [
    "PROBE_KEYS",
    "memory_probe",
    "probe_video_scores",
    "score_colour",
]

PROBE_KEYS = (
    "memory",
    "chance",
    "oracle",
    "oracle_codec",
    "colour_error",
    "colour_error_chance",
    "colour_error_oracle",
    "memory_gates_shut",
    "colour_error_gates_shut",
)
_PALETTE = torch.tensor([OBJECT_COLOURS[c] for c in LANDMARK_COLOURS], dtype=torch.float64)


def score_colour(frames: Tensor, probe: ProbeVideo) -> tuple[float, float]:
    """(correct 0/1, colour error) of uint8 frames [F, 3, H, W] in the probe's scored pixels."""
    if frames.shape != probe.frames.shape:
        raise ValueError(
            f"probe frames {tuple(frames.shape)} differ from the probe's {tuple(probe.frames.shape)}"
        )
    scored = probe.scored_frames
    if not scored:
        raise ValueError("the probe has no return frame with the landmark fully uncovered")
    pixels = frames[scored].permute(1, 0, 2, 3)[:, probe.visible[scored]]  # [3, n]
    mean = pixels.double().mean(dim=1)
    nearest = int((_PALETTE - mean).norm(dim=1).argmin())
    truth = _PALETTE[LANDMARK_COLOURS.index(probe.colour)]
    return float(LANDMARK_COLOURS[nearest] == probe.colour), float((mean - truth).norm() / 255)


def chance_colour_error(probe: ProbeVideo) -> float:
    """Expected colour error of a landmark colour drawn at random (the true one included)."""
    truth = _PALETTE[LANDMARK_COLOURS.index(probe.colour)]
    return float((_PALETTE - truth).norm(dim=1).mean() / 255)


def _to_model(frames: Tensor, device: torch.device) -> Tensor:
    return frames.to(device).float().div(127.5).sub(1.0)


@torch.no_grad()
def probe_video_scores(
    model: Any,
    probes: Sequence[ProbeVideo],
    seed: int = 0,
    gates_shut: bool | None = None,
    prefix_segments: int | None = None,
) -> list[dict[str, float]]:
    """Per-probe scores (`PROBE_KEYS`) of `model` (a `VideoModule`), the probes as one batch.

    `gates_shut` None: also with psi unread (the gates shut) when the model has SemanticPack
    (else NaN).
    `prefix_segments`: real segments continued (default: the schedule's prefix); at most
    prefix + gap, so the return is always generated.
    """
    if not probes:
        raise ValueError("memory probe: no probe videos")
    first = probes[0]
    if any(p.frames.shape != first.frames.shape or p.schedule != first.schedule for p in probes):
        raise ValueError("memory probe: a batch needs probes of one size and schedule")
    frames_per_segment = first.segment_frames
    history = history_reach(model.dit) * model.codec.temporal_factor  # pixel frames
    for probe in probes:
        probe.check_history(history)
    device = next(model.parameters()).device
    video = _to_model(torch.stack([p.frames for p in probes]), device)  # [b, F, 3, H, W]
    schedule = first.schedule
    given = schedule.prefix_segments if prefix_segments is None else prefix_segments
    if not schedule.prefix_segments <= given <= schedule.prefix_segments + schedule.gap_segments:
        raise ValueError(
            f"prefix_segments={given} must cover the prefix ({schedule.prefix_segments}) and "
            f"leave the return to generate (<= {schedule.prefix_segments + schedule.gap_segments})"
        )
    image, prefix = video[:, 0], video[:, : given * frames_per_segment]
    captions = [p.caption for p in probes]
    segments = schedule.num_segments

    def rollout(read_memory: bool = True) -> Tensor:
        gen = torch.Generator(device=device).manual_seed(seed)
        return model.generate(
            image, captions, segments, gen, frames_per_segment=frames_per_segment, prefix=prefix,
            read_memory=read_memory,
        )  # fmt: skip

    was_training = model.training
    model.eval()
    try:
        generated = rollout()
        shut = None
        if gates_shut if gates_shut is not None else model.semantic_pack is not None:
            shut = rollout(read_memory=False)
        segs = video.reshape(len(probes), segments, frames_per_segment, *video.shape[2:])
        latents, _ = model.encode_video(segs, image)
        decoded = model.codec.decode_continuation(model.encode_image(image), latents)
        through_codec = to_uint8(decoded).cpu()
    finally:
        model.train(was_training)
    out = []
    for i, probe in enumerate(probes):
        memory, error = score_colour(generated[i], probe)
        oracle, oracle_error = score_colour(probe.frames, probe)
        row = {
            "memory": memory,
            "chance": 1.0 / len(LANDMARK_COLOURS),
            "oracle": oracle,
            "oracle_codec": score_colour(through_codec[i], probe)[0],
            "colour_error": error,
            "colour_error_chance": chance_colour_error(probe),
            "colour_error_oracle": oracle_error,
            "memory_gates_shut": math.nan,
            "colour_error_gates_shut": math.nan,
        }
        if shut is not None:
            row["memory_gates_shut"], row["colour_error_gates_shut"] = score_colour(shut[i], probe)
        out.append(row)
    return out


def memory_probe(
    model: Any,
    probes: Sequence[ProbeVideo],
    seed: int = 0,
    batch_size: int = 8,
    gates_shut: bool | None = None,
    prefix_segments: int | None = None,
) -> dict[str, float]:
    """Mean over probes of `probe_video_scores` (NaN where no probe has a value), plus `videos`."""
    rows: list[dict[str, float]] = []
    for start in range(0, len(probes), batch_size):
        chunk = probes[start : start + batch_size]
        rows += probe_video_scores(model, chunk, seed + start, gates_shut, prefix_segments)
    result = {}
    for key in PROBE_KEYS:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        result[key] = math.fsum(values) / len(values) if values else math.nan
    result["videos"] = float(len(rows))
    return result


def _load(path: str) -> tuple[Any, dict[str, Any]]:
    from lightning_modules.loading import load_module, read_checkpoint  # stage 1 or stage 2

    checkpoint = read_checkpoint(path)
    model = load_module(checkpoint)
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    return model, data


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        prog="python -m eval.probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--ckpt", required=True, help="a Lightning checkpoint written by train.py")
    parser.add_argument("--num_videos", type=int, default=16, help="probe videos")
    parser.add_argument("--seed", type=int, default=0, help="probe set and sampling seed")
    parser.add_argument("--sample_steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--json", default=None, help="write the scores here")
    args = parser.parse_args(argv)
    model, data = _load(args.ckpt)
    if args.sample_steps is not None:
        model.hparams.sample_steps = args.sample_steps
    size = tuple(data.get("resolution", (32, 32)))
    segment_frames = int(data.get("segment_frames", 8))
    probes = probe_set(args.num_videos, size, segment_frames, seed=args.seed)
    scores = memory_probe(model, probes, seed=args.seed)
    print(f"memory probe of {args.ckpt} ({int(scores['videos'])} videos, {size[0]}x{size[1]}):")
    for key in PROBE_KEYS:
        print(f"  {key:<26}{scores[key]:>8.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({**scores, "checkpoint": args.ckpt}, indent=2) + "\n")
    return scores


if __name__ == "__main__":
    main()
