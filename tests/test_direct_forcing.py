"""Stage 2 (Direct Forcing): trainable set, history modes, accumulation, curriculum, resume, CLI."""

import fnmatch
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from benchmarks.generation_quality import main as generation_quality_main
from datamodules.curriculum import CurriculumBatchSampler, LengthCurriculum
from datamodules.video_datamodule import VideoDataModule
from datamodules.video_dataset import collate_videos
from lightning_modules import rectified_flow as rf
from lightning_modules.codec import SpaceToDepthCodec
from lightning_modules.direct_forcing import DirectForcingModule
from lightning_modules.dit import VideoDiT
from lightning_modules.frame_pack import gather_history
from lightning_modules.load_checkpoint import load_module
from lightning_modules.semantic_pack import SemanticPack
from lightning_modules.stage1_checkpoint import architecture_of
from lightning_modules.text_encoder import HashTextEncoder
from lightning_modules.video_module import VideoModule
from train import main

ROOT = Path(__file__).resolve().parents[1]


def parts(
    width: int = 32, patch: int = 2, channels: int = 12, text_dim: int = 16,
    context: str = "framepack", memory: bool = False,
) -> dict:  # fmt: skip
    dit = VideoDiT(
        latent_channels=channels, text_dim=text_dim, width=width, depth=1, heads=2,
        frame_pack=(1, 2, 4), context=context,
    )  # fmt: skip
    pack = SemanticPack(
        latent_channels=channels, text_dim=text_dim, width=width, memory_tokens=4, heads=2,
        window_frames=2,
    )  # fmt: skip
    return {
        "dit": dit,
        "codec": SpaceToDepthCodec(patch),
        "text_encoder": HashTextEncoder(text_dim),
        **({"semantic_pack": pack} if memory else {}),
    }


def stage1_checkpoint(path: Path, **kwargs: Any) -> Path:
    """A 'trained' stage-1 checkpoint in Lightning's format (weights perturbed off their init)."""
    module = VideoModule(**parts(**kwargs))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return stage1_checkpoint(tmp_path_factory.mktemp("stage1") / "stage1.ckpt")


def stage2(ckpt: Path, **kwargs: Any) -> DirectForcingModule:
    """Stage 2 on the checkpoint's architecture (its saved hyperparameters hold the modules)."""
    return DirectForcingModule(init_checkpoint=str(ckpt), warmup_steps=1, lr=1e-2, **kwargs)


def videos(lengths: list[int], t: int = 2, size: int = 8) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    items = []
    for i, n in enumerate(lengths):
        video = torch.rand(n, t, 3, size, size, generator=gen) * 2 - 1
        items.append({"video": video, "image": video[0, 0].clone(), "caption": f"clip {i}",
                      "num_segments": n, "name": f"v{i}"})  # fmt: skip
    return items


def fit(
    module: L.LightningModule, lengths: list[int], batch_size: int = 1, **kwargs: Any
) -> L.Trainer:
    loader = DataLoader(videos(lengths), batch_size=batch_size, collate_fn=collate_videos)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=1, **kwargs,
    )  # fmt: skip
    trainer.fit(module, loader)
    return trainer


class Recorder(L.Callback):
    def __init__(self) -> None:
        self.modes: list[tuple[bool, bool, int]] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        frozen = list(module.frozen_modules(module))
        self.modes.append((any(m.training for m in frozen), module.dit.head.training, len(frozen)))


