"""The memory probe: the landmark shows only in the prefix and the return, its return is scored
against the truth, and a model whose memory read-in is shut cannot know it."""

import copy
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from callbacks.rollout_eval import RolloutEvalCallback
from datamodules.synthetic import generate_dataset
from datamodules.synthetic.drawing import OBJECT_COLOURS
from datamodules.synthetic.probe_scene import (
    LANDMARK_COLOURS,
    ProbeSchedule,
    probe_set,
    render_probe_video,
)
from eval.probe import memory_probe, probe_video_scores, return_psnr, score_colour
from lightning_modules.video_module import VideoModule
from tests.helpers.tiny import F1_PACK, perturb, tiny_dit, tiny_module, tiny_pack

T = 4  # frames per segment
F1_HISTORY = 19  # FramePack-F1's (1, 2, 16) packing at temporal factor 1


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def probe_module(memory: bool) -> VideoModule:
    """A tiny model with F1's history window; memory gates opened so psi is read."""
    torch.manual_seed(0)
    dit, pack = tiny_dit(depth=1, frame_pack=F1_PACK), tiny_pack()
    module = tiny_module(pack if memory else None, dit=dit, seed=None, sample_steps=2)
    perturb(module)
    return module.eval()


def test_landmark_shows_only_in_the_prefix_and_the_return() -> None:
    schedule = ProbeSchedule()
    with_mark = render_probe_video(11, (32, 32), T, schedule)
    without = render_probe_video(11, (32, 32), T, schedule, landmark=False)
    differs = (with_mark.frames != without.frames).flatten(1).any(dim=1)
    prefix, reopen = with_mark.prefix_frames, with_mark.return_start
    assert not differs[0]  # the reference image
    assert not differs[prefix - 1 : reopen].any()  # shut from the prefix's last frame to reopening
    assert differs[1:prefix].any() and differs[reopen:].all()
    assert with_mark.frames.shape[0] == schedule.num_segments * T
    assert with_mark.caption == without.caption  # the caption never mentions the landmark
    assert with_mark.scored_frames and min(with_mark.scored_frames) > reopen
    with_mark.check_history(F1_HISTORY)
    with pytest.raises(ValueError, match="within the 19-frame history"):
        render_probe_video(11, (32, 32), T, ProbeSchedule(gap_segments=4)).check_history(19)
    with pytest.raises(ValueError, match="full_history"):
        with_mark.check_history(math.inf)


def test_scorer_reads_the_landmark_colour_in_its_pixels() -> None:
    probe = probe_set(1, (32, 32), T, seed=3)[0]
    truth = score_colour(probe.frames, probe)
    assert truth[0] == 1.0 and 0 < truth[1] < 0.05  # stored as mp4: its chroma moves a little
    raw = render_probe_video(5, (32, 32), T)
    assert score_colour(raw.frames, raw) == (1.0, 0.0)  # the render itself is exact
    wrong = next(c for c in LANDMARK_COLOURS if c != probe.colour)
    painted = probe.frames.clone()
    mask = probe.visible[:, None].expand_as(painted)
    painted[mask] = torch.tensor(OBJECT_COLOURS[wrong], dtype=torch.uint8)[:, None, None].expand_as(
        painted
    )[mask]
    correct, error = score_colour(painted, probe)
    assert correct == 0.0 and error > 0.2
    unscored = probe.frames.clone()
    unscored[: probe.return_start] = 0  # only the return frames count
    assert score_colour(unscored, probe) == truth
    # The first return segment alone: painted wrong after it, right in it.
    first_end = probe.return_start + probe.segment_frames
    later = probe.frames.clone()
    later[first_end:] = painted[first_end:]
    assert score_colour(later, probe, first_return=True)[0] == 1.0
    assert score_colour(later, probe)[0] == 0.0  # the later frames outnumber the first's
    early = probe.frames.clone()
    early[:first_end] = painted[:first_end]
    assert score_colour(early, probe, first_return=True)[0] == 0.0
    # 2-frame segments: the shutter (3 frames of travel) is not open before the first one ends.
    short = render_probe_video(5, (32, 32), 2, ProbeSchedule(prefix_segments=4, gap_segments=10))
    assert all(math.isnan(v) for v in score_colour(short.frames, short, first_return=True))
    assert score_colour(short.frames, short) == (1.0, 0.0)


