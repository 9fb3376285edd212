"""The conditioning cache (datamodules/conditioning_cache.py): the frozen LLaMA/CLIP/SigLIP outputs
computed once, equal to the encoders' own, keyed and checksummed; a run that reads it (and the
latent cache) never loads an encoder, rollouts included. Tiny random folders, synthetic videos.
"""

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from datamodules.conditioning_cache import conditioning_key  # noqa: E402
from datamodules.video_datamodule import VideoDataModule  # noqa: E402
from lightning_modules.pretrained.text_encoders import HunyuanTextEncoder, LazyEncoder  # noqa: E402
from tests.helpers.tiny_real import real_module  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 + 2 synthetic videos of 1-2 segments of 8 frames at 32 x 32."""
    from datamodules.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("videos")
    generate_dataset(root, num_train=3, num_val=2, min_segments=1, max_segments=2,
                     segment_frames=8, fps=8.0, size=(32, 32), seed=0)  # fmt: skip
    return root


def datamodule(videos: Path, cache: Path, **kwargs: object) -> VideoDataModule:
    return VideoDataModule(
        data_dir=str(videos), source="folder", resolution=(32, 32), segment_frames=8,
        batch_size=3, conditioning_cache=str(cache), **kwargs,
    )  # fmt: skip


def test_cached_conditioning_equals_the_encoders(
    videos: Path, tmp_path: Path, tiny_pretrained: Path
) -> None:
    module = real_module(tiny_pretrained, prompt_dropout=0.5)
    dm = datamodule(videos, tmp_path / "cond")
    dm.attach_text_encoder(module.text_encoder)
    dm.prepare_data()
    assert not module.text_encoder.loaded  # loaded to fill the cache, then dropped
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["text_parts"]["llama"].shape == (3, 16, 32)
    assert batch["image_parts"]["siglip"].shape == (3, 4, 24)
    assert batch["null_text_parts"]["pooled"].shape == (1, 16)
    cached = {}
    for dropout in (0.0, 0.5):
        torch.manual_seed(0)
        cached[dropout] = module.batch_text(batch, dropout)
    assert not module.text_encoder.loaded  # the cache is read, no encoder runs
    uncached = {k: v for k, v in batch.items() if not k.endswith("_parts")}
    for dropout in (0.0, 0.5):
        torch.manual_seed(0)
        encoded = module.batch_text(uncached, dropout)
        for a, b in zip(cached[dropout], encoded, strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(cached[0.0][0], cached[0.5][0])  # the seed dropped some prompts
    # The rollout's empty prompt (classifier-free guidance) from the cache, too.
    from lightning_modules.conditioning import CachedConditioning

    parts = CachedConditioning.from_batch(batch)
    null = module.text_encoder.combine(parts.null(), parts.image)
    empty = module.encode_text([""] * 3, image=batch["image"])
    assert all(torch.equal(a, b) for a, b in zip(null, empty, strict=True))


def test_key_checksums_and_repair(videos: Path, tmp_path: Path, tiny_pretrained: Path) -> None:
    encoder = HunyuanTextEncoder(str(tiny_pretrained / "hunyuan"), str(tiny_pretrained / "siglip"),
                                 max_tokens=16, crop_start=None, dtype="float32")  # fmt: skip
    other = HunyuanTextEncoder(str(tiny_pretrained / "hunyuan"), str(tiny_pretrained / "siglip"),
                               max_tokens=12, crop_start=None, dtype="float32")  # fmt: skip
    key = conditioning_key(encoder, (32, 32), videos)
    assert key != conditioning_key(other, (32, 32), videos)
    assert key != conditioning_key(encoder, (64, 64), videos)
    dm = datamodule(videos, tmp_path / "cond")
    dm.attach_text_encoder(encoder)
    assert dm._prepare_conditioning() == 3 + 2
    assert dm._prepare_conditioning() == 0  # complete: nothing encoded, nothing loaded
    shard = next((tmp_path / "cond" / key).glob("train_*.pt"))
    shard.write_bytes(shard.read_bytes()[:-8] + b"corrupt!")
    dm.setup("fit")
    with pytest.raises(OSError, match=rf"{shard.name} does not match its checksum"):
        [dm.train_set[i] for i in range(len(dm.train_set))]
    assert dm._prepare_conditioning() == 1  # the corrupt shard is re-encoded
    with pytest.raises(ValueError, match=r"HashTextEncoder has trainable weights"):
        from lightning_modules.networks.text_encoder import HashTextEncoder

        conditioning_key(HashTextEncoder(), (32, 32), videos)


@pytest.mark.slow
def test_a_run_with_both_caches_loads_no_encoder(
    videos: Path, tmp_path: Path, tiny_pretrained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from train import main

    configs = ROOT / "configs/framepack_f1"
    args = [
        "fit", "--config", str(configs / "stage1.yaml"), "--config", str(configs / "small.yaml"),
        f"--model.init_args.dit.init_args.pretrained_dir={tiny_pretrained / 'framepack'}",
        f"--model.init_args.codec.init_args.pretrained_dir={tiny_pretrained / 'hunyuan'}",
        f"--model.init_args.text_encoder.init_args.pretrained_dir={tiny_pretrained / 'hunyuan'}",
        f"--model.init_args.text_encoder.init_args.image_encoder_dir={tiny_pretrained / 'siglip'}",
        "--data.init_args.source=folder", f"--data.init_args.data_dir={videos}",
        f"--data.init_args.latent_cache={tmp_path / 'latents'}",
        f"--data.init_args.conditioning_cache={tmp_path / 'cond'}",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.max_steps=1", "--trainer.limit_train_batches=1",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ]  # fmt: skip
    import prepare_caches

    # One command fills both caches (codec + encoders only), as prepare_data would.
    done = prepare_caches.main(["--device=cpu", *args[1:]])
    assert {k: v[1] for k, v in done.items()} == {"latent_cache": 5, "conditioning_cache": 5}
    loads = []
    monkeypatch.setattr(LazyEncoder, "load", lambda self: loads.append(self))
    cli = main([*args, f"--trainer.logger.init_args.save_dir={tmp_path / 'second'}"])
    assert cli.trainer.global_step == 1 and not loads
    assert next((tmp_path / "second").rglob("rollouts/*.mp4")).stat().st_size > 0  # rollout too
