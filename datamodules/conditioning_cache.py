"""Conditioning cache: the frozen text and image encoders' outputs, computed once, beside the latent cache.

FramePack-F1's conditioning (LLaMA-3-8B tokens, CLIP-L pooled, SigLIP features of the reference
image) depends on nothing that trains, so it is computed once per video and stored; a run that
reads it never loads the encoders (they load lazily, `pretrained/text_encoders.py`), which frees
their ~17 GB of weights and their forward from every step.

Layout: `<root>/<key>/manifest.json`, `null.pt` (the empty caption's text parts: prompt dropout
and classifier-free guidance) and one shard per video, `<split>_<index>.pt`, holding
`{"text": {part: tensor}, "image": {part: tensor}}` (no batch axis) as the encoder's
`encode_captions` / `encode_images` give them, float parts in its weights' dtype (lossless: they
are computed in it). `key` hashes everything the outputs depend on: the encoder (class, scalar
settings such as the template and token counts, every file of its folders), the resolution (the
image SigLIP sees) and the dataset's `metadata.jsonl`. Every shard's sha256 is in the manifest:
a missing or corrupt shard is re-encoded by `build_conditioning` and refused by the reader.
Shards are found by video name (unique per split: checked), so the same cache serves the pixel
dataset and the latent cache, which drops videos that failed to decode.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from datamodules.latent_cache import MANIFEST, _atomic_write, _read_manifest, _sha256
from datamodules.video_dataset import METADATA_FILE, VideoFolderDataset
from datamodules.video_io import read_video
from lightning_modules.conditioning import IMAGE, NULL, TEXT, stack_parts
from lightning_modules.training.frozen_parts import hash_folder, sources_of

__all__ = [
    "ConditionedDataset", "build_conditioning", "conditioning_key", "encoder_fingerprint",
    "prepare_conditioning",
]  # fmt: skip

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the shard format changes
NULL_FILE = "null.pt"


def encoder_fingerprint(encoder: nn.Module) -> str:
    """Hash of a frozen encoder: class, scalar settings and its folders' file hashes."""
    sources = sources_of(encoder)
    if not sources:
        raise ValueError(
            f"the conditioning cache needs a frozen pretrained text encoder; "
            f"{type(encoder).__name__} has trainable weights or no folder: unset "
            "data.init_args.conditioning_cache"
        )
    scalars = {
        k: v for k, v in sorted(vars(encoder).items())
        if isinstance(v, (bool, int, float, str, tuple)) and not k.startswith("_")
        and k != "training"
    }  # fmt: skip
    scalars["dtype"] = str(encoder.cache_dtype)
    fields = {
        "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "settings": scalars,
        "sources": [hash_folder(Path(s)) for s in sources],
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def conditioning_key(encoder: nn.Module, resolution: tuple[int, int], data_dir: Path) -> str:
    """Directory name for one (encoder, resolution, dataset) combination."""
    fields = {
        "version": CACHE_VERSION,
        "encoder": encoder_fingerprint(encoder),
        "resolution": [int(resolution[0]), int(resolution[1])],
        "metadata": hashlib.sha256((data_dir / METADATA_FILE).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _shard(parts: dict[str, dict[str, Tensor]], dtype: torch.dtype) -> bytes:
    """Parts of one video (batch axis dropped), float tensors in the encoder's dtype."""
    stored = {
        kind: {k: (v[0].to(dtype) if v.is_floating_point() else v[0]).cpu() for k, v in d.items()}
        for kind, d in parts.items()
    }
    buffer = io.BytesIO()
    torch.save(stored, buffer)
    return buffer.getvalue()


def _reference_image(dataset: VideoFolderDataset, index: int) -> Tensor:
    """Frame 0 of video `index` as the dataset gives it ([3, H, W] in [-1, 1])."""
    frames = read_video(dataset.paths[index], dataset.fps, dataset.size, num_frames=1)
    return frames[0].float().div_(127.5).sub_(1.0)


@torch.no_grad()
def build_conditioning(
    directory: Path, split: str, dataset: VideoFolderDataset, encoder: nn.Module
) -> int:
    """Encode the shards of `split` (and the empty caption) that are missing or fail their
    checksum; returns how many videos were encoded. Meant for rank 0 (`prepare_data`)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(directory)
    device = encoder._anchor.device if hasattr(encoder, "_anchor") else torch.device("cpu")
    dtype = encoder.cache_dtype
    null_sha = _sha256(directory / NULL_FILE)
    if null_sha is None or null_sha != manifest.get("null_sha256"):
        data = _shard({"text": encoder.encode_captions([""])}, dtype)
        _atomic_write(directory / NULL_FILE, data)
        manifest["null_sha256"] = hashlib.sha256(data).hexdigest()
    old = {e["name"]: e for e in manifest["splits"].get(split, {}).get("entries", [])}
    entries, encoded, seen = [], 0, set()
    for index in range(len(dataset)):
        name, caption = dataset.paths[index].stem, dataset.captions[index]
        if name in seen:
            raise ValueError(
                f"two {split} videos are named {name!r} ({dataset.paths[index]}): the "
                "conditioning cache finds videos by name, which must be unique per split"
            )
        seen.add(name)
        file = f"{split}_{index:05d}.pt"
        prior = old.get(name)
        if prior is not None and prior["file"] == file and prior["caption"] == caption:
            if _sha256(directory / file) == prior["sha256"]:
                entries.append(prior)
                continue
            log.warning("conditioning cache shard %s is missing or corrupt: re-encoding", file)
        try:
            image = _reference_image(dataset, index).to(device)[None]
        except (OSError, RuntimeError, ValueError) as err:  # as the pixel dataset skips it
            log.warning("conditioning cache: skipping %s: %s", dataset.paths[index], err)
            continue
        parts = {"text": encoder.encode_captions([caption]), "image": encoder.encode_images(image)}
        data = _shard(parts, dtype)
        _atomic_write(directory / file, data)
        encoded += 1
        entries.append({"name": name, "file": file, "caption": caption,
                        "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    manifest["splits"][split] = {"entries": entries}
    _atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1).encode())
    if encoded:
        log.info("conditioning cache %s: encoded %d %s videos", directory, encoded, split)
    return encoded


def prepare_conditioning(
    directory: Path,
    encoder: nn.Module,
    datasets: dict[str, VideoFolderDataset],
    device: torch.device | None = None,
) -> int:
    """`build_conditioning` for each split, the encoder loaded on `device` for it and unloaded
    afterwards (unless it was loaded before): training reads the cache, not the encoder."""
    was_loaded = encoder.loaded
    if device is not None:
        encoder.to(device)
    try:
        return sum(build_conditioning(directory, s, d, encoder) for s, d in datasets.items())
    finally:
        if not was_loaded:
            encoder.unload()


def _load(path: Path, sha256: str) -> dict[str, Any]:
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise OSError(
            f"conditioning cache shard {path} does not match its checksum; rerun so "
            "prepare_data re-encodes it"
        )
    return torch.load(io.BytesIO(data), weights_only=True)


class ConditionedDataset(Dataset):
    """A video or latent-cache dataset whose items also carry their cached conditioning parts
    (`text_parts`, `image_parts`); `collate` adds the empty caption's (`null_text_parts`)."""

    def __init__(self, base: Dataset, directory: str | Path, split: str) -> None:
        self.base = base
        self.directory = Path(directory)
        manifest = _read_manifest(self.directory)
        if split not in manifest["splits"] or "null_sha256" not in manifest:
            raise FileNotFoundError(
                f"no {split!r} split in conditioning cache {self.directory} (it is built by the "
                "datamodule's prepare_data or prepare_caches.py; did the encoder or data change?)"
            )
        self.entries = {e["name"]: e for e in manifest["splits"][split]["entries"]}
        self.null_text: dict[str, Tensor] = _load(
            self.directory / NULL_FILE, manifest["null_sha256"]
        )["text"]

    def __getattr__(self, name: str) -> Any:  # lengths, paths, skipped, ... of the base
        if name in ("base", "entries", "directory", "null_text"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.base[index]
        if item is None:
            return None
        entry = self.entries.get(item["name"])
        if entry is None or entry["caption"] != item["caption"]:
            raise KeyError(
                f"video {item['name']!r} ({item['caption']!r}) is not in conditioning cache "
                f"{self.directory}; rerun so that prepare_data encodes it"
            )
        parts = _load(self.directory / entry["file"], entry["sha256"])
        return {**item, TEXT: parts["text"], IMAGE: parts["image"]}

    def collate(self, base_collate: Any, items: list[dict[str, Any] | None]) -> Any:
        """`base_collate` of the items, plus their stacked parts and the empty caption's."""
        batch = base_collate(items)
        if batch is not None:
            kept = [item for item in items if item is not None]
            batch[TEXT] = stack_parts([item[TEXT] for item in kept])
            batch[IMAGE] = stack_parts([item[IMAGE] for item in kept])
            batch[NULL] = stack_parts([self.null_text])
        return batch
