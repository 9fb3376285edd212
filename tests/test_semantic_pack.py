"""SemanticPack (Sec. 3.1, Eq. 1, App. A.1): fixed-size memory, gradients, gate, rollout cost."""

from pathlib import Path

import pytest
import torch

from lightning_modules.codecs import to_uint8
from lightning_modules.video_module import VideoModule
from tests.helpers.tiny import perturb, tiny_module, tiny_pack
from train import main

ROOT = Path(__file__).resolve().parents[1]
M = 4  # memory tokens


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def batch_with_late_segments(module: VideoModule) -> tuple[dict, torch.Generator]:
    """A batch and a generator for which teacher forcing picks a segment index >= 2."""
    torch.manual_seed(0)
    video = torch.rand(3, 4, 4, 3, 16, 16) * 2 - 1
    batch = {
        "video": video,
        "image": video[:, 0, 0],
        "num_segments": torch.tensor([4, 4, 2]),
        "caption": ["a red circle", "a blue square", ""],
    }
    for seed in range(100):
        seg = module.teacher_forcing_batch(batch, torch.Generator().manual_seed(seed))[1]
        if seg.max() >= 2:
            return batch, torch.Generator().manual_seed(seed)
    raise AssertionError("no seed picks a late segment")


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 4, 4)])
def test_psi_has_fixed_shape_over_a_long_recurrence(patch: tuple[int, int, int]) -> None:
    pack = tiny_pack(patch=patch).eval()
    text, image = torch.randn(2, 7, 16), torch.randn(2, 1, 12, 8, 8)
    psi = pack.init(text, image)
    shapes = {0: psi.shape}
    with torch.no_grad():
        for n in range(50):
            psi = pack(psi, torch.randn(2, 4, 12, 8, 8), step=n)
            if n + 1 in (1, 5, 50):
                shapes[n + 1] = psi.shape
    assert set(shapes.values()) == {torch.Size([2, M, 32])}, shapes
    assert torch.isfinite(psi).all()


def test_stage1_gradients_reach_memorize_squeeze_and_gates() -> None:
    module = tiny_module(tiny_pack())
    perturb(module)  # a "trained" backbone (adaLN-Zero and the zero head block all grads at init)
    gates = [blk.attn.memory_gate for blk in module.dit.blocks]
    for g in gates:
        g.data.zero_()  # the gates' init value: the memory is read with weight 0 ...
    batch, gen = batch_with_late_segments(module)
    module.teacher_forcing_loss(batch, generator=gen).backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates)  # ... yet they learn
    pack = module.semantic_pack
    assert not pack.squeeze.mlp[0].weight.grad.any()  # closed gate: nothing reaches psi yet
    module.zero_grad()
    for g in gates:
        g.data.fill_(0.1)  # once the gates open, the memory's own parameters are trained
    _, gen = batch_with_late_segments(module)
    module.teacher_forcing_loss(batch, generator=gen).backward()
    for name, part in (("memorize", pack.memorize), ("squeeze", pack.squeeze)):
        dead = [n for n, p in part.named_parameters() if p.grad is None or not p.grad.any()]
        assert dead == [], (name, dead)
    assert pack.init_pool.slots.grad.abs().sum() > 0  # psi_0 is trained as well


def test_closed_gate_equals_f1_baseline_for_the_same_weights() -> None:
    memory_model = tiny_module(tiny_pack()).eval()
    perturb(memory_model.dit)
    for blk in memory_model.dit.blocks:
        blk.attn.memory_gate.data.zero_()
    f1 = tiny_module(None).eval()
    missing, unexpected = f1.dit.load_state_dict(memory_model.dit.state_dict(), strict=False)
    assert missing == [] and all("memory_gate" in k for k in unexpected) and unexpected
    torch.manual_seed(2)
    x, hist, image = (
        torch.randn(2, 4, 12, 8, 8),
        torch.randn(2, 7, 12, 8, 8),
        torch.randn(2, 1, 12, 8, 8),
    )
    t, seg = torch.rand(2), torch.tensor([1, 3])
    text, mask = f1.text_encoder(["a red circle", ""])
    psi = memory_model.semantic_pack.init(text, image)
    with torch.no_grad():
        base = f1.dit(x, t, seg, hist, image, text, mask)
        gated = memory_model.dit(x, t, seg, hist, image, text, mask, memory=psi)
        memory_model.dit.blocks[0].attn.memory_gate.data.fill_(0.5)
        opened = memory_model.dit(x, t, seg, hist, image, text, mask, memory=psi)
    assert base.abs().sum() > 0
    assert torch.equal(gated, base)
    assert not torch.allclose(opened, base)  # the check above can fail: psi does get read


