"""Stage 2 (Direct Forcing): trainable set, history modes, memory, accumulation, DDP sync."""

import fnmatch
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from lightning_modules import rectified_flow as rf
from lightning_modules.direct_forcing import DirectForcingModule
from lightning_modules.networks.frame_pack import gather_history
from tests.helpers.tiny import fit_items, one_block_parts, stage1_checkpoint, tiny_stage2


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


def test_one_step_changes_only_the_trainable_parameters(stage1_ckpt: Path) -> None:
    module = tiny_stage2(stage1_ckpt)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = fit_items(module, [3], max_steps=1)
    assert trainer.global_step == 1
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {k for k, _ in module.named_parameters() if fnmatch.fnmatch(k, "dit.head.*")}
    assert trainable == {n for n, p in module.named_parameters() if p.requires_grad}
    assert changed == trainable, changed ^ trainable
    assert len(before) == len(after) and len(trainable) == 4  # modulation + linear, w and b


def test_frozen_modules_stay_in_eval_mode_during_training(stage1_ckpt: Path) -> None:
    rec = Recorder()
    fit_items(tiny_stage2(stage1_ckpt), [2, 2], callbacks=[rec])
    assert rec.modes, "no batch recorded"
    for any_frozen_training, head_training, n_frozen in rec.modes:
        assert n_frozen >= 5 and not any_frozen_training and head_training


@pytest.mark.parametrize("mode", ["direct", "teacher"])
def test_stored_history_is_the_one_step_estimate_or_the_truth(stage1_ckpt: Path, mode: str) -> None:
    module = tiny_stage2(stage1_ckpt, history=mode)
    calls = record_segments(module)
    trainer = fit_items(module, [3], max_steps=1)
    assert len(calls) == 3
    mse = [(c["stored"] - c["x"]).square().mean() for c in calls]  # what the step logs
    logged = trainer.callback_metrics["train/history_mse"]
    torch.testing.assert_close(logged, torch.stack(mse).mean())
    assert (logged > 0) == (mode == "direct")
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
        init_checkpoint=str(ckpt),
        warmup_steps=1,
        prompt_dropout=0.0,
        **one_block_parts(memory=True),
    )
    calls = record_segments(module)
    fit_items(module, [3], max_steps=1)
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


def step_and_rewind(module: DirectForcingModule) -> list[dict[str, Any]]:
    """One step on a 2-segment video, recorded; the weights put back to those that made both
    segments' histories (the step came after them), and the RNG at the draws after the first
    segment's loss, so a test can redo what that segment stored."""
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    calls = record_segments(module)
    fit_items(module, [2], max_steps=1)
    module.load_state_dict(weights)
    torch.set_rng_state(calls[0]["rng_after"])
    return calls


def test_student_history_runs_the_sampler(stage1_ckpt: Path) -> None:
    """The stored history is k Euler steps (Eq. 6) from fresh noise, with the weights that
    produced the segment's loss: redone here by hand from the same noise."""
    module = tiny_stage2(stage1_ckpt, history="student", student_steps=2)
    call = step_and_rewind(module)[0]
    x, seg, history, image, text, psi = call["args"][:6]
    sample = torch.randn_like(x)  # the sampler's noise is the next draw
    with torch.no_grad():
        for t in (0.0, 0.5):  # 2 Euler steps of dt = 1/2 from t = 0 (noise) to 1 (data)
            v = module.dit(sample, torch.full((1,), t), seg, history, image, *text, memory=psi)
            sample = sample + 0.5 * v
    torch.testing.assert_close(call["stored"], sample)
    estimate = rf.one_step_estimate(call["x_t"], call["v"], call["t"])
    assert not torch.allclose(call["stored"], estimate, atol=1e-4)
    assert not torch.allclose(call["stored"], call["x"], atol=1e-4)


@pytest.mark.parametrize("span", [(0.8, 0.8), (0.6, 0.95)])
def test_direct_estimate_at_a_chosen_t(stage1_ckpt: Path, span: tuple[float, float]) -> None:
    """estimate_t=(lo, hi): the stored history is Eq. 7 from one extra forward at t ~ U(lo, hi)
    on freshly noised data, not the loss's estimate; redone by hand from the same draws."""
    module = tiny_stage2(stage1_ckpt, estimate_t=span)
    calls = step_and_rewind(module)
    call = calls[0]
    x, seg, history, image, text, psi = call["args"][:6]
    t = span[0] + (span[1] - span[0]) * torch.rand(x.shape[0])  # t, then the noise
    assert span[0] - 1e-6 <= float(t) <= span[1] + 1e-6
    x_t = rf.interpolate(x, torch.randn_like(x), t)
    with torch.no_grad():
        v = module.dit(x_t, t, seg, history, image, *text, memory=psi)
    torch.testing.assert_close(call["stored"], rf.one_step_estimate(x_t, v, t))
    loss_estimate = rf.one_step_estimate(call["x_t"], call["v"], call["t"])
    assert not torch.allclose(call["stored"], loss_estimate, atol=1e-4)
    torch.testing.assert_close(calls[1]["history"][:, -x.shape[1] :], call["stored"])


def test_estimate_t_is_checked(stage1_ckpt: Path) -> None:
    with pytest.raises(ValueError, match=r"estimate_t must be .* got \(0.5, 1.0\)"):
        tiny_stage2(stage1_ckpt, estimate_t=(0.5, 1.0))
    with pytest.raises(ValueError, match="history='direct' only, got 'teacher'"):
        tiny_stage2(stage1_ckpt, estimate_t=(0.8, 0.8), history="teacher")


def test_full_history_context_conditions_on_every_stored_segment(tmp_path: Path) -> None:
    """`context: full_history` in stage 2: segment i reads all i earlier stored estimates."""
    torch.manual_seed(0)
    ckpt = stage1_checkpoint(tmp_path / "full.ckpt", context="full_history")
    module = DirectForcingModule(
        init_checkpoint=str(ckpt), warmup_steps=1, **one_block_parts(context="full_history")
    )
    calls = record_segments(module)
    fit_items(module, [3, 2], batch_size=2)  # ragged: the second video stops after 2 segments
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
    stage1_ckpt: Path, per_step: int | None, windows: list[int]
) -> None:
    module = tiny_stage2(stage1_ckpt, segments_per_step=per_step)
    flow_loss = module.flow_loss
    probe = GradientProbe(record_segments(module), flow_loss)
    trainer = fit_items(module, [3, 3], callbacks=[probe])
    assert trainer.global_step == len(windows)
    assert probe.windows == windows  # the segments each step accumulated


def test_ddp_all_reduces_once_per_optimizer_step(stage1_ckpt: Path) -> None:
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
        trainer = fit_items(
            tiny_stage2(stage1_ckpt), [3, 2], strategy=strategy, devices=1, callbacks=[Hook()]
        )
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert trainer.global_step == 2
    assert len(reduces) == 2  # 5 backward passes, 2 steps: no all-reduce inside a video


def test_ragged_batch_skips_padding_segments(stage1_ckpt: Path) -> None:
    module = tiny_stage2(stage1_ckpt)
    calls = record_segments(module)
    fit_items(module, [1, 3], batch_size=2)
    assert [c["x"].shape[0] for c in calls] == [2, 1, 1]