def test_return_psnr_scores_the_whole_return_and_nothing_before() -> None:
    probe = probe_set(1, (32, 32), T, seed=3)[0]
    assert return_psnr(probe.frames, probe) > 100  # identical frames (error clamped)
    start = probe.return_start  # the return's first frame
    before = probe.frames.clone()
    before[:start] = 0
    assert return_psnr(before, probe) > 100
    noisy = probe.frames.clone()
    noisy[start] = noisy[start] // 2  # one return frame darkened
    assert 5 < return_psnr(noisy, probe) < 40


def test_shut_memory_cannot_know_the_landmark_and_open_memory_can() -> None:
    """Two probes that differ only by the landmark, continued through the (true) gap: with the
    read-in gates shut (psi never read), or without SemanticPack, the generated return is identical, because
    FramePack's history no longer holds the landmark; with the gates open, psi carries it."""
    probe = render_probe_video(5, (32, 32), T)
    blank = render_probe_video(5, (32, 32), T, landmark=False)
    through_gap = probe.return_start  # frames: prefix + gap

    def returns(model: VideoModule, video: torch.Tensor, shut: bool) -> torch.Tensor:
        x = video[None].float() / 127.5 - 1
        gen = torch.Generator().manual_seed(0)
        out = model.generate(x[:, 0], [probe.caption], 10, gen, frames_per_segment=T,
                             prefix=x[:, :through_gap], read_memory=not shut)  # fmt: skip
        return out[0, through_gap:]

    module = probe_module(memory=True)
    assert not torch.equal(
        returns(module, probe.frames, False), returns(module, blank.frames, False)
    )
    assert torch.equal(returns(module, probe.frames, True), returns(module, blank.frames, True))
    shut = copy.deepcopy(module)  # `read_memory=False` is exactly the read-in gates at 0
    with torch.no_grad():
        for block in shut.dit.blocks:
            block.attn.memory_gate.zero_()
    assert torch.equal(returns(module, probe.frames, True), returns(shut, probe.frames, False))
    f1 = probe_module(memory=False)
    assert torch.equal(returns(f1, probe.frames, False), returns(f1, blank.frames, False))
    # The probe's scores with the true gap: the same cut, so both pass the same checks.
    rows = probe_video_scores(module, [probe], prefix_segments=8)
    assert set(rows[0]) >= {"memory", "memory_gates_shut"}
    with pytest.raises(ValueError, match="prefix_segments=9 must cover"):
        probe_video_scores(module, [probe], prefix_segments=9)


def test_memory_probe_reports_chance_oracle_and_gates_shut() -> None:
    probes = probe_set(3, (32, 32), T, seed=1)
    scores = memory_probe(probe_module(memory=True), probes, batch_size=2)
    assert scores["videos"] == 3.0 and scores["chance"] == 1 / 8
    assert scores["oracle"] == 1.0 and scores["oracle_codec"] == 1.0  # lossless codec
    # The oracle is the stored (mp4) truth: right every time, its colour a little off.
    assert scores["colour_error_oracle"] < 0.05 and scores["colour_error_chance"] > 0.3
    assert 0.0 <= scores["memory"] <= 1.0 and 0.0 <= scores["memory_gates_shut"] <= 1.0
    rows = probe_video_scores(probe_module(memory=False), probes[:1])
    assert rows[0]["memory_gates_shut"] != rows[0]["memory_gates_shut"]  # NaN: no gates


def test_training_set_mixes_in_probe_videos(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "d", num_train=1, num_val=1, min_segments=1,
                            max_segments=2, segment_frames=T, fps=8.0, size=(32, 32), seed=0,
                            probe_train=2)  # fmt: skip
    lines = [json.loads(x) for x in (root / "metadata.jsonl").read_text().splitlines()]
    probes = [x for x in lines if "probe" in x["path"]]
    assert len(lines) == 4 and len(probes) == 2 and all(x["split"] == "train" for x in probes)
    assert all("shutter" in x["caption"] for x in probes)
    held_out = {p.caption for p in probe_set(8, (32, 32), T)}
    assert not held_out & {x["caption"] for x in probes}  # odd vs even seeds
    plain = generate_dataset(tmp_path / "p", 1, 1, 1, 2, T, 8.0, (32, 32), 0)
    assert "probe_train" not in json.loads((plain / ".synthetic.json").read_text())


