import pytest
import torch

from lightning_modules.codecs import SpaceToDepthCodec, to_uint8
from lightning_modules.memory_pack import MemoryPack
from lightning_modules.networks.text_encoder import HashTextEncoder
from lightning_modules.video_module import VideoModule
from tests.helpers import tiny as helpers
from tests.helpers.tiny import F1_PACK, tiny_batch, tiny_dit, tiny_pack


def tiny_module(**kwargs: object) -> VideoModule:
    """The tiny model with FramePack-F1's 19-frame history (a 3-segment rollout fits in it)."""
    return helpers.tiny_module(dit=tiny_dit(frame_pack=F1_PACK), seed=None, **kwargs)


def test_codec_round_trip_is_exact() -> None:
    codec = SpaceToDepthCodec(patch=4)
    video = torch.rand(2, 5, 3, 32, 16) * 2 - 1
    lat = codec.encode(video)
    assert lat.shape == (2, 5, 48, 8, 4)
    torch.testing.assert_close(codec.decode(lat), video, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="30x32"):
        codec.latent_size(30, 32)


def test_text_encoder_is_deterministic_and_pads() -> None:
    enc = HashTextEncoder(dim=8, max_tokens=6)
    assert enc.tokenize("A red Circle") == enc.tokenize("a red circle")
    tokens, mask = enc(["a red circle", ""])
    assert tokens.shape == (2, 6, 8)
    assert mask.tolist() == [[True] * 4 + [False] * 2, [True] + [False] * 5]


def test_mismatched_parts_raise_clear_error() -> None:
    with pytest.raises(ValueError, match="latent_channels=48"):
        helpers.tiny_module(dit=tiny_dit(latent_channels=48))


def test_teacher_forcing_picks_valid_segments_with_true_history() -> None:
    module = tiny_module()
    batch = tiny_batch()
    x, seg = module.teacher_forcing_batch(batch)
    latents, frames = module.encode_video(batch["video"])
    image = module.batch_image_latent(batch)
    text = module.encode_text(batch["caption"])
    history = MemoryPack.teacher_forced(module.dit, None, latents, frames, seg, text, image).history
    assert (seg < batch["num_segments"]).all() and (seg >= 0).all()
    for i, k in enumerate(seg.tolist()):
        torch.testing.assert_close(x[i], latents[i, k * frames : (k + 1) * frames])
        if k > 0:  # the newest history frame is the last frame of the previous segment
            torch.testing.assert_close(history[i, -1], latents[i, k * frames - 1])
        else:
            assert history[i].abs().sum() == 0
    assert image.shape == (3, 1, 12, 8, 8)


def test_stage1_gradients_reach_every_trainable_parameter() -> None:
    module = tiny_module()
    # adaLN-Zero and the zero-initialised head block gradients at exact init; perturb them.
    for p in module.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    batch = tiny_batch()
    x, seg = module.teacher_forcing_batch(batch)
    latents, frames = module.batch_latents(batch)
    image, text = module.batch_image_latent(batch), module.encode_text(batch["caption"])
    history = MemoryPack.teacher_forced(module.dit, None, latents, frames, seg, text, image).history
    loss, *_ = module.flow_loss(x, seg, history, image, text)
    loss.backward()
    no_grad = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    # Only the unused text-embedding rows lack gradient signal; every module gets a grad tensor.
    assert no_grad == [], no_grad
    assert module.dit.head.linear.weight.grad.abs().sum() > 0
    assert module.dit.context.proj_4x.weight.grad.abs().sum() > 0


def record_dit(module: VideoModule) -> list[dict[str, torch.Tensor]]:
    """Inputs (noisy x, history, memory) and output v of every DiT call."""
    calls: list[dict[str, torch.Tensor]] = []

    def pre(_: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append({"x": args[0], "history": args[3], "memory": kwargs["memory"]})

    def post(_: torch.nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        calls[-1]["v"] = out

    module.dit.register_forward_pre_hook(pre, with_kwargs=True)
    module.dit.register_forward_hook(post, with_kwargs=True)
    return calls


def test_generate_shapes_and_cfg() -> None:
    """Each segment is 2 Euler steps of the guided velocity v_u + 2 (v_c - v_u) from noise, and
    conditions on the segments generated before it (history) and on psi updated with them; the
    unconditional half has its own psi. Everything checked by hand from the DiT's inputs/outputs."""
    torch.manual_seed(0)
    pack = tiny_pack()
    module = tiny_module(cfg_scale=2.0, sample_steps=2, semantic_pack=pack).eval()
    with torch.no_grad():  # off the zero init (zero head: v = 0, zero gates: psi unread)
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    calls = record_dit(module)
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    video = module.generate(image, ["a", "b"], num_segments=3, frames_per_segment=4)
    assert video.shape == (2, 12, 3, 16, 16) and video.dtype == torch.uint8
    assert len(calls) == 6  # 3 segments x 2 Euler steps, both CFG halves in one call
    guided = lambda v: v[2:] + 2.0 * (v[:2] - v[2:])  # noqa: E731
    segments = []
    for k in range(3):
        first, second = calls[2 * k], calls[2 * k + 1]
        for call in (first, second):  # both halves see the same history
            torch.testing.assert_close(call["history"][:2], call["history"][2:])
        torch.testing.assert_close(second["x"][:2], first["x"][:2] + 0.5 * guided(first["v"]))
        segment = second["x"][:2] + 0.5 * guided(second["v"])
        pixels = to_uint8(module.codec.decode(segment)).short()
        assert (pixels - video[:, 4 * k : 4 * (k + 1)].short()).abs().max() <= 1
        segments.append(segment)
        if k:  # history: every segment generated so far, newest last (zeros before the video)
            past = torch.cat(segments[:k], dim=1)
            torch.testing.assert_close(first["history"][:2, -4 * k :], past)
            assert not first["history"][:, : -4 * k].any()
            with torch.no_grad():  # psi of each half: Eq. 1 on the previous generated segment
                cond, uncond = calls[2 * k - 2]["memory"].chunk(2)
                psi = torch.cat((pack(cond, segments[k - 1]), pack(uncond, segments[k - 1])))
            torch.testing.assert_close(first["memory"], psi, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(second["memory"], first["memory"])
    with pytest.raises(ValueError, match="frames_per_segment"):
        module.generate(image, ["a", "b"], num_segments=1)


def test_to_uint8_maps_range() -> None:
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])).tolist() == [0, 128, 255, 255]


