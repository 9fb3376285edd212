"""PatchPCACodec (the demo's stage-0 codec): fitted from data in closed form, stored as buffers,
fitted by the datamodule before anything else sees the model."""

from pathlib import Path

import pytest
import torch

from datamodules.synthetic import render_video
from datamodules.video_datamodule import VideoDataModule
from lightning_modules.codecs import PatchPCACodec


def frames(n: int = 8, size: int = 16) -> torch.Tensor:
    video, _ = render_video(seed=1, num_frames=n, size=(size, size))
    return video.float() / 127.5 - 1


def test_fit_keeps_the_principal_patch_directions() -> None:
    x = frames()
    full = PatchPCACodec(patch=2, components=12)  # every direction kept: exact round trip
    assert full.fit(x) > 60
    torch.testing.assert_close(full.decode(full.encode(x[None]))[0], x, atol=1e-4, rtol=0)
    few = PatchPCACodec(patch=4, components=16)
    psnr = few.fit(x)
    lat = few.encode(x[None])
    assert lat.shape == (1, 8, 16, 4, 4)
    assert lat.square().mean().item() == pytest.approx(1.0, rel=1e-3)  # unit mean square
    assert 25 < psnr < 60  # lossy but good: rendered frames are near low-rank per patch
    # Channels are ordered by energy, as PCA promises.
    energy = lat.square().mean((0, 1, 3, 4))
    assert (energy[:-1] >= energy[1:] - 1e-6).all()
    # A wrong direction (e.g. a random basis) reconstructs far worse.
    few.basis.copy_(torch.linalg.qr(torch.randn(48, 16))[0].T)
    error = (few.decode(few.encode(x[None]))[0] - x).square().mean() / 4
    assert -10 * torch.log10(error) < psnr - 5


def test_unfitted_codec_refuses_and_fit_travels_in_the_state_dict() -> None:
    codec = PatchPCACodec(patch=4, components=8)
    with pytest.raises(RuntimeError, match="not fitted"):
        codec.encode(frames()[None])
    codec.fit(frames())
    copy = PatchPCACodec(patch=4, components=8)
    copy.load_state_dict(codec.state_dict())
    assert not copy.needs_fit
    torch.testing.assert_close(copy.encode(frames()[None]), codec.encode(frames()[None]))
    with pytest.raises(ValueError, match="components"):
        PatchPCACodec(patch=2, components=13)


def test_datamodule_fits_the_codec_deterministically(tmp_path: Path) -> None:
    def fitted() -> PatchPCACodec:
        dm = VideoDataModule(
            data_dir=str(tmp_path / "data"), resolution=(16, 16), segment_frames=2,
            num_train_videos=3, num_val_videos=1, max_segments=2,
        )  # fmt: skip
        dm.prepare_data()
        codec = PatchPCACodec(patch=4, components=8, fit_frames=10)
        dm.attach_codec(codec)
        dm.setup("fit")
        return codec

    a, b = fitted(), fitted()
    assert not a.needs_fit
    torch.testing.assert_close(a.basis, b.basis, rtol=0, atol=0)  # every DDP rank agrees