def test_memory_focus_trains_probe_videos_on_their_return(tmp_path: Path) -> None:
    from datamodules.video_dataset import VideoFolderDataset, collate_videos

    root = generate_dataset(tmp_path / "d", num_train=2, num_val=1, min_segments=2,
                            max_segments=2, segment_frames=T, fps=8.0, size=(32, 32), seed=0,
                            probe_train=2)  # fmt: skip
    schedule = ProbeSchedule()
    data = VideoFolderDataset(root, "train", T, 8.0, (32, 32))
    batch = collate_videos([data[i] for i in range(len(data))])
    ret = schedule.prefix_segments + schedule.gap_segments
    assert batch["focus_segment"].tolist() == [-1, -1, ret, ret]  # scene videos have none
    module = probe_module(memory=True)
    for p, want in ((0.0, None), (1.0, ret)):
        module.hparams.memory_focus = p
        seg = module.teacher_forcing_batch(batch, torch.Generator().manual_seed(3))[1]
        if want is not None:
            assert seg[2:].tolist() == [want, want]
        else:  # no focus: the uniform draw of the scene videos and the probes
            base = module.teacher_forcing_batch(
                {**batch, "focus_segment": torch.full((4,), -1)}, torch.Generator().manual_seed(3)
            )[1]
            assert seg.tolist() == base.tolist()
    assert seg[:2].max() <= 1  # the scene videos keep drawing among their own two segments


def test_memory_gates_get_their_own_rate_and_start() -> None:
    torch.manual_seed(0)
    module = tiny_module(tiny_pack(), memory_lr_scale=10.0, memory_gate_init=0.25, lr=1e-3)
    gates = module.memory_gates()
    assert gates and all(torch.all(g == 0.25) for g in gates)
    module.trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False)
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["initial_lr"] for g in groups] == [1e-3, 1e-2]  # before the warm-up factor
    assert {id(p) for p in groups[1]["params"]} == {id(g) for g in gates}
    plain = tiny_module(tiny_pack()).configure_optimizers()["optimizer"].param_groups
    assert len(plain) == 1  # scale 1: one group, as checkpoints of earlier runs hold


class _TestOnlyModule(VideoModule):
    def test_step(self, batch: Any, batch_idx: int) -> None:  # the loop only drives the callback
        pass


class _ProbeData(L.LightningDataModule):
    resolution, segment_frames, fps = (32, 32), T, 8.0

    def __init__(self) -> None:
        super().__init__()
        video = render_probe_video(2, (32, 32), T).frames.float() / 127.5 - 1
        self.val_set = [{"image": video[0], "caption": "c", "video": video.unflatten(0, (-1, T))}]

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.ones(1, 1)), batch_size=1)


def test_eval_callback_logs_the_probe(tmp_path: Path) -> None:
    """RolloutEvalCallback(probe_videos=2) logs eval/probe/... next to the Tab. 1 metrics and
    keeps them, with the per-segment curves, in `results` / `curves` for the study."""
    callback = RolloutEvalCallback(
        lengths={"short": 2}, num_videos=1, probe_videos=2, output_dir=str(tmp_path),
        backends={"subject": "pixel", "imaging": "unavailable", "flow": "unavailable",
                  "interpolation": "unavailable"},
    )  # fmt: skip
    base = probe_module(memory=True)
    module = _TestOnlyModule(base.dit, base.codec, base.text_encoder, base.semantic_pack,
                             sample_steps=2)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[callback],
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.test(module, datamodule=_ProbeData())
    metrics = trainer.callback_metrics
    assert float(metrics["eval/probe/chance"]) == 1 / 8
    assert float(metrics["eval/probe/oracle"]) == 1.0
    assert "eval/probe/memory_gates_shut" in metrics
    assert callback.results["probe"]["memory"] == float(metrics["eval/probe/memory"])
    assert "subject_consistency@pixel" in callback.results["short"]
    assert "short/ground_truth" in callback.results
    assert len(callback.curves["short"]["subject_consistency@pixel"]) == 2  # per segment


