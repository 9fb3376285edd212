"""Low-rank adapters (networks/lora.py, training/adapters.py): exact at init, exact merge, what
trains, adapter-only checkpoints of the real backbone (tiny folders), stage 2 on the adapted
model, merging before `predict`."""

from pathlib import Path

import pytest
import torch

from lightning_modules.networks.lora import lora_layers
from lightning_modules.training.adapters import LoraAdapters
from lightning_modules.training.checkpoints import read_checkpoint
from tests.helpers.tiny import perturb, save_checkpoint, tiny_batch, tiny_module, tiny_pack

pytestmark = pytest.mark.usefixtures("one_thread")


def dit_inputs(b: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return {
        "noisy": torch.randn(b, 2, 12, 8, 8), "t": torch.rand(b), "segment_index": torch.tensor([0, 3]),
        "history": torch.randn(b, 7, 12, 8, 8), "image": torch.randn(b, 1, 12, 8, 8),
        "text": torch.randn(b, 16, 16), "text_mask": torch.ones(b, 16, dtype=torch.bool),
    }  # fmt: skip


def test_adapters_start_as_the_base_model_and_merge_into_it() -> None:
    base = tiny_module(tiny_pack())
    perturb(base)
    adapted = tiny_module(tiny_pack(), adapters=LoraAdapters(rank=4, alpha=8))
    adapted.load_state_dict(base.state_dict(), strict=False)
    x, psi = dit_inputs(), torch.randn(2, 4, 32)
    with torch.no_grad():
        reference = base.dit(**x, memory=psi)
        assert torch.equal(adapted.dit(**x, memory=psi), reference)  # B = 0: the same network
        layers = lora_layers(adapted.dit)
        assert sorted({n.split(".", 2)[2] for n in layers}) == [
            "attn.proj",
            "attn.qkv",
            "mlp.0",
            "mlp.2",
        ]  # fmt: skip  (adaLN modulation excluded)
        for layer in layers.values():
            layer.lora.up.weight.normal_(std=0.05)
        adapted_out = adapted.dit(**x, memory=psi)
        assert (adapted_out - reference).abs().max() > 1e-3
        keys = set(base.state_dict())
        assert keys < set(adapted.state_dict())  # the base's names are unchanged
        assert adapted.merge_adapters() == 2 * 4
        assert not lora_layers(adapted.dit) and set(adapted.state_dict()) == keys
        torch.testing.assert_close(adapted.dit(**x, memory=psi), adapted_out, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="merged into the weights for inference"):
        adapted.on_save_checkpoint({})


def test_adapters_train_lora_semantic_pack_and_gates_only() -> None:
    module = tiny_module(tiny_pack(), adapters=LoraAdapters(rank=2))
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n, _ in module.named_parameters()
        if ".lora." in n or n.startswith("semantic_pack.") or n.endswith("memory_gate")
    }  # fmt: skip
    assert not any(n.startswith(("text_encoder.", "dit.head.", "dit.x_embed.")) for n in trainable)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    perturb(module.semantic_pack)
    module.teacher_forcing_loss(tiny_batch()).backward()
    opt.step()
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    with pytest.raises(ValueError, match=r"train_in_full pattern 'dit\.hed\.\*' matches no"):
        tiny_module(adapters=LoraAdapters(train_in_full=("dit.hed.*",)))
    with pytest.raises(ValueError, match=r"targets \['nothing'\].*match no nn.Linear"):
        tiny_module(adapters=LoraAdapters(targets=("nothing",)))


@pytest.fixture()
def adapted_ckpt(tmp_path: Path, tiny_pretrained: Path) -> tuple[Path, torch.nn.Module]:
    pytest.importorskip("diffusers")
    from tests.helpers.tiny_real import real_module

    module = real_module(tiny_pretrained, adapters=LoraAdapters(rank=2))
    for p in module.parameters():
        if p.requires_grad:  # 'trained' adapters, SemanticPack and gates
            p.data.add_(0.05 * torch.randn_like(p))
    return save_checkpoint(module, tmp_path / "adapted.ckpt"), module