def record_segments(module: DirectForcingModule) -> list[dict[str, Any]]:
    """Wrap flow_loss and store_history so a test sees what the loss used and what was stored.

    Each call also keeps its arguments and the global RNG state before and after it (the loss
    draws t and eps from it; the student sampler then draws its noise), so a test can redo it.
    """
    calls: list[dict[str, Any]] = []
    flow_loss = module.flow_loss

    def wrapped(x: torch.Tensor, seg: torch.Tensor, history: torch.Tensor, *a: Any) -> tuple:
        before = torch.get_rng_state()
        out = flow_loss(x, seg, history, *a)
        calls.append({
            "x": x, "history": history.clone(), "x_t": out[1], "t": out[2], "v": out[3],
            "args": (x, seg, history.clone(), *a), "rng": before, "rng_after": torch.get_rng_state(),
        })  # fmt: skip
        return out

    module.flow_loss = wrapped  # type: ignore[method-assign]
    module.store_history = lambda i, h: calls[-1].__setitem__("stored", h.clone())  # type: ignore[method-assign]
    return calls


def test_one_step_changes_only_the_trainable_parameters(ckpt: Path) -> None:
    module = stage2(ckpt)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = fit(module, [3], max_steps=1)
    assert trainer.global_step == 1
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {k for k, _ in module.named_parameters() if fnmatch.fnmatch(k, "dit.head.*")}
    assert trainable == {n for n, p in module.named_parameters() if p.requires_grad}
    assert changed == trainable, changed ^ trainable
    assert len(before) == len(after) and len(trainable) == 4  # modulation + linear, w and b


def test_frozen_modules_stay_in_eval_mode_during_training(ckpt: Path) -> None:
    rec = Recorder()
    fit(stage2(ckpt), [2, 2], callbacks=[rec])
    assert rec.modes, "no batch recorded"
    for any_frozen_training, head_training, n_frozen in rec.modes:
        assert n_frozen >= 5 and not any_frozen_training and head_training


@pytest.mark.parametrize("mode", ["direct", "teacher"])
def test_stored_history_is_the_one_step_estimate_or_the_truth(ckpt: Path, mode: str) -> None:
    module = stage2(ckpt, history=mode)
    calls = record_segments(module)
    fit(module, [3], max_steps=1)
    assert len(calls) == 3
    frames = calls[0]["x"].shape[1]
    for i, call in enumerate(calls):
        estimate = rf.one_step_estimate(call["x_t"], call["v"].detach(), call["t"])
        expected = estimate if mode == "direct" else call["x"]
        torch.testing.assert_close(call["stored"], expected)
        if mode == "direct":  # the estimate really is not the data the loss was fitted to
            assert not torch.allclose(call["stored"], call["x"], atol=1e-3)
        if i + 1 < len(calls):  # and it is what the next segment conditions on
            torch.testing.assert_close(calls[i + 1]["history"][:, -frames:], call["stored"])
    if mode == "teacher":  # the running buffer is exactly stage 1's ground-truth history
        truth = torch.cat([c["x"] for c in calls], dim=1)
        start = torch.tensor([2 * frames])
        torch.testing.assert_close(calls[2]["history"], gather_history(truth, start, 7))


def test_semantic_pack_memory_runs_on_the_one_step_estimate(tmp_path: Path) -> None:
    """MemoryPack in stage 2: psi_0 from prompt + image, then psi_{i+1} = SemanticPack(psi_i,
    x~^i) with the stored one-step estimate (Eq. 1 on inference-like history), not the truth."""
    torch.manual_seed(0)
    ckpt = stage1_checkpoint(tmp_path / "memorypack.ckpt", memory=True)
    module = DirectForcingModule(
        init_checkpoint=str(ckpt), warmup_steps=1, prompt_dropout=0.0, **parts(memory=True)
    )
    calls = record_segments(module)
    fit(module, [3], max_steps=1)
    pack = module.semantic_pack  # frozen: the step left it unchanged
    text, image = module.text_encoder(["clip 0"]), calls[0]["args"][3]
    with torch.no_grad():
        psi = pack.init(text[0], image)
        for i, call in enumerate(calls):
            torch.testing.assert_close(call["args"][5], psi)
            truth = pack(psi, call["x"], step=i)
            psi = pack(psi, call["stored"], step=i)
            assert not torch.allclose(psi, truth, atol=1e-4)  # the estimate is what counts
    assert len(calls) == 3 and not torch.allclose(calls[2]["args"][5], calls[0]["args"][5])