@pytest.mark.parametrize(
    ("structure", "psi_init"), [("B", "semantic"), ("C", "semantic"), ("A", "zero")]
)
def test_ablation_variants_run_forward_and_backward(structure: str, psi_init: str) -> None:
    module = tiny_module(tiny_pack(structure=structure, psi_init=psi_init))
    perturb(module)
    batch, gen = batch_with_late_segments(module)
    module.teacher_forcing_loss(batch, generator=gen).backward()
    pack = module.semantic_pack
    assert pack.squeeze.attn.q.weight.grad.abs().sum() > 0
    assert pack.memorize.embed.weight.grad.abs().sum() > 0
    if psi_init == "semantic":  # the unpooled (B, C) prompt tokens seed psi and are trained
        assert pack.text_proj.weight.grad.abs().sum() > 0
    if psi_init == "zero":
        psi0 = pack.init(torch.randn(2, 5, 16), torch.randn(2, 1, 12, 8, 8))
        assert psi0.shape == (2, M, 32) and not psi0.any()  # A's size: m tokens
        assert not hasattr(pack, "init_pool")
    with pytest.raises(ValueError, match="structure 'C' needs"):
        tiny_pack(structure="C")(torch.zeros(1, M, 32), torch.zeros(1, 4, 12, 8, 8))


@pytest.mark.parametrize("structure", ["A", "B", "C"])
def test_structures_carry_the_paper_token_counts(structure: str) -> None:
    """App. A.1: A's query is the visual summary (m tokens); B's query is psi seeded by the text +
    image tokens themselves (not pooled); C's first query is those tokens concatenated with the
    first window's visual tokens, then B. psi's size differs per structure but is fixed over a
    rollout, so each update costs the same."""
    pack = tiny_pack(structure=structure, patch=(1, 2, 2)).eval()
    text, image = torch.randn(2, 7, 16), torch.randn(2, 1, 12, 8, 8)
    n_text, n_image = 7, 4 * 4  # 8 x 8 latent in 2 x 2 patches
    size = {"A": M, "B": n_text + n_image, "C": n_text + n_image + M}[structure]
    queries: list[tuple[torch.Tensor, torch.Tensor]] = []
    pack.squeeze.register_forward_pre_hook(lambda _, a: queries.append((a[0], a[1])))
    segments = torch.randn(3, 2, 4, 12, 8, 8)
    with torch.no_grad():
        psi = psi0 = pack.init(text, image)
        shapes = [psi.shape]
        for n, segment in enumerate(segments):
            psi = pack(psi, segment, step=n)
            shapes.append(psi.shape)
        visual = pack.memorize(segments[0])
    assert shapes == [torch.Size([2, size, 32])] * 4
    query, key_value = queries[0]
    if structure == "A":
        torch.testing.assert_close(query, visual)
        torch.testing.assert_close(key_value, psi0)
    else:  # B and C read the visual summary as key/value
        torch.testing.assert_close(key_value, visual)
    if structure == "B":
        torch.testing.assert_close(query, psi0)
    if structure == "C":  # text + image tokens, then the first window's visual tokens
        torch.testing.assert_close(query, torch.cat((psi0[:, : n_text + n_image], visual), 1))
        assert queries[1][0].shape[1] == size  # later steps: B's setting, query = psi_n
    zero = tiny_pack(structure=structure, patch=(1, 2, 2), psi_init="zero")
    assert zero.init(text, image).shape == (2, size, 32)  # zero-MemoryPack: the same size


