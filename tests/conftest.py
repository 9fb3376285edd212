"""Shared fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random HunyuanVideo / FramePack-F1 / SigLIP / Wan folders in their real layout."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from lightning_modules.hf_tiny import write_tiny_pretrained

    return write_tiny_pretrained(tmp_path_factory.mktemp("tiny_pretrained"))