def test_student_history_runs_the_sampler(ckpt: Path) -> None:
    """The stored history is k Euler steps (Eq. 6) from fresh noise, with the weights that
    produced the segment's loss: redone here by hand from the same noise."""
    module = stage2(ckpt, history="student", student_steps=2)
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    calls = record_segments(module)
    fit(module, [2], max_steps=1)
    module.load_state_dict(weights)  # the step came after both segments' histories
    call = calls[0]
    x, seg, history, image, text, psi = call["args"][:6]
    torch.set_rng_state(call["rng_after"])  # the sampler's noise is the next draw
    sample = torch.randn_like(x)
    with torch.no_grad():
        for t in (0.0, 0.5):  # 2 Euler steps of dt = 1/2 from t = 0 (noise) to 1 (data)
            v = module.dit(sample, torch.full((1,), t), seg, history, image, *text, memory=psi)
            sample = sample + 0.5 * v
    torch.testing.assert_close(call["stored"], sample)
    estimate = rf.one_step_estimate(call["x_t"], call["v"], call["t"])
    assert not torch.allclose(call["stored"], estimate, atol=1e-4)
    assert not torch.allclose(call["stored"], call["x"], atol=1e-4)


def test_full_history_context_conditions_on_every_stored_segment(tmp_path: Path) -> None:
    """`context: full_history` in stage 2: segment i reads all i earlier stored estimates."""
    torch.manual_seed(0)
    ckpt = stage1_checkpoint(tmp_path / "full.ckpt", context="full_history")
    module = DirectForcingModule(
        init_checkpoint=str(ckpt), warmup_steps=1, **parts(context="full_history")
    )
    calls = record_segments(module)
    fit(module, [3, 2], batch_size=2)  # ragged: the second video stops after 2 segments
    frames = calls[0]["x"].shape[1]
    assert [c["history"].shape[:2] for c in calls] == [(2, 0), (2, frames), (1, 2 * frames)]
    torch.testing.assert_close(calls[1]["history"], calls[0]["stored"])
    past = torch.cat((calls[0]["stored"][:1], calls[1]["stored"][:1]), dim=1)
    torch.testing.assert_close(calls[2]["history"], past)


class GradientProbe(L.Callback):
    """Checks, before every optimizer step, that the accumulated gradient of the trainable
    parameters is the sum over the window's segments of grad(segment loss) / window size."""

    def __init__(self, calls: list[dict[str, Any]], flow_loss: Any) -> None:
        self.calls, self.flow_loss = calls, flow_loss
        self.done = 0  # calls already checked (earlier windows)
        self.windows: list[int] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, module: Any, optimizer: Any) -> None:
        params = [p for p in module.parameters() if p.requires_grad]
        window = self.calls[self.done :]
        self.done = len(self.calls)
        self.windows.append(len(window))
        state = torch.get_rng_state()
        expected = [torch.zeros_like(p) for p in params]
        for call in window:  # redo each segment's loss: same inputs, same t and eps draws
            torch.set_rng_state(call["rng"])
            with torch.enable_grad():
                loss = self.flow_loss(*call["args"])[0]
                grads = torch.autograd.grad(loss, params)
            expected = [e + g / len(window) for e, g in zip(expected, grads, strict=True)]
        torch.set_rng_state(state)
        assert all(e.abs().sum() > 0 for e in expected)  # every trainable tensor gets gradient
        for p, e in zip(params, expected, strict=True):
            torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("per_step", "windows"), [(None, [3, 3]), (2, [2, 1, 2, 1]), (1, [1] * 6)])
