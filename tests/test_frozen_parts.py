"""Frozen pretrained parts (VAE, LLaMA/CLIP/SigLIP) stay out of checkpoints: rebuilt from their
folders, recorded by file hash, verified on load (lightning_modules/training/frozen_parts.py);
checkpoints written before still load. Tiny random folders in the real layout.
"""

import hashlib
import pickle
import shutil
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from lightning_modules.direct_forcing import DirectForcingModule  # noqa: E402
from lightning_modules.loading import load_module  # noqa: E402
from lightning_modules.training.checkpoints import read_checkpoint  # noqa: E402
from lightning_modules.training.frozen_parts import RECORD_KEY, frozen_keys  # noqa: E402
from tests.helpers.tiny import perturb, save_checkpoint  # noqa: E402
from tests.helpers.tiny_real import real_batch, real_module  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def folders(tmp_path: Path, tiny_pretrained: Path) -> Path:
    """A copy of the tiny folders this test may change."""
    shutil.copytree(tiny_pretrained, tmp_path / "pretrained")
    return tmp_path / "pretrained"


def storage_bytes(path: Path) -> int:
    """Bytes of tensor data in a torch.save zip archive."""
    with zipfile.ZipFile(path) as z:
        return sum(i.file_size for i in z.infolist() if "/data/" in i.filename)


def test_checkpoint_holds_no_frozen_weights_and_records_the_folders(folders: Path) -> None:
    module = real_module(folders)
    module.text_encoder.load()  # loaded (as after a training step): still left out
    ckpt = save_checkpoint(module, folders.parent / "stage1.ckpt")
    saved = read_checkpoint(ckpt)
    assert not any(k.startswith(("codec.", "text_encoder.")) for k in saved["state_dict"])
    assert any(k.startswith("dit.") for k in saved["state_dict"])
    trained = sum(t.numel() * t.element_size() for t in saved["state_dict"].values())
    frozen = sum(
        t.numel() * t.element_size()
        for part in (module.codec, module.text_encoder) for t in part.state_dict().values()
    )  # fmt: skip
    # The networks pickled in the hyperparameters (a run outside the CLI) carry no frozen
    # weights either: only the trained tensors are stored.
    assert storage_bytes(ckpt) < trained + frozen / 10
    record = saved[RECORD_KEY]
    assert set(record) == {"codec", "text_encoder"}  # full fine-tuning: the DiT is saved
    vae = record["codec"]["sources"][str(folders / "hunyuan/vae")]
    weights = (folders / "hunyuan/vae/diffusion_pytorch_model.safetensors").read_bytes()
    assert vae["diffusion_pytorch_model.safetensors"] == hashlib.sha256(weights).hexdigest()
    assert str(folders / "siglip/image_encoder") in record["text_encoder"]["sources"]


def test_load_rebuilds_the_parts_and_refuses_changed_files(folders: Path) -> None:
    module = real_module(folders)
    perturb(module.dit, seed=1)
    ckpt = save_checkpoint(module, folders.parent / "stage1.ckpt")
    loaded = load_module(ckpt).eval()
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    batch = real_batch()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(batch["image"]), module.encode_image(batch["image"]))
    # The VAE's weights change in place: loading names the folder and the file that differs.
    path = folders / "hunyuan/vae/diffusion_pytorch_model.safetensors"
    save_file({k: v + 1e-3 for k, v in load_file(path).items()}, path)
    with pytest.raises(ValueError, match=r"codec \(HunyuanVideoVAE\): trained with .*hunyuan/vae"
                       r".*this run loads .*hunyuan/vae.*diffusion_pytorch_model.safetensors"):  # fmt: skip
        load_module(ckpt)


