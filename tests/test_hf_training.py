"""The FramePack-F1 configs through the CLI on tiny random weights (configs/framepack_f1/small.yaml):
stage 1 fits a few steps from the latent cache, its checkpoint round-trips, stage 2 starts from it
and trains only norm_out's modulation + proj_out, and a 3-segment rollout with the causal VAE
(temporal factor 4) conditions every segment on the latents generated before it.
"""

from pathlib import Path

import av
import pytest
import torch
from einops import rearrange

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from callbacks.video_logger import ground_truth  # noqa: E402
from datamodules.video_dataset import VideoFolderDataset  # noqa: E402
from lightning_modules.codecs import to_uint8  # noqa: E402
from lightning_modules.direct_forcing import DirectForcingModule  # noqa: E402
from lightning_modules.video_module import VideoModule  # noqa: E402
from train import main  # noqa: E402

pytestmark = pytest.mark.slow  # CLI runs / multi-process launches

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs/framepack_f1"


def args(stage: str, tmp: Path, tiny: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(CONFIGS / stage), "--config", str(CONFIGS / "small.yaml"),
        f"--model.init_args.dit.init_args.pretrained_dir={tiny / 'framepack'}",
        f"--model.init_args.codec.init_args.pretrained_dir={tiny / 'hunyuan'}",
        f"--model.init_args.text_encoder.init_args.pretrained_dir={tiny / 'hunyuan'}",
        f"--model.init_args.text_encoder.init_args.image_encoder_dir={tiny / 'siglip'}",
        f"--data.init_args.data_dir={tmp.parent / 'data'}",
        f"--trainer.logger.init_args.save_dir={tmp / 'runs'}",
        f"--trainer.default_root_dir={tmp / 'runs'}",
        "--trainer.max_steps=2", "--trainer.limit_train_batches=2",
        "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--data.init_args.min_segments=3", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory, tiny_pretrained: Path) -> tuple:
    tmp = tmp_path_factory.mktemp("f1") / "stage1"
    torch.manual_seed(0)
    cli = main(
        args("stage1.yaml", tmp, tiny_pretrained, f"--data.init_args.latent_cache={tmp / 'cache'}")
    )
    ckpt = next((tmp / "runs").rglob("last.ckpt"))
    return tmp, cli, ckpt