def test_adapter_only_checkpoint_of_the_real_backbone(adapted_ckpt: tuple) -> None:
    from lightning_modules.loading import load_module

    path, module = adapted_ckpt
    ckpt = read_checkpoint(path)
    saved = set(ckpt["state_dict"])
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert saved == trainable  # adapters, SemanticPack, gates: no backbone, VAE or encoder weight
    assert set(ckpt["pretrained_parts"]) == {"dit", "codec", "text_encoder"}
    loaded = load_module(path).eval()
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    base = dict(module.dit.named_parameters())
    for name, p in loaded.dit.named_parameters():  # the base weights: rebuilt from the folder
        assert torch.equal(p, base[name]), name


def test_stage2_trains_its_head_on_the_adapted_model(adapted_ckpt: tuple, tmp_path: Path) -> None:
    from lightning_modules.direct_forcing import DirectForcingModule
    from tests.helpers.tiny_real import SMALL_DIT, real_batch

    path, stage1 = adapted_ckpt
    head = ["dit.model.norm_out.linear.*", "dit.model.proj_out.*"]
    stage2 = DirectForcingModule(init_checkpoint=str(path), trainable=head, warmup_steps=1)
    assert stage2.adapters == stage1.adapters and lora_layers(stage2.dit)
    trainable = {n for n, p in stage2.named_parameters() if p.requires_grad}
    assert trainable == {"dit.model.norm_out.linear.weight", "dit.model.norm_out.linear.bias",
                         "dit.model.proj_out.weight", "dit.model.proj_out.bias"}  # fmt: skip
    for name, tensor in stage1.state_dict().items():
        assert torch.equal(stage2.state_dict()[name], tensor), name
    opt = torch.optim.SGD([p for p in stage2.parameters() if p.requires_grad], lr=0.1)
    for segment in stage2.video_segments(real_batch(1)):
        segment.loss.backward()
    opt.step()
    saved = read_checkpoint(save_checkpoint(stage2, tmp_path / "stage2.ckpt"))
    lora = {n for n in stage1.state_dict() if ".lora." in n}
    assert trainable | lora <= set(saved["state_dict"])  # the head it trained + stage 1's adapters
    assert not any(
        ".attn.to_q.weight" in k for k in saved["state_dict"]
    )  # the base: from the folder
    reloaded = DirectForcingModule.load_from_checkpoint(
        tmp_path / "stage2.ckpt", weights_only=False
    )
    assert torch.equal(reloaded.dit.model.proj_out.weight, stage2.dit.model.proj_out.weight)
    # Adapters need the folder weights they were trained on: a backbone without folder is refused.
    from lightning_modules.pretrained.framepack_backbone import FramePackBackbone

    with pytest.raises(ValueError, match=r"dit: the checkpoint left its pretrained weights out.*"
                                         r"framepack.*does not load them from a folder"):  # fmt: skip
        DirectForcingModule(init_checkpoint=str(path), dit=FramePackBackbone(None, **SMALL_DIT))


def test_predict_merges_the_adapters(adapted_ckpt: tuple) -> None:
    _, module = adapted_ckpt
    batch = {"image": torch.rand(1, 3, 32, 32) * 2 - 1, "caption": ["a red circle"]}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        before = module.eval().generate(**{"image": batch["image"], "captions": batch["caption"]},
                                        num_segments=2, frames_per_segment=8, generator=gen)  # fmt: skip
    module.on_predict_start()
    assert module.adapters_merged and not lora_layers(module.dit)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        after = module.generate(batch["image"], batch["caption"], 2, gen, frames_per_segment=8)
    assert (before.int() - after.int()).abs().max() <= 1  # uint8 frames, up to rounding