def test_one_optimizer_step_per_video_or_window(
    ckpt: Path, per_step: int | None, windows: list[int]
) -> None:
    module = stage2(ckpt, segments_per_step=per_step)
    flow_loss = module.flow_loss
    probe = GradientProbe(record_segments(module), flow_loss)
    trainer = fit(module, [3, 3], callbacks=[probe])
    assert trainer.global_step == len(windows)
    assert probe.windows == windows  # the segments each step accumulated


def test_ddp_all_reduces_once_per_optimizer_step(ckpt: Path) -> None:
    """A real (1-process, gloo) DDP run: count the gradient all-reduces with a comm hook."""
    reduces: list[int] = []

    def count(
        state: object, bucket: torch.distributed.GradBucket
    ) -> torch.futures.Future[torch.Tensor]:
        reduces.append(bucket.buffer().numel())
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    class Hook(L.Callback):
        def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
            assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
            trainer.model.register_comm_hook(None, count)

    try:
        strategy = DDPStrategy(process_group_backend="gloo")
        trainer = fit(stage2(ckpt), [3, 2], strategy=strategy, devices=1, callbacks=[Hook()])
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert trainer.global_step == 2
    assert len(reduces) == 2  # 5 backward passes, 2 steps: no all-reduce inside a video


def test_ragged_batch_skips_padding_segments(ckpt: Path) -> None:
    module = stage2(ckpt)
    calls = record_segments(module)
    fit(module, [1, 3], batch_size=2)
    assert [c["x"].shape[0] for c in calls] == [2, 1, 1]


