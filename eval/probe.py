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
- `return_psnr` (`return_psnr_gates_shut`): PSNR of the generated return segments against the
  truth, whole frames: what the rest of the picture pays for the colour (memory guidance);
- `memory_oracle_psi` (models with SemanticPack): psi stops updating after the prefix
  (`generate(memory_until=prefix)`), so it holds the landmark as well as psi ever can: what the
  DiT reads from a perfect memory (the read-in alone).
- `memory_first_return`, `memory_oracle_psi_first_return`: `memory` and `memory_oracle_psi`
  scored on the first return segment's frames only (NaN when the shutter is not fully open before
  it ends): where psi is read. The next return segments have the landmark in their own history,
  so there a model only has to carry forward what it painted.

By default the gap is TRUE (`gap="true"`): every frame up to the return is real, so FramePack's
history holds no frame of the landmark, the model's own rollout quality does not enter, and only
psi can carry the landmark to the return: the probe measures memory and nothing else.
`gap="generated"` continues from the prefix alone, as a user's continuation would; it then also
scores how the model's own gap frames hold up.

`standard errors` (`*_se`) are over probe videos. `psi_decodability` is the diagnostic beside it:
a linear classifier (ridge regression on one-hot colours) fitted on psi of half of its own probes
(`--decode_videos`, 256 by default) and tested on the other half, at the end of the prefix and at
the return (after the gap's updates): whether the landmark is still in psi at all, whatever the
DiT reads of it. psi has hundreds of dimensions, so the probe needs more videos than the scores:
fitted on 32 it reads about 30 points less than on 128 (README, issue 19).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from datamodules.synthetic.drawing import OBJECT_COLOURS
from datamodules.synthetic.probe_scene import LANDMARK_COLOURS, ProbeVideo, probe_set
from lightning_modules.codecs import to_uint8
from lightning_modules.memory_pack import MemoryPack, history_reach

__all__ = [
    "PROBE_KEYS",
    "memory_probe",
    "psi_decodability",
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
    "memory_oracle_psi",
    "memory_first_return",
    "memory_oracle_psi_first_return",
    "return_psnr",
    "return_psnr_gates_shut",
)
_PALETTE = torch.tensor([OBJECT_COLOURS[c] for c in LANDMARK_COLOURS], dtype=torch.float64)


def score_colour(
    frames: Tensor, probe: ProbeVideo, first_return: bool = False
) -> tuple[float, float]:
    """(correct 0/1, colour error) of uint8 frames [F, 3, H, W] in the probe's scored pixels;
    `first_return`: only those of the first return segment (NaN, NaN if it has none)."""
    if frames.shape != probe.frames.shape:
        raise ValueError(
            f"probe frames {tuple(frames.shape)} differ from the probe's {tuple(probe.frames.shape)}"
        )
    scored = probe.scored_frames
    if not scored:
        raise ValueError("the probe has no return frame with the landmark fully uncovered")
    if first_return:
        scored = [f for f in scored if f < probe.return_start + probe.segment_frames]
        if not scored:
            return math.nan, math.nan
    pixels = frames[scored].permute(1, 0, 2, 3)[:, probe.visible[scored]]  # [3, n]
    mean = pixels.double().mean(dim=1)
    nearest = int((_PALETTE - mean).norm(dim=1).argmin())
    truth = _PALETTE[LANDMARK_COLOURS.index(probe.colour)]
    return float(LANDMARK_COLOURS[nearest] == probe.colour), float((mean - truth).norm() / 255)


def return_psnr(frames: Tensor, probe: ProbeVideo) -> float:
    """PSNR (dB) of uint8 frames [F, 3, H, W] against the probe's truth over its return segments:
    the whole frame, so a memory that paints the right colour into a broken frame shows."""
    start = probe.return_start
    error = (frames[start:].double() - probe.frames[start:].double()).pow(2).mean()
    return float(10 * torch.log10(255.0**2 / error.clamp(min=1e-10)))


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
    `prefix_segments`: real segments continued (default: prefix + gap, the true gap); at least
    the schedule's prefix and at most prefix + gap, so the return is always generated.
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
    true_gap = schedule.prefix_segments + schedule.gap_segments
    given = true_gap if prefix_segments is None else prefix_segments
    if not schedule.prefix_segments <= given <= schedule.prefix_segments + schedule.gap_segments:
        raise ValueError(
            f"prefix_segments={given} must cover the prefix ({schedule.prefix_segments}) and "
            f"leave the return to generate (<= {schedule.prefix_segments + schedule.gap_segments})"
        )
    image, prefix = video[:, 0], video[:, : given * frames_per_segment]
    captions = [p.caption for p in probes]
    segments = schedule.num_segments

    def rollout(read_memory: bool = True, memory_until: int | None = None) -> Tensor:
        gen = torch.Generator(device=device).manual_seed(seed)
        return model.generate(
            image, captions, segments, gen, frames_per_segment=frames_per_segment, prefix=prefix,
            read_memory=read_memory, memory_until=memory_until,
        )  # fmt: skip

    was_training = model.training
    model.eval()
    try:
        generated = rollout()
        shut = oracle_psi = None
        if gates_shut if gates_shut is not None else model.semantic_pack is not None:
            shut = rollout(read_memory=False)
        if model.semantic_pack is not None:
            oracle_psi = rollout(memory_until=schedule.prefix_segments)
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
            "memory_oracle_psi": math.nan,
            "memory_first_return": score_colour(generated[i], probe, first_return=True)[0],
            "memory_oracle_psi_first_return": math.nan,
            "return_psnr": return_psnr(generated[i], probe),
            "return_psnr_gates_shut": math.nan,
        }
        if shut is not None:
            row["memory_gates_shut"], row["colour_error_gates_shut"] = score_colour(shut[i], probe)
            row["return_psnr_gates_shut"] = return_psnr(shut[i], probe)
        if oracle_psi is not None:
            row["memory_oracle_psi"] = score_colour(oracle_psi[i], probe)[0]
            row["memory_oracle_psi_first_return"] = score_colour(
                oracle_psi[i], probe, first_return=True
            )[0]
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
    """Mean over probes of `probe_video_scores` (NaN where no probe has a value), its standard
    error `<key>_se` over probes, plus `videos`."""
    rows: list[dict[str, float]] = []
    for start in range(0, len(probes), batch_size):
        chunk = probes[start : start + batch_size]
        rows += probe_video_scores(model, chunk, seed + start, gates_shut, prefix_segments)
    result = {}
    for key in PROBE_KEYS:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        mean = math.fsum(values) / len(values) if values else math.nan
        result[key] = mean
        spread = math.fsum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
        result[f"{key}_se"] = math.sqrt(spread / len(values)) if values else math.nan
    result["videos"] = float(len(rows))
    return result


