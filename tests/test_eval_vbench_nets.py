"""VBench's own networks from local weights: RAFT (torchvision / princeton-vl layouts) and MUSIQ
(pyiqa layout), built at random weights; parity tests run when real weights are given:

- `MEMORYPACK_RAFT_LARGE=<raft_large_*.pth or raft-things.pth>`: a known translation is recovered;
- `MEMORYPACK_MUSIQ_SPAQ=<musiq_spaq_ckpt-358bb6af.pth>` and `MEMORYPACK_PYIQA_CALIBRATION=<pyiqa's
  ResultsCalibra/dist_dir>`: the scores pyiqa publishes for its calibration images.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.backends.musiq import MusiqQuality
from eval.backends.musiq_net import MUSIQ, multiscale_patches
from eval.backends.raft import RaftFlow
from eval.backends.raft_net import convert_princeton_state_dict, raft_large, raft_small
from eval.backends.registry import ROLES, build_backends
from eval.formulas import dynamic_threshold, top5_mean
from eval.video_scores import score_video

pytestmark = pytest.mark.usefixtures("one_thread")


def _only(**specs: str) -> dict[str, str]:
    return {role: specs.get(role, "unavailable") for role in ROLES}


def _moving(frames: int = 4, h: int = 40, w: int = 56) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (3, h, w + 3 * frames), generator=gen, dtype=torch.uint8)
    return torch.stack([base[..., 3 * t : 3 * t + w] for t in range(frames)])


@pytest.mark.parametrize(
    ("factory", "size", "params"),
    [(raft_large, "large", 5_257_536), (raft_small, "small", 990_162)],
)
def test_raft_loads_torchvision_layout_and_scores(
    tmp_path: Path, factory: object, size: str, params: int
) -> None:
    torch.manual_seed(0)
    net = factory()
    assert sum(p.numel() for p in net.parameters()) == params  # torchvision's published counts
    path = tmp_path / f"raft_{size}.pth"
    torch.save(net.state_dict(), path)
    backends = build_backends(_only(flow=f"raft_{size}:{path}"))
    flow = backends.flow
    assert isinstance(flow, RaftFlow) and flow.name == f"raft_{size}" and flow.iterations == 20
    flow.iterations = 2  # VBench's 20 updates only cost time here
    video = _moving(2)
    frames = video.permute(0, 2, 3, 1).numpy()
    mag = flow.flow_magnitude(frames[0], frames[1])
    # 40x56 is upsampled to RAFT's minimum 128 on the shorter side (179 wide), padded to 8s.
    assert mag.shape == (128, 184) and np.isfinite(mag).all() and (mag >= 0).all()
    scores = score_video(video, backends, fps=8)
    # The formula path: one pair, moving iff its top-5% magnitude exceeds 6 * 40 / 256 px.
    moving = float(top5_mean(mag) > dynamic_threshold(40, 56))
    assert scores[f"dynamic_fraction@raft_{size}"] == moving
    torch.save({"module.fnet.conv1.weight": torch.zeros(1)}, path)
    error = (ValueError, "princeton") if size == "small" else (RuntimeError, "does not fit")
    with pytest.raises(error[0], match=error[1]):
        build_backends(_only(flow=f"raft_{size}:{path}"))


def _fill(net: torch.nn.Module, scale: float) -> None:
    """Deterministic weights, independent of the modules' init order (sorted by name)."""
    gen = torch.Generator().manual_seed(0)
    for name, tensor in sorted(net.state_dict().items()):
        if name.endswith("running_var"):
            tensor.copy_(1 + torch.rand(tensor.shape, generator=gen))
        elif not name.endswith("num_batches_tracked"):
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * scale)


def _digest(net: torch.nn.Module) -> str:
    """Hash of every state-dict key and shape, in order."""
    keys = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in net.state_dict().items())
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