def test_true_gap_is_the_default_and_scores_carry_standard_errors() -> None:
    probes = probe_set(3, (32, 32), T, seed=2)
    module = probe_module(memory=True)
    prefixes = []
    real_generate = module.generate

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        prefixes.append(kwargs["prefix"].shape[1])
        return real_generate(*args, **kwargs)

    module.generate = spy  # type: ignore[method-assign]
    scores = memory_probe(module, probes, batch_size=3)
    schedule = probes[0].schedule
    assert set(prefixes) == {(schedule.prefix_segments + schedule.gap_segments) * T}
    assert scores["oracle_se"] == 0.0 and scores["chance_se"] == 0.0
    assert 0 <= scores["memory_se"] <= 0.5


def test_psi_decodability_reads_what_psi_holds() -> None:
    from eval.probe import _ridge_accuracy, psi_decodability

    gen = torch.Generator().manual_seed(0)
    labels = (torch.arange(64) // 2) % 8  # each class on both sides of the even/odd split
    informative = torch.nn.functional.one_hot(labels, 8).float().repeat(1, 4)
    informative = informative + 0.1 * torch.randn(64, 32, generator=gen)
    noise = torch.randn(64, 32, generator=gen)
    assert _ridge_accuracy(informative[0::2], labels[0::2], informative[1::2], labels[1::2]) == 1.0
    assert _ridge_accuracy(noise[0::2], labels[0::2], noise[1::2], labels[1::2]) < 0.4
    out = psi_decodability(probe_module(memory=True), probe_set(8, (32, 32), T, seed=4))
    assert 0 <= out["decodable_prefix"] <= 1 and out["decodable_chance"] == 1 / 8
    with pytest.raises(ValueError, match="SemanticPack"):
        psi_decodability(probe_module(memory=False), probe_set(4, (32, 32), T, seed=4))


def test_oracle_psi_stops_at_the_landmark_in_training_and_in_the_probe(monkeypatch) -> None:  # noqa: ANN001
    from lightning_modules.memory_pack import MemoryPack

    module = probe_module(memory=True)
    latents = torch.randn(2, 4 * 2, 12, 8, 8)
    text = module.encode_text(["a", "b"])
    image = torch.randn(2, 1, 12, 8, 8)
    seg = torch.tensor([3, 3])
    args = (module.dit, module.semantic_pack, latents, 2, seg, text, image)
    oracle = MemoryPack.teacher_forced(*args, memory_index=torch.tensor([1, 3]))
    plain = MemoryPack.teacher_forced(*args)
    early = MemoryPack.teacher_forced(*args[:4], torch.tensor([1, 1]), *args[5:])
    torch.testing.assert_close(oracle.history, plain.history)  # FramePack sees the same past
    torch.testing.assert_close(oracle.memory[0], early.memory[0])  # psi after segment 0 only
    torch.testing.assert_close(oracle.memory[1], plain.memory[1])
    # MemoryPack.remember without Eq. 1: history grows, psi stays.
    pack = MemoryPack.start(module.dit, module.semantic_pack, text, image)
    psi = pack.psi.clone()
    pack.remember(latents[:, :2], 0, update_psi=False)
    torch.testing.assert_close(pack.psi, psi)
    assert torch.equal(pack.history[:, -2:], latents[:, :2])
    # Training: a focus target reads psi up to `focus_memory`, others their own segment.
    seen = []
    real = MemoryPack.teacher_forced
    monkeypatch.setattr(MemoryPack, "teacher_forced",
                        staticmethod(lambda *a: seen.append(a[-1]) or real(*a)))  # fmt: skip
    batch = {"latents": latents.reshape(2, 4, 2, 12, 8, 8), "image_latent": image,
             "image": torch.zeros(2, 3, 16, 16), "caption": ["a", "b"],
             "num_segments": torch.tensor([4, 4]), "focus_segment": torch.tensor([3, -1]),
             "focus_memory": torch.tensor([1, -1])}  # fmt: skip
    module.hparams.memory_focus, module.hparams.memory_oracle = 1.0, True
    module.teacher_forcing_loss(batch, generator=torch.Generator().manual_seed(0))
    chosen = module.teacher_forcing_batch(batch, torch.Generator().manual_seed(0))[1]
    assert seen[-1].tolist() == [1, int(chosen[1])]