def test_smooth_head_starts_as_the_linear_one_and_reads_across_token_borders() -> None:
    torch.manual_seed(0)
    linear, smooth = tiny_dit(), tiny_dit(head="smooth")
    smooth.load_state_dict(linear.state_dict(), strict=False)  # all but the new convolution
    for p in linear.head.parameters():  # a trained-like head: nonzero output
        torch.nn.init.normal_(p, std=0.1)
    smooth.head.load_state_dict(linear.head.state_dict(), strict=False)
    b, frames = 1, 2
    x = {
        "noisy": torch.randn(b, frames, 12, 8, 8), "t": torch.rand(b),
        "segment_index": torch.tensor([1]), "history": torch.randn(b, 7, 12, 8, 8),
        "image": torch.randn(b, 1, 12, 8, 8), "text": torch.randn(b, 16, 16),
        "text_mask": torch.ones(b, 16, dtype=torch.bool),
    }  # fmt: skip
    with torch.no_grad():
        assert torch.equal(smooth(**x), linear(**x))  # zero-initialised residual: the same model
        torch.nn.init.normal_(smooth.head.smooth.weight, std=0.1)
        # Each token predicts its own 2 x 2 latent patch: change the head's input of one token
        # (the last block's output) and see which latent pixels move.
        moved = {}
        for name, model in (("linear", linear), ("smooth", smooth)):
            tokens = {}

            def grab(module, inputs, out, tokens=tokens):  # noqa: ANN001, ANN202
                out = out.clone()
                out[:, -2 * 16 + 2 * 4 + 1] += torch.randn(out.shape[-1])  # frame 0, row 2, col 1
                return out

            handle = model.blocks[-1].register_forward_hook(grab)
            changed = (model(**x) - (handle.remove() or model(**x))).abs().amax(dim=2)[0, 0]
            moved[name] = changed > 1e-6
        assert moved["linear"].sum() == 4 and moved["linear"][4:6, 2:4].all()  # its own patch
        assert moved["smooth"].sum() > 4  # and its neighbours across the token border
    with pytest.raises(ValueError, match="unknown head 'conv'"):
        tiny_dit(head="conv")


def test_patch_one_gives_each_latent_pixel_its_own_token() -> None:
    torch.manual_seed(0)
    dit = tiny_dit(patch=1, frame_pack=(1, 2, 16))
    # 8 x 8 latents: 64 noisy tokens a frame; context 64 (1x) + 4 x 4 (2x) + 4 groups x 2 x 2 (4x)
    assert dit.context.num_tokens(8, 8) == 64 + 16 + 16
    assert dit.tokens_per_segment(2, 8, 8, 16) == 16 + 64 + 96 + 2 * 64
    for p in dit.head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = {
        "noisy": torch.randn(1, 2, 12, 8, 8), "t": torch.rand(1),
        "segment_index": torch.tensor([1]), "history": torch.randn(1, 19, 12, 8, 8),
        "image": torch.randn(1, 1, 12, 8, 8), "text": torch.randn(1, 16, 16),
        "text_mask": torch.ones(1, 16, dtype=torch.bool),
    }  # fmt: skip

    def grab(module, inputs, out):  # noqa: ANN001, ANN202
        out = out.clone()
        out[:, -2 * 64 + 8 * 5 + 3] += torch.randn(out.shape[-1])  # frame 0, row 5, col 3
        return out

    with torch.no_grad():
        handle = dit.blocks[-1].register_forward_hook(grab)
        changed = (dit(**x) - (handle.remove() or dit(**x))).abs().amax(dim=2)[0]
    moved = changed > 1e-6
    assert moved.sum() == 1 and moved[0, 5, 3]  # one token, one latent pixel
    with pytest.raises(ValueError, match="unknown patch 3"):
        tiny_dit(patch=3)
