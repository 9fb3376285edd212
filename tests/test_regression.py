"""Numbers pinned before `lightning_modules/` was reorganised (MemoryPack state object, pipeline,
backbone contract, one attention path): a seeded tiny model must train and roll out as it did.

Pinned on CPU with the pre-move code (commit 82843bf); equal there bit for bit. The tolerances
only allow for another CPU's float rounding (a few uint8 pixels of a 6-million-pixel rollout).
"""

import pytest
import torch

from lightning_modules.video_module import VideoModule
from tests.helpers.tiny import perturb, tiny_dit, tiny_pack, tiny_parts

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

PINNED = {  # context: (teacher-forcing loss, rollout pixel sum, CFG continuation pixel sum)
    "framepack": (2.427769660949707, 5936035, 1178831),
    "full_history": (2.427971839904785, 5936453, 1178793),
}


def pinned_module(context: str) -> VideoModule:
    torch.manual_seed(0)
    dit = tiny_dit(context=context)
    module = VideoModule(**tiny_parts(dit, tiny_pack(window_frames=2)), sample_steps=2)
    perturb(module, seed=None)
    return module


@pytest.mark.parametrize("context", sorted(PINNED))
def test_training_loss_and_rollouts_match_the_pre_move_code(context: str) -> None:
    loss_then, rollout_then, continued_then = PINNED[context]
    module = pinned_module(context)
    gen = torch.Generator().manual_seed(1)
    video = torch.rand(3, 4, 4, 3, 16, 16, generator=gen) * 2 - 1
    batch = {"video": video, "image": video[:, 0, 0], "num_segments": torch.tensor([4, 2, 3]),
             "caption": ["a red circle", "two blue squares", ""]}  # fmt: skip
    loss = module.teacher_forcing_loss(batch, 0.5, torch.Generator().manual_seed(2))
    assert float(loss) == pytest.approx(loss_then, rel=1e-5)
    module.eval()
    gen = torch.Generator().manual_seed(3)
    out = module.generate(batch["image"], batch["caption"], 5, gen, frames_per_segment=4)
    assert int(out.long().sum()) == pytest.approx(rollout_then, rel=1e-4)
    module.hparams.cfg_scale = 2.0  # CFG with the empty prompt's psi, continuing a real segment
    prefix = video[:1, :1].flatten(1, 2)
    gen = torch.Generator().manual_seed(4)
    out = module.generate(batch["image"][:1], batch["caption"][:1], 3, gen, frames_per_segment=4,
                          prefix=prefix)  # fmt: skip
    assert int(out.long().sum()) == pytest.approx(continued_then, rel=1e-4)
