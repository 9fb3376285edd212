"""Shared fixtures."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """pyproject runs the suite on 2 pytest-xdist workers, one per core of the 2-core box it is
    sized for: a worker's second intra-op thread would only contend with the other worker."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import cv2

        torch.set_num_threads(1)
        cv2.setNumThreads(1)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add contention on a shared CPU (restored after).
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'trained' stage-1 checkpoint of the stage-2 tests' one-block model (no SemanticPack)."""
    from tests.helpers.tiny import stage1_checkpoint

    torch.manual_seed(0)
    return stage1_checkpoint(tmp_path_factory.mktemp("stage1") / "stage1.ckpt")


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random HunyuanVideo / FramePack-F1 / SigLIP / Wan folders in their real layout."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from lightning_modules.pretrained.tiny import write_tiny_pretrained

    return write_tiny_pretrained(tmp_path_factory.mktemp("tiny_pretrained"))
