"""Latent cache: reused without re-encoding, rebuilt on a resolution change, corrupt shards
re-encoded, and training batches identical to encoding on the fly."""

from pathlib import Path

import torch

from datamodules.video_datamodule import VideoDataModule
from lightning_modules.codecs import SpaceToDepthCodec
from lightning_modules.video_module import VideoModule
from tests.helpers.tiny import tiny_dit


class CountingCodec(SpaceToDepthCodec):
    """Counts `encode` calls, to prove a reused cache encodes nothing."""

    calls = 0

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        CountingCodec.calls += 1
        return super().encode(video)


def datamodule(tmp: Path, resolution: tuple[int, int] = (32, 32), cache: bool = True):
    return VideoDataModule(
        data_dir=str(tmp / "data"), resolution=resolution, batch_size=2,
        num_train_videos=3, num_val_videos=1, max_segments=2,
        latent_cache=str(tmp / "cache") if cache else None,
    )  # fmt: skip


def prepared(tmp: Path, codec: torch.nn.Module, **kw) -> tuple[VideoDataModule, int]:
    dm = datamodule(tmp, **kw)
    dm.attach_codec(codec)
    before = CountingCodec.calls
    dm.prepare_data()
    dm.setup("fit")
    return dm, CountingCodec.calls - before


def test_cache_reused_rebuilt_and_repaired(tmp_path: Path) -> None:
    codec = CountingCodec()
    _, first = prepared(tmp_path, codec)
    assert first == 2 * 4  # video + reference image for each of the 4 videos
    _, second = prepared(tmp_path, codec)
    assert second == 0, "a valid cache must be reused, not re-encoded"

    dm, _ = prepared(tmp_path, codec)
    shard = dm.train_set.directory / dm.train_set.entries[1]["file"]
    shard.write_bytes(shard.read_bytes()[:-7] + b"garbage")
    _, repaired = prepared(tmp_path, codec)
    assert repaired == 2  # only the corrupt shard is re-encoded
    assert dm.train_set[1]["latents"].ndim == 5

    dm16, rebuilt = prepared(tmp_path, codec, resolution=(16, 16))
    assert rebuilt == 2 * 4 and dm16.train_set.directory != dm.train_set.directory
    assert dm16.train_set[0]["latents"].shape[-1] == 16 // 4


def test_cached_batches_equal_on_the_fly_encoding(tmp_path: Path) -> None:
    # The module's default codec (4 x 4 space-to-depth: 48 channels) and text encoder (width 128).
    model = VideoModule(tiny_dit(latent_channels=48, text_dim=128, depth=1))
    cached, _ = prepared(tmp_path, model.codec)
    pixels = datamodule(tmp_path, cache=False)
    pixels.setup("fit")
    for a, b in zip(cached.train_dataloader(), pixels.train_dataloader(), strict=True):
        assert a["name"] == b["name"]  # same shuffle order
        out_a = model.teacher_forcing_batch(a, torch.Generator().manual_seed(0))
        out_b = model.teacher_forcing_batch(b, torch.Generator().manual_seed(0))
        out_a += (model.batch_image_latent(a),)
        out_b += (model.batch_image_latent(b),)
        for x, y in zip(out_a, out_b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_fit_from_the_cache_through_the_cli(tmp_path: Path) -> None:
    from train import main

    root = Path(__file__).resolve().parents[1]
    cli = main([
        "fit", "--config", str(root / "configs/stage1.yaml"),
        "--config", str(root / "tests/configs/tiny.yaml"),
        f"--data.init_args.data_dir={tmp_path / 'data'}",
        f"--data.init_args.latent_cache={tmp_path / 'cache'}",
        "--trainer.logger=false", "--trainer.callbacks=[]", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.fast_dev_run=1",
    ])  # fmt: skip
    assert cli.trainer.global_step == 1
    assert list((tmp_path / "cache").glob("*/train_00000.pt"))  # the codec came from the model


def test_curriculum_reads_lengths_from_the_cache(tmp_path: Path) -> None:
    """Stage 2 (curriculum) on the latent cache: batches of equal, cached lengths."""
    from datamodules.curriculum import LengthCurriculum

    dm = VideoDataModule(
        data_dir=str(tmp_path / "data"), batch_size=1, num_train_videos=4, num_val_videos=1,
        max_segments=3, latent_cache=str(tmp_path / "cache"),
        curriculum=LengthCurriculum(start_segments=3),
    )  # fmt: skip
    dm.attach_codec(SpaceToDepthCodec(4))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_set.lengths == [e["num_segments"] for e in dm.train_set.entries]
    loader = dm.train_dataloader()
    for indices in loader.batch_sampler:
        batch = loader.collate_fn([dm.train_set[i] for i in indices])
        assert batch["num_segments"].tolist() == [dm.train_set.lengths[i] for i in indices]