def test_a_different_folder_is_refused_naming_both(folders: Path, tiny_pretrained: Path) -> None:
    ckpt = read_checkpoint(save_checkpoint(real_module(folders), folders.parent / "s.ckpt"))
    same = real_module(tiny_pretrained)  # another copy of the same files: accepted
    same.on_load_checkpoint(ckpt)
    other = folders.parent / "other_siglip"
    shutil.copytree(folders / "siglip", other)
    config = other / "image_encoder/config.json"
    config.write_text(config.read_text().replace("{", "{\n ", 1))  # same model, other bytes
    changed = real_module(tiny_pretrained, {"siglip": other})
    with pytest.raises(ValueError) as err:
        changed.on_load_checkpoint(ckpt)
    message = str(err.value)
    assert str(folders / "siglip/image_encoder") in message and str(other) in message
    assert "image_encoder/config.json" not in message and "config.json (sha256" in message


def test_checkpoints_written_before_still_load(folders: Path) -> None:
    """An old checkpoint holds the frozen weights and no record: they load over the folders'."""
    module = real_module(folders)
    module.text_encoder.load()
    perturb(module.codec, seed=2)  # so that loading them is visible
    old = read_checkpoint(save_checkpoint(module, folders.parent / "new.ckpt"))
    del old[RECORD_KEY]
    full = {**{f"codec.{k}": v for k, v in module.codec.state_dict().items()},
            **{f"text_encoder.{k}": v for k, v in module.text_encoder.state_dict().items()}}  # fmt: skip
    old["state_dict"].update(full)
    path = folders.parent / "old.ckpt"
    torch.save(old, path)
    loaded = load_module(path)
    assert loaded.text_encoder.loaded  # its old weights loaded the encoder first
    stage2 = DirectForcingModule(init_checkpoint=str(path), trainable=["dit.model.proj_out.*"])
    for model in (loaded, stage2):
        parts = {"codec": model.codec, "text_encoder": model.text_encoder}
        for name, tensor in full.items():
            part, key = name.split(".", 1)
            assert torch.equal(parts[part].state_dict()[key], tensor), name
    # Without the weights and without a record, nothing says what the frozen parts were.
    del old["state_dict"][f"codec.{next(iter(module.codec.state_dict()))}"]
    torch.save(old, path)
    with pytest.raises(ValueError, match=r"codec: the checkpoint holds neither its weights"):
        load_module(path)


def test_resume_through_the_trainer_rebuilds_the_frozen_parts(folders: Path) -> None:
    torch.manual_seed(0)
    items = [{k: v[i] if k != "caption" else v[i] for k, v in real_batch(2).items()}
             for i in range(2)]  # fmt: skip
    loader = torch.utils.data.DataLoader(items, batch_size=2)
    kwargs = dict(accelerator="cpu", logger=False, enable_progress_bar=False,
                  enable_model_summary=False, default_root_dir=folders.parent)  # fmt: skip
    trainer = L.Trainer(max_steps=1, **kwargs)
    trainer.fit(real_module(folders, warmup_steps=1), loader)
    ckpt = next(folders.parent.rglob("*.ckpt"))
    assert RECORD_KEY in torch.load(ckpt, weights_only=False)
    resumed = real_module(folders, warmup_steps=1)
    L.Trainer(max_steps=2, **kwargs).fit(resumed, loader, ckpt_path=ckpt, weights_only=False)
    assert resumed.trainer.global_step == 2


def test_lazy_encoders_load_on_first_use_and_pickle_without_weights(tiny_pretrained: Path) -> None:
    module = real_module(tiny_pretrained)
    encoder = module.text_encoder
    assert not encoder.loaded and encoder.dim == 32 and encoder.image_tokens == 4
    assert not list(encoder.parameters())
    batch = real_batch()
    tokens, mask = module.encode_text(batch["caption"], image=batch["image"])
    assert encoder.loaded and tokens.shape == (2, 1 + 4 + 16, 32) and mask.dtype == torch.bool
    assert len(pickle.dumps(module.codec)) < 20_000 and len(pickle.dumps(encoder)) < 20_000
    copy = pickle.loads(pickle.dumps(module.codec))  # reloaded from its folder
    for key, tensor in module.codec.state_dict().items():
        assert torch.equal(copy.state_dict()[key], tensor), key
    assert frozen_keys(module)["text_encoder"] and all(
        k.startswith("text_encoder.") for k in frozen_keys(module)["text_encoder"]
    )
