"""Real backbones on tiny random weights: the diffusers/transformers classes FramePack-F1 uses, loaded
from local folders in their real layout (lightning_modules/pretrained/tiny.py), through the project's code.

Covers: the clear error on a missing/incomplete folder, the causal VAEs (temporal factor 4) and
their latent normalisation, the packed text/image conditioning, the backbone adapter against
diffusers' own forward (relative RoPE = FramePack-F1), the closed memory gate, per-sample RoPE.
The CLI path (stage 1, stage 2, rollout, checkpoints) is in test_hf_training.py.
"""

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from lightning_modules.pretrained.framepack_backbone import FramePackBackbone  # noqa: E402
from lightning_modules.pretrained.text_encoders import (  # noqa: E402
    HunyuanTextEncoder,
    T5TextEncoder,
    unpack_conditioning,
)
from lightning_modules.pretrained.tiny import TINY  # noqa: E402
from lightning_modules.pretrained.vae import HunyuanVideoVAE, WanVAE  # noqa: E402

SMALL_DIT = dict(
    in_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
    num_single_layers=1, num_refiner_layers=1, text_embed_dim=32, pooled_projection_dim=16,
    image_proj_dim=24, rope_axes_dim=(4, 6, 6), image_tokens=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def text_encoder(tiny_pretrained: Path) -> HunyuanTextEncoder:
    return HunyuanTextEncoder(
        str(tiny_pretrained / "hunyuan"), str(tiny_pretrained / "siglip"), max_tokens=16,
        crop_start=None, dtype="float32",
    )  # fmt: skip


@pytest.fixture(scope="module")
def backbone(tiny_pretrained: Path) -> FramePackBackbone:
    torch.manual_seed(0)
    return FramePackBackbone(str(tiny_pretrained / "framepack"), **SMALL_DIT).eval()


def test_missing_or_incomplete_folder_names_it_and_what_it_expected(
    tmp_path: Path, tiny_pretrained: Path
) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere/vae.*does not exist") as err:
        HunyuanVideoVAE(str(tmp_path / "nowhere"))
    assert "config.json" in str(err.value) and "diffusion_pytorch_model.safetensors" in str(
        err.value
    )
    (tmp_path / "half/vae").mkdir(parents=True)
    (tmp_path / "half/vae/config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"half/vae.*incomplete.*holds \['config.json'\]"):
        WanVAE(str(tmp_path / "half"))
    with pytest.raises(FileNotFoundError, match=r"SigLIP.*nosiglip/image_encoder"):
        HunyuanTextEncoder(str(tiny_pretrained / "hunyuan"), str(tmp_path / "nosiglip"))
    with pytest.raises(FileNotFoundError, match=r"tokenizer.*tokenizer_config.json"):
        T5TextEncoder(str(tiny_pretrained / "hunyuan"), tokenizer_subfolder="missing")
    with pytest.raises(FileNotFoundError, match="FramePackBackbone"):
        FramePackBackbone(str(tmp_path / "nothing"), **SMALL_DIT)
    with pytest.raises(ValueError, match="num_layers: config 2 vs folder 1"):
        FramePackBackbone(str(tiny_pretrained / "framepack"), **{**SMALL_DIT, "num_layers": 2})


@pytest.mark.parametrize("cls", [HunyuanVideoVAE, WanVAE])
def test_causal_vae_codecs(cls: type, tiny_pretrained: Path) -> None:
    codec = cls(
        str(tiny_pretrained / ("hunyuan" if cls is HunyuanVideoVAE else "wan")), dtype="float32"
    )
    assert (codec.temporal_factor, codec.spatial_factor, codec.causal) == (4, 8, True)
    assert codec.latent_channels == TINY["latent_channels"]
    torch.manual_seed(0)
    video = torch.rand(1, 9, 3, 32, 32) * 2 - 1
    lat = codec.encode(video)
    assert lat.shape == (1, 3, 4, 4, 4)  # 1 + 4k frames -> 1 + k latents
    mu = codec.vae.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mode()  # [b, c, f, h, w]
    raw = mu.permute(0, 2, 1, 3, 4)
    if cls is HunyuanVideoVAE:  # z = scaling_factor * mu
        torch.testing.assert_close(lat, raw * codec.vae.config.scaling_factor)
    else:  # z = (mu - mean) / std, per channel (0.1 and 2.0 in the tiny folder)
        torch.testing.assert_close(lat, (raw - 0.1) / 2.0)
    torch.testing.assert_close(codec.denormalize(codec.normalize(mu)), mu)
    assert codec.decode(lat).shape == (1, 9, 3, 32, 32)
    with pytest.raises(ValueError, match="1 \\+ k \\* 4 frames, got 8"):
        codec.encode(video[:, :8])
    # A segment of 8 frames after the reference image: 2 latent frames, the image's dropped.
    seg = codec.encode_video(video[:, 1:], video[:, 0])
    torch.testing.assert_close(seg, lat[:, 1:])
    frames = codec.decode_continuation(lat[:, :1], seg)
    torch.testing.assert_close(frames, codec.decode(lat)[:, 1:])


def test_packed_conditioning_is_llama_layer_clip_pooled_and_siglip(
    text_encoder: HunyuanTextEncoder,
) -> None:
    enc = text_encoder
    assert (enc.dim, enc.pooled_dim, enc.image_tokens, enc.image_dim) == (32, 16, 4, 24)
    assert enc.crop_start > 0 and enc.reads_image
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens, mask = enc(["a red circle bounces", ""], image)
    assert tokens.shape == (2, 1 + 4 + 16, 32) and mask.shape == (2, 21)
    pooled, img, text, text_mask = unpack_conditioning(tokens, mask, 16, 4, 24)
    ids = enc.clip_tokenizer(["a red circle bounces"], max_length=77, padding="max_length",
                             return_tensors="pt")["input_ids"]  # fmt: skip
    torch.testing.assert_close(pooled[:1], enc.clip(input_ids=ids).pooler_output)
    assert (tokens[:, 0, 16:] == 0).all() and (tokens[:, 1:5, 24:] == 0).all()
    torch.testing.assert_close(img, enc.encode_image(image))
    # LLaMA: hidden state -3, the template's first crop_start tokens cropped, padding masked.
    prompt = enc.prompt_template.format("a red circle bounces")
    ids = enc.tokenizer([prompt], return_tensors="pt")["input_ids"]
    hidden = enc.llama(input_ids=ids, output_hidden_states=True).hidden_states[-3]
    n = ids.shape[1] - enc.crop_start
    torch.testing.assert_close(text[0, :n], hidden[0, enc.crop_start :], atol=1e-5, rtol=1e-5)
    assert text_mask[0].sum() == n and not text_mask[0, n:].any()
    with pytest.raises(ValueError, match="reference image"):
        enc(["a"])


def test_t5_encoder_zeroes_padding(tiny_pretrained: Path) -> None:
    enc = T5TextEncoder(str(tiny_pretrained / "wan"), max_tokens=8, dtype="float32")
    tokens, mask = enc(["a blue square", ""])
    assert tokens.shape == (2, 8, TINY["t5_dim"]) and enc.dim == TINY["t5_dim"]
    assert mask[0].sum() == 5 and (tokens[~mask] == 0).all() and tokens[mask].abs().sum() > 0


def f1_inputs(b: int = 2, frames: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    mask = torch.ones(b, 1 + 4 + 16, dtype=torch.bool)
    mask[:, 12:] = False  # every row: 7 of 16 text tokens
    return {
        "noisy": r(b, frames, 4, 8, 8), "t": torch.rand(b, generator=g),
        "segment_index": torch.full((b,), 3), "history": r(b, 19, 4, 8, 8),
        "image": r(b, 1, 4, 8, 8), "text": r(b, 21, 32), "text_mask": mask,
    }  # fmt: skip


def test_off_by_one_read_reaches_every_block(tiny_pretrained: Path) -> None:
    """`memory_read` is set on every block's processor: with the same weights and open gates the
    two reads differ, and with the gates shut both leave the pretrained output as it was."""
    folder = str(tiny_pretrained / "framepack")
    soft = FramePackBackbone(folder, **SMALL_DIT).eval()
    null = FramePackBackbone(folder, **SMALL_DIT, memory_read="off_by_one").eval()
    assert {b.attn.processor.memory_read for b in null.blocks} == {"off_by_one"}
    x, psi = f1_inputs(), torch.randn(2, 4, soft.width)
    with torch.no_grad():
        plain = soft(**x)
        for backbone in (soft, null):
            backbone.enable_memory()
            assert torch.equal(backbone(**x, memory=psi), plain)
            for block in backbone.blocks:
                block.attn.memory_gate.fill_(0.5)
        assert not torch.allclose(null(**x, memory=psi), soft(**x, memory=psi))
    with pytest.raises(ValueError, match="unknown memory_read 'hard'"):
        FramePackBackbone(folder, **SMALL_DIT, memory_read="hard")


def test_relative_layout_reproduces_diffusers_framepack_f1(backbone: FramePackBackbone) -> None:
    """With F1's own RoPE layout the adapter computes exactly diffusers' FramePack-F1 forward."""
    backbone.rope_layout = "relative"
    x = f1_inputs()
    pooled, image_feat, text, text_mask = unpack_conditioning(x["text"], x["text_mask"], 16, 4, 24)
    # FramePack-F1's section layout (pipeline, VANILLA): image 0 | 4x 1..16 | 2x 17,18 | 1x 19 | 20..
    idx = torch.arange(1 + 19 + 2)
    cf = lambda v: v.permute(0, 2, 1, 3, 4)  # noqa: E731
    hist = x["history"]
    with torch.no_grad():
        ours = backbone(**x)
        ref = backbone.model.__class__.forward(
            _reference(backbone), cf(x["noisy"]), (1 - x["t"]) * 1000,
            text, text_mask.long(), pooled, image_feat, idx[20:], guidance=torch.full((2,), 10000.0),
            latents_clean=cf(torch.cat((x["image"], hist[:, 18:]), 1)),
            indices_latents_clean=torch.cat((idx[:1], idx[19:20])),
            latents_history_2x=cf(hist[:, 16:18]), indices_latents_history_2x=idx[17:19],
            latents_history_4x=cf(hist[:, :16]), indices_latents_history_4x=idx[1:17],
            return_dict=False,
        )[0]  # fmt: skip
    backbone.rope_layout = "absolute"
    torch.testing.assert_close(ours, -cf(ref), atol=2e-5, rtol=2e-5)


def _reference(backbone: FramePackBackbone) -> torch.nn.Module:
    """The same weights with diffusers' own attention processor (what the release computes)."""
    from diffusers.models.transformers.transformer_hunyuan_video import (
        HunyuanVideoAttnProcessor2_0,
    )

    ref = type(backbone.model).from_config(backbone.model.config)
    ref.load_state_dict(backbone.model.state_dict(), strict=False)
    for block in [*ref.transformer_blocks, *ref.single_transformer_blocks]:
        block.attn.set_processor(HunyuanVideoAttnProcessor2_0())
    return ref.eval()


def test_closed_memory_gate_leaves_the_pretrained_output_unchanged(
    backbone: FramePackBackbone,
) -> None:
    x = f1_inputs()
    psi = torch.randn(2, 4, backbone.width)
    with torch.no_grad():
        plain = backbone(**x)
        with pytest.raises(ValueError, match="no memory gates"):
            backbone(**x, memory=psi)
        backbone.enable_memory()
        gates = [b.attn.memory_gate for b in backbone.blocks]
        assert len(gates) == 2 and all((g == 0).all() for g in gates)
        assert torch.equal(backbone(**x, memory=psi), plain)  # bit for bit at step 0
        gates[1].fill_(0.5)  # an open gate reads psi: the output moves
        assert not torch.allclose(backbone(**x, memory=psi), plain)
        gates[1].zero_()
    # ... and the closed gate still gets a gradient, so training opens it.
    backbone.train()
    backbone(**x, memory=psi).square().mean().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates)
    backbone.zero_grad(set_to_none=True)
    backbone.eval()


def test_per_sample_rope_and_segment_index(backbone: FramePackBackbone) -> None:
    """Absolute RoPE follows each row's segment index: a batch equals its rows run alone."""
    x = f1_inputs(b=2)
    x["segment_index"] = torch.tensor([0, 5])
    with torch.no_grad():
        batched = backbone(**x)
        rows = [backbone(**{k: v[i : i + 1] for k, v in x.items()}) for i in range(2)]
        moved = backbone(**{**x, "segment_index": torch.tensor([0, 6])})
    torch.testing.assert_close(batched, torch.cat(rows), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moved[0], batched[0])
    assert not torch.allclose(moved[1], batched[1], atol=1e-4)


def test_backbone_refuses_a_text_encoder_without_its_layout(
    backbone: FramePackBackbone, text_encoder: HunyuanTextEncoder
) -> None:
    backbone.check_text_encoder(text_encoder)
    from lightning_modules.networks.text_encoder import HashTextEncoder

    with pytest.raises(ValueError, match="pooled_dim"):
        backbone.check_text_encoder(HashTextEncoder(dim=32))