def test_curriculum_admits_longer_videos_in_sorted_order() -> None:
    lengths = [3, 1, 2, 1, 4, 2, 1, 3]
    cur = LengthCurriculum(start_segments=1, grow_every=2, seed=0)
    sampler = CurriculumBatchSampler(lengths, batch_size=2, curriculum=cur)
    seen = [[lengths[i] for i in batch] for epoch in range(3) for batch in sampler]
    assert all(len(set(b)) == 1 for b in seen)  # a batch never mixes lengths
    per_batch = [b[0] for b in seen]
    assert per_batch[:2] == [1, 1] and max(per_batch) == 4
    assert all(n <= 1 + k // 2 for k, n in enumerate(per_batch))  # never ahead of the schedule
    assert cur.batches_seen == len(seen) and cur.max_segments(4) == 4
    everything = LengthCurriculum(start_segments=4, grow_every=1)  # one pass over all, sorted
    sampler = CurriculumBatchSampler(lengths, 2, everything)
    flat = [lengths[i] for _ in range(2) for batch in sampler for i in batch]
    assert flat[: len(lengths)] == sorted(lengths)
    short_free = CurriculumBatchSampler([3, 2, 3], 1, LengthCurriculum(grow_every=10))
    assert [b for b in short_free] == [[1], [1], [1]]  # no 1-segment video: start at the shortest


def test_curriculum_shards_equal_length_batches_across_ranks() -> None:
    lengths = [1, 1, 1, 2, 2, 2, 2, 3]
    ranks = [
        list(CurriculumBatchSampler(lengths, 1, LengthCurriculum(4), num_replicas=2, rank=r))
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 4
    for b0, b1 in zip(*ranks, strict=True):
        assert lengths[b0[0]] == lengths[b1[0]]  # same segment count on every rank
    assert [lengths[b[0]] for b in ranks[0]] == [1, 1, 2, 2]
    assert ranks[0][:2] != ranks[1][:2]  # different videos where there are enough


def test_missing_or_mismatched_stage1_checkpoint_fails_clearly(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist: stage 2 starts from stage-1"):
        stage2(tmp_path / "nope.ckpt")
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    torch.save({"state_dict": state}, tmp_path / "bare.ckpt")  # weights only, no hyperparameters
    with pytest.raises(ValueError, match="no saved hyperparameters .* pass dit"):
        stage2(tmp_path / "bare.ckpt")
    assert stage2(tmp_path / "bare.ckpt", **parts()).dit.width == 32  # explicit: used as given
    with pytest.raises(ValueError, match=r"shape mismatches .*dit.x_embed.weight: checkpoint"):
        stage2(tmp_path / "bare.ckpt", **parts(width=16))
    state["dit.extra"] = torch.zeros(1)
    del state["dit.head.linear.bias"]
    torch.save({"state_dict": state}, tmp_path / "keys.ckpt")
    with pytest.raises(ValueError, match=r"missing keys \(1\): dit.head.linear.bias; unexpected"):
        stage2(tmp_path / "keys.ckpt", **parts())
    with pytest.raises(ValueError, match="trainable pattern 'dit.nothing.\\*' matches no"):
        stage2(ckpt, trainable=["dit.nothing.*"])


def test_architecture_comes_from_the_checkpoint_and_overrides_must_match(ckpt: Path) -> None:
    """A stage-1 run outside the CLI saves its modules in the hyperparameters: stage 2 rebuilds
    them; an explicit part equal to stage 1's is accepted, a different one is refused, also where
    the weights' shapes agree (RoPE layout and base)."""
    stage1 = torch.load(ckpt, weights_only=False)["hyper_parameters"]
    module = stage2(ckpt)
    for part in ("dit", "codec", "text_encoder"):
        assert architecture_of(getattr(module, part)) == architecture_of(stage1[part]), part
    assert module.semantic_pack is None  # stage 1 had none
    same = parts()
    assert stage2(ckpt, **same).dit is same["dit"]  # equal to stage 1's: used as given
    relative = parts()["dit"]
    relative.rope_layout = "relative"
    with pytest.raises(ValueError, match="dit.rope_layout: given 'relative', stage 1 'absolute'"):
        stage2(ckpt, dit=relative)
    theta = VideoDiT(
        latent_channels=12, text_dim=16, width=32, depth=1, heads=2, frame_pack=(1, 2, 4),
        rope_theta=500.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="dit.rope.inv_freq_t: given"):
        stage2(ckpt, dit=theta)
    pack = SemanticPack(latent_channels=12, text_dim=16, width=32, memory_tokens=4, heads=2)
    with pytest.raises(ValueError, match="semantic_pack: given SemanticPack, stage 1 None"):
        stage2(ckpt, semantic_pack=pack)


class CapRecorder(L.Callback):
    def __init__(self) -> None:
        self.caps: list[tuple[int, int]] = []  # (curriculum max length, batch length)

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: dict, *a: Any) -> None:
        cap = trainer.datamodule.curriculum_max_segments
        self.caps.append((cap, int(batch["num_segments"].max())))


class CurriculumData(L.LightningDataModule):
    """In-memory videos behind the curriculum sampler, with VideoDataModule's schedule property."""

    curriculum_max_segments = VideoDataModule.curriculum_max_segments

    def __init__(self, lengths: list[int], curriculum: LengthCurriculum) -> None:
        super().__init__()
        self.curriculum = curriculum
        self.train_set = SimpleNamespace(items=videos(lengths), lengths=lengths)

    def train_dataloader(self) -> DataLoader:
        sampler = CurriculumBatchSampler(self.train_set.lengths, 1, self.curriculum)
        items = self.train_set.items
        return DataLoader(items, batch_sampler=sampler, collate_fn=collate_videos)


class DrawnRecorder(L.Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[float, int]] = []  # (logged curriculum length, batch length)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: Any, out: Any, batch: dict, *a: Any
    ) -> None:
        logged = float(trainer.callback_metrics["train/curriculum_max_segments"])
        self.rows.append((logged, int(batch["num_segments"].max())))


def test_logged_curriculum_length_is_the_batch_drawn(ckpt: Path) -> None:
    """The pass walks three 1-segment videos before the 2-segment one although the schedule
    admits 2 segments from batch 1 on: the log must show what was trained, not the schedule."""
    lengths = [1, 1, 1, 2]
    data = CurriculumData(lengths, LengthCurriculum(start_segments=1, grow_every=1))
    rec = DrawnRecorder()
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=4, callbacks=[rec],
    )  # fmt: skip
    trainer.fit(stage2(ckpt), data)
    assert [drawn for _, drawn in rec.rows] == [1, 1, 1, 2]  # the schedule's cap: 1, 2, 2, 2
    assert [logged for logged, _ in rec.rows] == [1.0, 1.0, 1.0, 2.0]


