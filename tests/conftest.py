"""Shared fixtures."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add contention on a shared CPU (restored after).
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random HunyuanVideo / FramePack-F1 / SigLIP / Wan folders in their real layout."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from lightning_modules.hf_tiny import write_tiny_pretrained

    return write_tiny_pretrained(tmp_path_factory.mktemp("tiny_pretrained"))