def test_stage1_fits_from_the_causal_vae_latent_cache(stage1: tuple) -> None:
    tmp, cli, _ = stage1
    model, dm = cli.model, cli.datamodule
    assert cli.trainer.global_step == 2
    assert type(model.dit).__name__ == "FramePackBackbone" and model.codec.temporal_factor == 4
    assert all(not p.requires_grad for p in model.codec.parameters())
    assert all(not p.requires_grad for p in model.text_encoder.parameters())
    assert not model.text_encoder.llama.training and not model.codec.vae.training
    # The cache holds the clip encoded with the reference image as causal first frame, 2 latent
    # frames per 8-frame segment, and the image latent encoded alone.
    cached = dm.train_set[0]
    pixels = VideoFolderDataset(dm.data_dir, "train", dm.segment_frames, dm.fps, dm.resolution)
    item = next(pixels[i] for i in range(len(pixels)) if pixels[i]["name"] == cached["name"])
    latents, frames = model.encode_video(item["video"][None], item["image"][None])
    flat = rearrange(item["video"], "s t c h w -> 1 (s t) c h w")
    clip = model.codec.encode(torch.cat((item["image"][None, None], flat), 1))  # 1 + 4k frames
    torch.testing.assert_close(latents, clip[:, 1:])
    assert frames == 2 and cached["latents"].shape[1:] == (2, 4, 4, 4)
    torch.testing.assert_close(rearrange(cached["latents"], "s t c h w -> 1 (s t) c h w"), latents)
    torch.testing.assert_close(cached["image_latent"], model.encode_image(item["image"][None])[0])
    # The rollout logger wrote 3 segments x 8 frames (pixel frames, not latent frames).
    videos = sorted((tmp / "runs").rglob("rollouts/*.mp4"))
    assert videos
    with av.open(str(videos[0])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3 * 8
    # Its contact sheet shows the cached ground truth, decoded after the image latent.
    truth = ground_truth(cached, model)
    assert truth.shape == item["video"].flatten(0, 1).shape and truth.dtype == torch.uint8
    decoded = model.codec.decode_continuation(cached["image_latent"][None], latents)[0]
    assert torch.equal(truth, to_uint8(decoded))
    assert next((tmp / "runs").rglob("rollouts/sheet.png")).stat().st_size > 0


def test_checkpoint_round_trip(stage1: tuple) -> None:
    _, cli, ckpt = stage1
    loaded = VideoModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert any(k.endswith("attn.memory_gate") for k in state)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    model = cli.model.eval()
    b = 1
    x = {
        "noisy": torch.randn(b, 2, 4, 4, 4), "t": torch.rand(b), "segment_index": torch.tensor([2]),
        "history": torch.randn(b, 19, 4, 4, 4), "image": torch.randn(b, 1, 4, 4, 4),
    }  # fmt: skip
    image = torch.rand(b, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        outs = []
        for m in (model, loaded):
            text = m.encode_text(["a red circle"], image=image)
            psi = m.semantic_pack.init(text[0], x["image"])
            outs.append(m.dit(**x, text=text[0], text_mask=text[1], memory=psi))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_rollout_of_three_segments_with_temporal_factor_4(stage1: tuple) -> None:
    _, cli, _ = stage1
    model = cli.model.eval()
    calls, segments = [], []
    hook = model.dit.register_forward_pre_hook(
        lambda m, a: calls.append((a[0].shape[1], int(a[2][0]), a[3].clone())), with_kwargs=False
    )
    # Eq. 1's updates: SemanticPack(psi, segment) (only the conditional psi at cfg_scale 1)
    update = model.semantic_pack.register_forward_pre_hook(lambda m, a: segments.append(a[1]))
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    try:
        video = model.generate(image, ["a red circle"], 3, frames_per_segment=8)
    finally:
        hook.remove()
        update.remove()
    assert video.shape == (1, 24, 3, 32, 32) and video.dtype == torch.uint8
    assert {n for n, _, _ in calls} == {2}  # 8 pixel frames = 2 latent frames per segment
    steps = model.hparams.sample_steps
    assert [k for _, k, _ in calls] == [0] * steps + [1] * steps + [2] * steps
    history = [h for _, _, h in calls[::steps]]
    assert history[0].abs().sum() == 0  # nothing generated yet
    torch.testing.assert_close(history[1][:, -2:], segments[0])
    torch.testing.assert_close(history[2][:, -4:], torch.cat(segments[:2], 1))
    # Each segment is decoded after the latent frame before it (the image latent first).
    image_lat = model.encode_image(image)
    before = [image_lat, segments[0][:, -1:], segments[1][:, -1:]]
    for k in range(3):
        frames = model.codec.decode(torch.cat((before[k], segments[k]), 1))[:, 1:]
        assert torch.equal(video[:, 8 * k : 8 * (k + 1)], to_uint8(frames))


def test_stage2_from_the_stage1_checkpoint_trains_norm_out_and_proj_out(
    stage1: tuple, tiny_pretrained: Path
) -> None:
    tmp, _, ckpt = stage1
    # As in the real stage-2 config, the backbone is built without its folder: weights from ckpt.
    no_folder = tmp.parent / "no_folder.yaml"
    no_folder.write_text(
        "model:\n  init_args:\n    dit:\n      init_args:\n        pretrained_dir: null\n"
    )
    torch.manual_seed(0)
    cli = main(args(
        "stage2_direct_forcing.yaml", tmp.parent / "stage2", tiny_pretrained,
        f"--model.init_args.init_checkpoint={ckpt}", "--config", str(no_folder),
        "--data.init_args.batch_size=1", "--data.init_args.curriculum.init_args.start_segments=3",
        "--trainer.limit_val_batches=0", "--trainer.callbacks=[]",
    ))  # fmt: skip
    model = cli.model
    assert isinstance(model, DirectForcingModule) and cli.trainer.global_step == 2
    before = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "dit.model.norm_out.linear.weight", "dit.model.norm_out.linear.bias",
        "dit.model.proj_out.weight", "dit.model.proj_out.bias",
    }  # fmt: skip
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == trainable
    assert "train/loss_seg_2" in cli.trainer.logged_metrics  # whole 3-segment videos


def test_adapters_overlay_trains_and_saves_only_the_adapters(
    stage1: tuple, tiny_pretrained: Path
) -> None:
    """configs/framepack_f1/adapters.yaml after stage1.yaml: rank-64 LoRA on a bf16 base, the
    checkpoint holds what trains (adapters, SemanticPack, gates) and no backbone weight."""
    tmp, _, _ = stage1
    torch.manual_seed(0)
    cli = main(args(
        "stage1.yaml", tmp.parent / "adapters", tiny_pretrained,
        "--config", str(CONFIGS / "adapters.yaml"), "--trainer.limit_val_batches=0",
    ))  # fmt: skip
    model = cli.model
    assert cli.trainer.global_step == 2 and model.adapters.rank == 64
    assert model.dit.model.proj_out.weight.dtype == torch.bfloat16  # the frozen base
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".lora." in n for n in trainable) and not any(
        ".attn.to_q.weight" in n for n in trainable
    )
    ckpt = torch.load(next((tmp.parent / "adapters").rglob("last.ckpt")), weights_only=False)
    assert set(ckpt["state_dict"]) == trainable
    assert set(ckpt["pretrained_parts"]) == {"dit", "codec", "text_encoder"}
    ups = [p for n, p in model.named_parameters() if n.endswith(".lora.up.weight")]
    assert any(p.abs().sum() > 0 for p in ups)  # B starts at zero: the adapters trained