def test_resume_mid_curriculum_continues_at_saved_length(tmp_path: Path) -> None:
    ckpt1 = stage1_checkpoint(tmp_path / "s1.ckpt", patch=4, channels=48)

    def run(max_steps: int, resume: str | None) -> tuple[L.Trainer, CapRecorder]:
        dm = VideoDataModule(
            data_dir=str(tmp_path / "data"), resolution=(16, 16), segment_frames=2, batch_size=1,
            num_train_videos=8, num_val_videos=1, max_segments=3,
            curriculum=LengthCurriculum(start_segments=1, grow_every=2),
        )  # fmt: skip
        model = DirectForcingModule(init_checkpoint=str(ckpt1), **parts(patch=4, channels=48))
        rec = CapRecorder()
        trainer = L.Trainer(
            accelerator="cpu", logger=False, max_steps=max_steps, limit_val_batches=0,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[rec],
            default_root_dir=tmp_path, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(model, dm, ckpt_path=resume, weights_only=False)
        return trainer, rec

    first, rec1 = run(4, None)
    shortest = min(first.datamodule.train_set.lengths)
    assert rec1.caps[0] == (shortest, shortest)  # a fresh run starts on the shortest videos
    path = first.checkpoint_callback.best_model_path
    saved = torch.load(path, weights_only=False)["VideoDataModule"]["curriculum"]
    assert saved["batches_seen"] >= 3
    saved_cap = min(max(1 + saved["batches_seen"] // 2, shortest), 3)
    assert saved_cap > shortest
    lengths = first.datamodule.train_set.lengths
    _, rec = run(5, path)
    assert rec.caps, "resumed run trained no batch"
    assert rec.caps[0][0] >= saved_cap  # a fresh curriculum would be back at 1
    if saved["queue"]:  # and it picks up the saved pass where it stopped
        assert rec.caps[0][1] == lengths[saved["queue"][0]]


def test_cli_stage2_takes_its_architecture_from_stage1(tmp_path: Path) -> None:
    """The README sequence: stage 1 through the CLI, then stage 2 from its last.ckpt with a config
    that names no architecture; then the stage-2 run resumed with `fit --ckpt_path`."""
    stage2_config = yaml.safe_load((ROOT / "configs/stage2_direct_forcing.yaml").read_text())
    architecture = {"dit", "codec", "text_encoder", "semantic_pack"}
    assert not architecture & set(stage2_config["model"]["init_args"])  # no copy to drift
    run = [
        f"--data.init_args.data_dir={tmp_path / 'data'}", "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}", "--trainer.limit_val_batches=0",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_last=true",
    ]  # fmt: skip
    stage1 = main([
        "fit", "--config", str(ROOT / "configs/stage1.yaml"),
        "--config", str(ROOT / "tests/configs/tiny.yaml"), *run, "--trainer.max_steps=1",
        f"--trainer.callbacks.dirpath={tmp_path / 's1'}",
    ])  # fmt: skip
    ckpt1 = stage1.trainer.checkpoint_callback.last_model_path
    assert Path(ckpt1).is_file()
    stage2_args = [
        "--config", str(ROOT / "configs/stage2_direct_forcing.yaml"),
        "--config", str(ROOT / "tests/configs/tiny_stage2.yaml"), *run,
        f"--model.init_args.init_checkpoint={ckpt1}", f"--trainer.callbacks.dirpath={tmp_path / 's2'}",
    ]  # fmt: skip
    cli = main(["fit", *stage2_args, "--trainer.max_steps=1"])
    assert isinstance(cli.model, DirectForcingModule)
    assert cli.trainer.global_step == 1
    for part in architecture:  # stage 1's tiny architecture, not a default or a copy
        assert architecture_of(getattr(cli.model, part)) == architecture_of(
            getattr(stage1.model, part)
        ), part
    assert cli.model.dit.width == 32 and cli.model.semantic_pack.memory_tokens == 4
    metrics = cli.trainer.callback_metrics
    assert {"train/loss", "train/loss_seg_0", "train/trainable_param_norm"} <= set(metrics)
    shortest = min(cli.datamodule.train_set.lengths)  # the curriculum starts at the shortest
    assert metrics["train/curriculum_max_segments"] == shortest
    assert metrics["train/segments"] == shortest
    # A resumed stage-2 run rebuilds the module from its own saved hyperparameters.
    last2 = cli.trainer.checkpoint_callback.last_model_path
    resumed = main(["fit", *stage2_args, "--trainer.max_steps=2", f"--ckpt_path={last2}"])
    assert resumed.trainer.global_step == 2
    # The offline tools read a stage-2 checkpoint as the class that wrote it.
    assert type(load_module(torch.load(last2, weights_only=False))) is DirectForcingModule
    quality = generation_quality_main(["--ckpt", last2, "--num_videos", "1", "--no_floor"])
    assert math.isfinite(quality["next_segment_psnr"])
    # An explicit architecture must equal the checkpoint's; a different setting is refused.
    dit = stage1.model.hparams["dit"]
    overrides = {}
    for layout in ("absolute", "relative"):
        override = {"dit": {**dit, "init_args": {**dit["init_args"], "rope_layout": layout}}}
        overrides[layout] = tmp_path / f"{layout}.yaml"
        overrides[layout].write_text(yaml.safe_dump({"model": {"init_args": override}}))
    same = main([*stage2_args, "--config", str(overrides["absolute"])], run=False)
    assert same.model.dit.rope_layout == "absolute"
    with pytest.raises(ValueError, match="dit.rope_layout: given 'relative', stage 1 'absolute'"):
        main([*stage2_args, "--config", str(overrides["relative"])], run=False)


def validation_epochs(trainer: dict, steps_per_epoch: int) -> list[int]:
    """Epochs in which the demo's validations run: every `val_check_interval` steps when it is an
    int and `check_val_every_n_epoch` is null, else at the end of every n-th complete epoch."""
    interval, every = trainer.get("val_check_interval"), trainer.get("check_val_every_n_epoch")
    steps = trainer["max_steps"]
    if every is None:
        return [(s - 1) // steps_per_epoch for s in range(interval, steps + 1, interval)]
    return [e for e in range(steps // steps_per_epoch) if (e + 1) % every == 0]


def test_stage2_config_evaluates_drift_and_memory_during_the_demo() -> None:
    """Stage 2's TensorBoard shows drift like stage 1's: its config has RolloutEvalCallback, and
    the callback fires at a validation the demo reaches (epoch = num_train_videos steps)."""
    config = yaml.safe_load((ROOT / "configs/stage2_direct_forcing.yaml").read_text())
    trainer, data = config["trainer"], config["data"]["init_args"]
    evals = [
        c["init_args"]
        for c in trainer["callbacks"]
        if c["class_path"] == "callbacks.rollout_eval.RolloutEvalCallback"
    ]
    assert len(evals) == 1 and evals[0]["probe_videos"] > 0
    assert max(evals[0]["lengths"].values()) >= 16
    epochs = validation_epochs(trainer, data["num_train_videos"] // data["batch_size"])
    fires = [e for e in epochs if (e + 1) % evals[0]["every_n_epochs"] == 0]
    assert fires, f"no evaluation at the demo's validations (epochs {epochs})"