# Computed once with torchvision 0.29.1's own `raft.py` / pyiqa 0.1.16's `musiq_arch.py` (their
# wheels' source, imported with stubs beside the pinned torch): state-dict layout digests and
# outputs for `_fill` weights; the re-implementations matched them bit for bit.
_REFERENCE = {
    "raft_large": ("c467f20f8593eda1", 4.484840393066406, (11.055028915405273, 3.5690829753875732)),
    "raft_small": ("5d5a1d21930d59e4", 0.6276940703392029, (-0.7561269998550415, 0.9820069074630737)),
    "musiq": ("4e3e6a0ccd27e9b5", 0.17448507249355316),
}  # fmt: skip


@pytest.mark.parametrize("factory", [raft_large, raft_small])
def test_raft_matches_torchvision_layout_and_outputs(factory: object) -> None:
    net = factory().eval()
    digest, mean_abs, pixel = _REFERENCE[factory.__name__]
    assert _digest(net) == digest  # torchvision's key names and shapes, in its order
    _fill(net, 0.03)
    x1, x2 = torch.rand(2, 1, 3, 128, 136, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        flow = net(x1, x2, 2)[-1]
    assert float(flow.abs().mean()) == pytest.approx(mean_abs, rel=1e-4)
    assert flow[0, :, 60, 70].tolist() == pytest.approx(pixel, rel=1e-4)


def test_musiq_matches_pyiqa_layout_and_output() -> None:
    net = MUSIQ().eval()
    digest, score = _REFERENCE["musiq"]
    assert _digest(net) == digest  # pyiqa's key names and shapes, in its order
    _fill(net, 0.1)
    x = torch.rand(1, 3, 72, 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert float(net(x)) == pytest.approx(score, rel=1e-4)


def _to_princeton(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision raft_large names -> princeton-vl names (written independently of the converter)."""
    renames = {
        "feature_encoder.convnormrelu.0": "fnet.conv1", "feature_encoder.conv": "fnet.conv2",
        "context_encoder.convnormrelu.0": "cnet.conv1", "context_encoder.convnormrelu.1": "cnet.norm1",
        "context_encoder.conv": "cnet.conv2",
        "update_block.motion_encoder.convcorr1.0": "update_block.encoder.convc1",
        "update_block.motion_encoder.convcorr2.0": "update_block.encoder.convc2",
        "update_block.motion_encoder.convflow1.0": "update_block.encoder.convf1",
        "update_block.motion_encoder.convflow2.0": "update_block.encoder.convf2",
        "update_block.motion_encoder.conv.0": "update_block.encoder.conv",
        "mask_predictor.convrelu.0": "update_block.mask.0", "mask_predictor.conv": "update_block.mask.2",
    }  # fmt: skip
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in renames:
            name = f"{renames[module]}.{param}"
        elif module.startswith(("feature_encoder.layer", "context_encoder.layer")):
            net = "fnet" if module.startswith("feature") else "cnet"
            _, layer, index, *rest = module.split(".")
            part = {"convnormrelu1.0": "conv1", "convnormrelu1.1": "norm1", "convnormrelu2.0": "conv2",
                    "convnormrelu2.1": "norm2"}.get(".".join(rest), ".".join(rest))  # fmt: skip
            name = f"{net}.{layer}.{index}.{part}.{param}"
            if part == "downsample.1":  # the original also stores this norm as `norm3`
                out[f"module.{net}.{layer}.{index}.norm3.{param}"] = value
        else:
            name = key.replace("recurrent_block.convgru1.convz", "gru.convz1")
            for gate in "zrq":
                for i in "12":
                    name = name.replace(
                        f"recurrent_block.convgru{i}.conv{gate}", f"gru.conv{gate}{i}"
                    )
        out[f"module.{name}"] = value
    return out


def test_raft_princeton_checkpoint_converts_to_identical_network(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = raft_large().eval()
    for name, buffer in reference.named_buffers():
        if "running" in name:
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    princeton = _to_princeton(reference.state_dict())
    assert "module.update_block.gru.convq2.weight" in princeton
    converted = convert_princeton_state_dict(princeton)
    net = raft_large().eval()
    net.load_state_dict(converted, strict=True)
    x1, x2 = torch.rand(2, 1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net(x1, x2, 2)[-1], reference(x1, x2, 2)[-1])
    with pytest.raises(KeyError, match="unknown key"):
        convert_princeton_state_dict({"module.fnet.layer1.0.conv9.weight": torch.zeros(1)})


def test_musiq_loads_pyiqa_layout_and_follows_vbench_preprocessing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = MUSIQ().eval()
    path = tmp_path / "musiq_spaq_ckpt.pth"
    torch.save(net.state_dict(), path)
    backends = build_backends(_only(imaging=f"musiq_spaq:{path}"))
    musiq = backends.imaging
    assert isinstance(musiq, MusiqQuality) and musiq.name == "musiq_spaq"
    # Sequence: 49 (224 scale) + 144 (384 scale) padded slots + every native 32-px patch.
    assert multiscale_patches(torch.zeros(1, 3, 64, 96)).shape == (1, 49 + 144 + 2 * 3, 3075)
    video = _moving(1, 40, 600)  # longer side 600 > 512: resized to 34x512 as VBench "longer"
    scores = musiq.scores(video)
    assert scores.shape == (1,) and torch.isfinite(scores).all()
    resized = torch.nn.functional.interpolate(video.float(), size=(34, 512), mode="bilinear")
    with torch.no_grad():
        expected = float(net(resized.round() / 255.0)[0, 0]) / 100
    assert float(scores[0]) == pytest.approx(expected, abs=1e-6)
    torch.save({"head.weight": torch.zeros(1, 384)}, path)
    with pytest.raises(RuntimeError, match="does not fit"):
        build_backends(_only(imaging=f"musiq_spaq:{path}"))


def test_amt_s_is_reported_unsupported() -> None:
    with pytest.raises(ValueError, match="not supported"):
        build_backends({"interpolation": "amt_s:/x.pth"})


def _env_path(name: str) -> Path:
    value = os.environ.get(name, "")
    if not value or not Path(value).exists():
        pytest.skip(f"{name} not set to an existing path (real weights are not shipped)")
    return Path(value)


def test_raft_weights_recover_a_known_translation() -> None:
    backend = RaftFlow(_env_path("MEMORYPACK_RAFT_LARGE"))
    pytest.importorskip("skimage")
    from eval.real_clips import photo

    image = photo("coffee")[:256, :384]
    shifted = np.ascontiguousarray(np.roll(image, (3, 5), axis=(0, 1)))
    flow = backend.flow(image, shifted)[:, 32:-32, 32:-32]  # away from the wrapped border
    assert float(flow[0].median()) == pytest.approx(5.0, abs=0.3)
    assert float(flow[1].median()) == pytest.approx(3.0, abs=0.3)


# pyiqa ResultsCalibra/calibration_summary.csv, row "musiq-spaq(ours)" (pyiqa's own MUSIQ).
_PYIQA_MUSIQ_SPAQ = {"I03.bmp": 17.6804, "I04.bmp": 70.6531, "I06.bmp": 79.0364, "I08.bmp": 79.3189, "I19.bmp": 50.4526}  # fmt: skip


def test_musiq_spaq_matches_pyiqa_calibration() -> None:
    import cv2

    net = MusiqQuality(_env_path("MEMORYPACK_MUSIQ_SPAQ")).module
    folder = _env_path("MEMORYPACK_PYIQA_CALIBRATION")
    for name, expected in _PYIQA_MUSIQ_SPAQ.items():
        image = cv2.cvtColor(cv2.imread(str(folder / name)), cv2.COLOR_BGR2RGB)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            score = float(net(x))
        assert math.isclose(score, expected, abs_tol=0.05), (name, score, expected)