@torch.no_grad()
def psi_at(model: Any, probes: Sequence[ProbeVideo], segments: int) -> Tensor:
    """psi [n, n_psi * width] after remembering the probes' first `segments` TRUE segments."""
    if model.semantic_pack is None:
        raise ValueError("psi_decodability needs a model with SemanticPack")
    device = next(model.parameters()).device
    f = probes[0].segment_frames
    video = _to_model(torch.stack([p.frames for p in probes]), device)
    image = video[:, 0]
    text = model.encode_text([p.caption for p in probes], image=image)
    pack = MemoryPack.start(model.dit, model.semantic_pack, text, model.encode_image(image))
    latents = model.codec.encode_video(video[:, : segments * f], image)
    frames = latents.shape[1] // segments
    for k in range(segments):
        pack.remember(latents[:, k * frames : (k + 1) * frames], k)
    return pack.psi.flatten(1).float().cpu()


def _ridge_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    """Accuracy of a ridge regression on one-hot classes (features standardised on train)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    onehot = torch.nn.functional.one_hot(train_y, len(LANDMARK_COLOURS)).double()
    a, b = a.double(), b.double()
    weights = torch.linalg.solve(a @ a.T + len(a) * torch.eye(len(a), dtype=a.dtype), onehot)
    predicted = (b @ (a.T @ weights)).argmax(1)  # kernel form: n_train x n_train, any width
    return float((predicted == test_y).double().mean())


def psi_decodability(model: Any, probes: Sequence[ProbeVideo]) -> dict[str, float]:
    """Landmark colour decoded linearly from psi (fit on even-indexed probes, tested on odd ones)
    right after the prefix (`decodable_prefix`) and at the return (`decodable_return`)."""
    if len(probes) < 4:
        raise ValueError(f"psi_decodability needs >= 4 probes, got {len(probes)}")
    schedule = probes[0].schedule
    labels = torch.tensor([LANDMARK_COLOURS.index(p.colour) for p in probes])
    out = {}
    for key, segments in (("decodable_prefix", schedule.prefix_segments),
                          ("decodable_return", schedule.prefix_segments + schedule.gap_segments)):  # fmt: skip
        psi = torch.cat(
            [psi_at(model, probes[i : i + 8], segments) for i in range(0, len(probes), 8)]
        )
        out[key] = _ridge_accuracy(psi[0::2], labels[0::2], psi[1::2], labels[1::2])
    out["decodable_chance"] = 1.0 / len(LANDMARK_COLOURS)
    return out


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
    parser.add_argument("--num_videos", type=int, default=64, help="probe videos")
    parser.add_argument("--gap", choices=("true", "generated"), default="true",
                        help="real frames up to the return (default), or generated from the prefix")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="probe set and sampling seed")
    parser.add_argument("--sample_steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--memory_guidance", type=float, default=None,
                        help="memory guidance w at sampling (pipeline.py); default: the model's")  # fmt: skip
    parser.add_argument("--decode_videos", type=int, default=256,
                        help="probe videos for psi_decodability (half fit the linear probe, half "
                        "test it; with 64 the probe is short of data: README)")  # fmt: skip
    parser.add_argument("--json", default=None, help="write the scores here")
    args = parser.parse_args(argv)
    model, data = _load(args.ckpt)
    if args.sample_steps is not None:
        model.hparams.sample_steps = args.sample_steps
    if args.memory_guidance is not None:
        model.hparams.memory_guidance = args.memory_guidance
    size = tuple(data.get("resolution", (32, 32)))
    segment_frames = int(data.get("segment_frames", 8))
    fps = float(data.get("fps", 8.0))
    probes = probe_set(args.num_videos, size, segment_frames, seed=args.seed, fps=fps)
    prefix = None if args.gap == "true" else probes[0].schedule.prefix_segments
    scores = memory_probe(model, probes, seed=args.seed, prefix_segments=prefix)
    if model.semantic_pack is not None and args.decode_videos >= 4:
        decode = probe_set(args.decode_videos, size, segment_frames, seed=args.seed, fps=fps)
        scores.update(psi_decodability(model, decode))
        scores["decode_videos"] = float(args.decode_videos)
    elif model.semantic_pack is not None:
        warnings.warn(
            f"--decode_videos {args.decode_videos} < 4: psi_decodability skipped", stacklevel=1
        )
    print(f"memory probe of {args.ckpt} ({int(scores['videos'])} videos, {size[0]}x{size[1]}, "
          f"{args.gap} gap):")  # fmt: skip
    for key in (*PROBE_KEYS, "decodable_prefix", "decodable_return", "decodable_chance"):
        if key in scores:
            se = scores.get(f"{key}_se")
            print(f"  {key:<26}{scores[key]:>8.3f}" + (f"  +- {se:.3f}" if se is not None else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({**scores, "checkpoint": args.ckpt}, indent=2) + "\n")
    return scores


if __name__ == "__main__":
    main()