def record_sequence_lengths(module: VideoModule) -> list[int]:
    """Tokens per DiT call (joint sequence + psi's stream, which rides in the same tensor),
    recorded at the first block."""
    lengths: list[int] = []

    def hook(_: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        lengths.append(args[0].shape[1])

    module.dit.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    return lengths


def test_rollout_of_20_segments_has_constant_token_count() -> None:
    """Constant tokens per segment, while every segment still conditions on the last generated
    ones (FramePack history) and on psi updated with each of them (Eq. 1 over the rollout)."""
    module = tiny_module(tiny_pack(), sample_steps=1).eval()
    perturb(module)
    lengths = record_sequence_lengths(module)
    calls = record_dit_calls(module)
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    video = module.generate(image, ["a red circle"], num_segments=20, frames_per_segment=4)
    assert video.shape[1] == 80 and len(lengths) == 20
    text_tokens = module.text_encoder.max_tokens
    assert set(lengths) == {module.dit.tokens_per_segment(4, 8, 8, text_tokens) + M}
    pack, codec = module.semantic_pack, module.codec
    for k in range(1, 20):
        history, previous = calls[k]["history"], calls[k - 1]["history"]
        newest = history[:, -4:]  # the segment generated just before: what the video shows
        assert torch.equal(to_uint8(codec.decode(newest)), video[:, 4 * (k - 1) : 4 * k])
        torch.testing.assert_close(history[:, :-4], previous[:, 4:])  # and the buffer slides
        with torch.no_grad():
            psi = pack(calls[k - 1]["memory"], newest, step=k - 1)
        torch.testing.assert_close(calls[k]["memory"], psi, atol=1e-5, rtol=1e-4)
    # The quadratic baseline is a mode of the same DiT: its sequence grows every segment.
    full = tiny_module(None, sample_steps=1, context="full_history").eval()
    grown = record_sequence_lengths(full)
    full.generate(image, ["a red circle"], num_segments=4, frames_per_segment=4)
    assert grown == [grown[0] + 4 * 16 * k for k in range(4)]


def test_bptt_truncation_stops_gradients_beyond_the_window() -> None:
    pack = tiny_pack(memory_bptt=2)
    segments = torch.randn(2, 6, 4, 12, 8, 8, requires_grad=True)
    psi0 = pack.init(torch.randn(2, 5, 16), torch.randn(2, 1, 12, 8, 8))
    target = torch.tensor([5, 2])
    pack.teacher_forced(psi0, segments, target).square().sum().backward()
    touched = segments.grad.flatten(2).abs().sum(-1) > 0  # [b, s]: which inputs get gradient
    assert touched[0].tolist() == [False, False, False, True, True, False]
    assert touched[1].tolist() == [True, True, False, False, False, False]
    with torch.no_grad():  # psi of the truncated run equals the untruncated value
        full = tiny_pack(memory_bptt=10)
        full.load_state_dict(pack.state_dict())
        expected = full.teacher_forced(psi0, segments, target)
    torch.testing.assert_close(pack.teacher_forced(psi0, segments, target), expected)


@pytest.mark.parametrize("structure", ["A", "B", "C"])
def test_teacher_forced_psi_is_the_segment_by_segment_recurrence(structure: str) -> None:
    """Batched teacher forcing (videos at different depths, truncated window aligned to each
    video's end) gives every video the psi of Eq. 1 run one segment at a time."""
    torch.manual_seed(0)
    pack = tiny_pack(memory_bptt=2, structure=structure, update="gated")
    segments = torch.randn(4, 5, 4, 12, 8, 8)
    text, image = torch.randn(4, 5, 16), torch.randn(4, 1, 12, 8, 8)
    target = torch.tensor([5, 0, 1, 3])
    batched = pack.teacher_forced(pack.init(text, image), segments, target)
    for v, i in enumerate(target.tolist()):
        psi = pack.init(text[v : v + 1], image[v : v + 1])
        for n in range(i):
            psi = pack(psi, segments[v : v + 1, n], step=n)
        torch.testing.assert_close(batched[v : v + 1], psi)


def test_truncated_bptt_builds_a_graph_for_the_window_only() -> None:
    """However long each video's history, teacher forcing records `memory_bptt` updates with
    autograd (one batched update per window position), not one per step of the longest video."""
    pack = tiny_pack(memory_bptt=2)
    calls = []
    step = pack.squeeze_step
    pack.squeeze_step = lambda *a: calls.append(torch.is_grad_enabled()) or step(*a)
    segments = torch.randn(3, 7, 4, 12, 8, 8)
    psi0 = pack.init(torch.randn(3, 5, 16), torch.randn(3, 1, 12, 8, 8))
    pack.teacher_forced(psi0, segments, torch.tensor([7, 3, 1]))
    assert calls.count(True) == 2 and calls.count(False) == 5


@pytest.mark.parametrize("update", ["squeeze", "gated"])
def test_full_bptt_trains_what_the_first_segment_left_checkpointed_or_not(update: str) -> None:
    """memory_bptt=None: a target at segment 5 sends gradient to segment 0's update (the one that
    saw content which must survive to the return); checkpointing changes memory, not values."""
    segments = torch.randn(2, 6, 4, 12, 8, 8, requires_grad=True)
    psi0 = torch.randn(2, M, 32)
    target = torch.tensor([5, 2])
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        pack = tiny_pack(memory_bptt=None, memory_checkpoint=ckpt, update=update)
        segments.grad = None
        pack.teacher_forced(psi0, segments, target).square().sum().backward()
        grads.append(segments.grad.clone())
    touched = grads[0].flatten(2).abs().sum(-1) > 0
    assert touched[0].tolist() == [True] * 5 + [False]
    assert touched[1].tolist() == [True, True] + [False] * 4
    torch.testing.assert_close(grads[1], grads[0])


def test_gated_update_keeps_psi_until_its_gate_opens() -> None:
    torch.manual_seed(0)
    pack = tiny_pack(update="gated")
    psi, segment = torch.randn(2, M, 32), torch.randn(2, 4, 12, 8, 8)
    candidate = pack.squeeze(pack.memorize(segment), psi)  # structure A's Eq. 1 output
    z = torch.sigmoid(torch.tensor(-2.0))  # W = 0, b = -2 at initialisation
    torch.testing.assert_close(pack(psi, segment), psi + z * (candidate - psi))
    plain = tiny_pack()
    plain.load_state_dict(pack.state_dict(), strict=False)  # the same Squeeze, no gate
    kept = []
    for model in (pack, plain):
        later = psi
        for k in range(10):
            later = model(
                later, torch.randn(2, 4, 12, 8, 8, generator=torch.Generator().manual_seed(k))
            )
        kept.append(torch.nn.functional.cosine_similarity(later.flatten(1), psi.flatten(1)).min())
    assert kept[0] > 0.1 > abs(kept[1])  # ten segments later only the gated psi still points home
    with pytest.raises(ValueError, match="update"):
        tiny_pack(update="lstm")


def test_cli_configs_switch_semantic_pack(tmp_path: Path) -> None:
    def build(*extra: str) -> VideoModule:
        args = [
            "--config", str(ROOT / "configs/stage1.yaml"),
            "--config", str(ROOT / "tests/configs/tiny.yaml"),
            *[a for e in extra for a in ("--config", str(ROOT / "configs/ablations" / e))],
            f"--data.init_args.data_dir={tmp_path}",
        ]  # fmt: skip
        return main(args, run=False).model

    memorypack = build()
    assert memorypack.semantic_pack.structure == "A" and memorypack.dit.rope_layout == "absolute"
    f1 = build("f1_only.yaml")  # FramePack-F1 as FramePack has it: per-window (relative) RoPE
    assert f1.semantic_pack is None and f1.dit.blocks[0].attn.memory_gate is None
    assert f1.dit.rope_layout == "relative"
    f1_rope = build("f1_rope.yaml")  # F1 + the paper's RoPE consistency, still no SemanticPack
    assert f1_rope.semantic_pack is None and f1_rope.dit.rope_layout == "absolute"
    assert build("zero_memorypack.yaml").semantic_pack.psi_init == "zero"
    assert build("structure_b.yaml").semantic_pack.structure == "B"
    assert build("structure_c.yaml").semantic_pack.structure == "C"
    memory = build("memory_recipe.yaml")  # issue 19's recipe: every piece switched on
    pack = memory.semantic_pack
    assert pack.update == "gated" and pack.memory_bptt is None and pack.memory_checkpoint
    assert memory.hparams.memory_focus == 1.0 and memory.hparams.memory_lr_scale == 10.0
    assert all(float(g.min()) == 1.0 for g in memory.memory_gates())
    assert {b.attn.memory_read for b in memory.dit.blocks} == {"off_by_one"}
    assert memory.hparams.memory_guidance == 2.0


def test_mismatched_width_raises_clear_error() -> None:
    with pytest.raises(ValueError, match="semantic_pack.width=64"):
        tiny_module(tiny_pack(width=64))


def record_dit_calls(module: VideoModule) -> list[dict[str, torch.Tensor]]:
    """(history, memory) of every DiT call, recorded with a forward pre-hook."""
    calls: list[dict[str, torch.Tensor]] = []

    def hook(_: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append({"history": args[3].clone(), "memory": kwargs["memory"].clone()})

    module.dit.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_cfg_unconditional_half_carries_psi_of_the_empty_prompt() -> None:
    """CFG's unconditional half reads psi built from "" (as a dropped prompt does in training),
    updated with the same generated segments as the conditional psi."""
    module = tiny_module(tiny_pack(), cfg_scale=3.0, sample_steps=1).eval()
    perturb(module)
    calls = record_dit_calls(module)
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    captions = ["a red circle", "a blue square"]
    module.generate(image, captions, num_segments=3, frames_per_segment=4)
    assert len(calls) == 3 and calls[0]["memory"].shape == (4, M, 32)  # [cond; uncond] halves
    pack, image_lat = module.semantic_pack, module.encode_image(image)
    with torch.no_grad():
        psi = {
            "cond": pack.init(module.text_encoder(captions)[0], image_lat),
            "uncond": pack.init(module.text_encoder(["", ""])[0], image_lat),
        }
    assert not torch.allclose(psi["cond"], psi["uncond"], atol=1e-4)  # the check can fail
    for k, call in enumerate(calls):
        cond, uncond = call["memory"].chunk(2)
        torch.testing.assert_close(cond, psi["cond"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(uncond, psi["uncond"], atol=1e-5, rtol=1e-4)
        if k + 1 < len(calls):  # both are updated with the segment just generated
            segment = calls[k + 1]["history"][:2, -4:]
            with torch.no_grad():
                psi = {h: pack(p, segment, step=k) for h, p in psi.items()}
    # Training agrees: a dropped prompt builds psi_0 from "" too.
    seen: list[torch.Tensor] = []
    init = pack.init
    pack.init = lambda text, image: seen.append(text) or init(text, image)  # type: ignore[method-assign]
    batch, gen = batch_with_late_segments(module)
    module.train()
    module.teacher_forcing_loss(batch, prompt_dropout=1.0, generator=gen)
    torch.testing.assert_close(seen[0], module.text_encoder([""] * 3)[0])


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_memory_guidance_pushes_along_what_psi_changes(cfg_scale: float) -> None:
    """memory_guidance w samples v + w (v - v without psi), with or without text CFG; with psi
    unread (the probe's gates-shut row) it changes nothing."""
    from lightning_modules.memory_pack import MemoryPack

    module = tiny_module(tiny_pack(), cfg_scale=cfg_scale).eval()
    perturb(module)
    pipe = module.pipeline
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    text, image_lat = pipe.encode_text(["a red circle", "a"]), pipe.encode_image(image)
    null = pipe.encode_text(["", ""]) if cfg_scale != 1 else None
    x, t, seg = torch.randn(2, 4, 12, 8, 8), torch.full((2,), 0.3), torch.zeros(2).long()
    v = {}
    with torch.no_grad():
        for read in (True, False):
            context = MemoryPack.start(
                module.dit, module.semantic_pack, text, image_lat, null, read_memory=read
            ).context()
            for w in (0.0, 2.0):
                pipe.memory_guidance = w
                v[read, w] = pipe.velocity_fn(seg, context, image_lat, text, null)(x, t)
    assert not torch.allclose(v[True, 0.0], v[False, 0.0], atol=1e-4)  # psi is read
    torch.testing.assert_close(v[True, 2.0], v[True, 0.0] + 2 * (v[True, 0.0] - v[False, 0.0]))
    torch.testing.assert_close(v[False, 2.0], v[False, 0.0])


def test_trained_gates_survive_a_checkpoint_written_outside_the_cli(tmp_path: Path) -> None:
    """Outside the CLI the networks are pickled in hyper_parameters, sharing storage with the
    state dict: setting `memory_gate_init` in place at construction zeroed the saved gates."""
    from lightning_modules.loading import load_module
    from tests.helpers.tiny import save_checkpoint

    module = tiny_module(semantic_pack=tiny_pack())
    for gate in module.memory_gates():
        gate.data.add_(0.1)
    loaded = load_module(save_checkpoint(module, tmp_path / "gates.ckpt"))
    for a, b in zip(module.memory_gates(), loaded.memory_gates(), strict=True):
        assert torch.equal(a, b) and a.abs().sum() > 0
