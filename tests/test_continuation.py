"""Video continuation: `generate(prefix=...)` conditions on a real video's first segments exactly as
teacher forcing does (FramePack history at true positions, SemanticPack's recurrence)."""

import pytest
import torch

from lightning_modules.memory_pack import MemoryPack
from tests.helpers.tiny import perturb, tiny_module, tiny_pack

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def spy_on_dit(module: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    """Record the (segment index, history, memory) of every DiT call."""
    calls: list[dict[str, torch.Tensor]] = []
    forward = module.dit.forward

    def record(noisy, t, segment_index, history, image, text, text_mask, memory=None):  # noqa: ANN001
        calls.append({"segment": segment_index.clone(), "history": history.clone(), "psi": memory})
        return forward(noisy, t, segment_index, history, image, text, text_mask, memory=memory)

    module.dit.forward = record
    return calls


def test_continuation_conditions_on_the_prefix_like_teacher_forcing() -> None:
    module = tiny_module(tiny_pack(), sample_steps=2).eval()
    perturb(module)  # open the memory gates so psi matters
    torch.manual_seed(3)
    video = torch.rand(1, 3, 4, 3, 16, 16) * 2 - 1  # [b, s, t, 3, H, W]: 3 real segments
    image, prefix = video[:, 0, 0], video[:, :2].flatten(1, 2)
    calls = spy_on_dit(module)
    out = module.generate(image, ["a red circle"], 3, frames_per_segment=4, prefix=prefix)

    assert out.shape == (1, 12, 3, 16, 16)
    assert torch.equal(out[:, :8], ((prefix.clamp(-1, 1) + 1) * 127.5).round().byte())
    assert len(calls) == 2 and all(c["segment"].tolist() == [2] for c in calls)
    # What teacher forcing would give segment 2 of this video: history and psi.
    latents, frames = module.encode_video(video)
    seg = torch.tensor([2])
    text, image_lat = module.text_encoder(["a red circle"]), module.encode_image(image)
    teacher = MemoryPack.teacher_forced(module.dit, module.semantic_pack, latents, frames, seg, text,
                                        image_lat)  # fmt: skip
    torch.testing.assert_close(calls[0]["history"], teacher.history)
    torch.testing.assert_close(calls[0]["psi"], teacher.memory)


def test_continuation_changes_with_the_prefix_and_rejects_partial_segments() -> None:
    module = tiny_module(tiny_pack(), sample_steps=2).eval()
    perturb(module)
    torch.manual_seed(4)
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    prefix = torch.rand(1, 4, 3, 16, 16) * 2 - 1

    def continue_with(p: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        return module.generate(image, ["a"], 2, gen, frames_per_segment=4, prefix=p)[:, 4:]

    assert not torch.equal(continue_with(prefix), continue_with(-prefix))
    with pytest.raises(ValueError, match="prefix of 3 frames"):
        module.generate(image, ["a"], 2, frames_per_segment=4, prefix=prefix[:, :3])
    with pytest.raises(ValueError, match="prefix of 12 frames"):
        module.generate(image, ["a"], 2, frames_per_segment=4, prefix=prefix.repeat(1, 3, 1, 1, 1))


def test_predict_continues_a_batch_with_prefix_segments() -> None:
    """A predict batch with `prefix_segments` k: generate gets its first k real segments as the
    prefix, the video starts with them and only the rest is sampled; k >= rollout_segments
    (nothing left to generate) stops with an error naming both."""
    module = tiny_module(tiny_pack(), sample_steps=2, rollout_segments=3).eval()
    torch.manual_seed(5)
    video = torch.rand(1, 3, 4, 3, 16, 16) * 2 - 1
    batch = {
        "video": video, "image": video[:, 0, 0], "num_segments": torch.tensor([3]),
        "caption": ["a red circle"], "name": ["v"], "prefix_segments": 2,
    }  # fmt: skip
    calls = spy_on_dit(module)
    out = module.predict_step(batch, 0)
    assert out["video"].shape == (1, 12, 3, 16, 16) and out["name"] == ["v"]
    truth = ((video[0, :2].flatten(0, 1).clamp(-1, 1) + 1) * 127.5).round().byte()
    assert torch.equal(out["video"][0, :8], truth)
    assert [c["segment"].tolist() for c in calls] == [[2], [2]]  # only segment 2 is sampled
    with pytest.raises(ValueError, match="continues 3 real segments but rollout_segments=3"):
        module.predict_step({**batch, "prefix_segments": 3}, 0)
