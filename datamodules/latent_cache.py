"""Latent cache: encode a video dataset through the codec once, reuse the shards in later runs.

Layout: `<root>/<key>/manifest.json` plus one shard per video, `<split>_<index>.pt`, holding
`latents` [segments, T, c, h, w], `image_latent` [1, c, h, w] and the pixel reference `image`
[3, H, W] (rollout callbacks and `predict` still need pixels). `key` hashes everything the
latents depend on: the codec (class, scalar attributes, weights), resolution, fps, segment
length and the dataset's metadata, so changing any of them selects a fresh directory and a
stale cache is never read. Every shard's sha256 is in the manifest: a shard that is missing or
does not match is re-encoded by `build`, and refused by the dataset if it changes afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.data import Dataset

from datamodules.video_dataset import METADATA_FILE, VideoFolderDataset

__all__ = ["LatentCacheDataset", "build_cache", "cache_key", "codec_fingerprint", "collate_latents"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the shard format changes
MANIFEST = "manifest.json"


def codec_fingerprint(codec: nn.Module) -> str:
    """Hash of the codec's class, its scalar attributes and its weights (a VAE's checkpoint)."""
    h = hashlib.sha256(f"{type(codec).__module__}.{type(codec).__qualname__}".encode())
    scalars = {
        k: v for k, v in sorted(vars(codec).items())
        if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple))
    }  # fmt: skip
    h.update(json.dumps(scalars, sort_keys=True, default=str).encode())
    for name, tensor in sorted(codec.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(
    codec: nn.Module, resolution: tuple[int, int], fps: float, segment_frames: int, data_dir: Path
) -> str:
    """Directory name for one (codec, resolution, fps, segment length, dataset) combination."""
    fields = {
        "version": CACHE_VERSION,
        "codec": codec_fingerprint(codec),
        "resolution": [int(resolution[0]), int(resolution[1])],
        "fps": float(fps),
        "segment_frames": int(segment_frames),
        "metadata": hashlib.sha256((data_dir / METADATA_FILE).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # readers see the old file or the whole new one, never half a shard


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return {"splits": {}}


@torch.no_grad()
def _encode_item(codec: nn.Module, item: dict[str, Any], device: torch.device) -> bytes:
    """One dataset item -> shard bytes, encoded exactly as `VideoModule.encode_video` does."""
    video = item["video"].to(device)  # [s, t, 3, H, W]
    segments, frames = video.shape[:2]
    flat = rearrange(video, "s t c h w -> 1 (s t) c h w")
    latents = codec.encode_video(flat, item["image"].to(device)[None])[0]  # causal: codecs/base.py
    image_latent = codec.encode(item["image"].to(device)[None, None])[0]
    shard = {
        "latents": rearrange(latents, "(s t) c h w -> s t c h w", s=segments).cpu(),
        "image_latent": image_latent.cpu(),
        "image": item["image"],
    }
    buffer = io.BytesIO()
    torch.save(shard, buffer)
    return buffer.getvalue()


def build_cache(directory: Path, split: str, dataset: VideoFolderDataset, codec: nn.Module) -> int:
    """Encode the shards of `split` that are missing or fail their checksum; return how many.

    Meant for rank 0 (`prepare_data`); other ranks only read. Videos that fail to decode are
    recorded in the manifest as skipped, like the pixel dataset does.
    """
    directory.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(directory)
    old = {e["file"]: e for e in manifest["splits"].get(split, {}).get("entries", [])}
    device = next((p.device for p in codec.parameters()), torch.device("cpu"))
    entries, skipped, encoded = [], dict(dataset.skipped), 0
    for index in range(len(dataset)):
        name = f"{split}_{index:05d}.pt"
        prior = old.get(name)
        if prior is not None and _sha256(directory / name) == prior["sha256"]:
            entries.append(prior)
            continue
        if prior is not None:
            log.warning("latent cache shard %s is missing or corrupt: re-encoding", name)
        item = dataset[index]
        if item is None:  # decode failure, already warned by the dataset
            skipped[str(dataset.paths[index])] = "decode failed"
            continue
        data = _encode_item(codec, item, device)
        _atomic_write(directory / name, data)
        encoded += 1
        entries.append({
            "file": name, "sha256": hashlib.sha256(data).hexdigest(),
            "caption": item["caption"], "num_segments": item["num_segments"], "name": item["name"],
            "focus_segment": item.get("focus_segment", -1),
            "focus_memory": item.get("focus_memory", -1),
        })  # fmt: skip
    manifest["splits"][split] = {"entries": entries, "skipped": skipped}
    _atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1).encode())
    if encoded:
        log.info(
            "latent cache %s: encoded %d of %d %s videos", directory, encoded, len(dataset), split
        )
    return encoded


class LatentCacheDataset(Dataset):
    """The shards of one split, verified against their checksum on every read."""

    def __init__(self, directory: str | Path, split: str) -> None:
        self.directory = Path(directory)
        manifest = _read_manifest(self.directory)
        if split not in manifest["splits"]:
            raise FileNotFoundError(
                f"no {split!r} split in latent cache {self.directory} (it is built by the "
                f"datamodule's prepare_data; was it skipped, or did the codec/resolution change?)"
            )
        self.entries: list[dict[str, Any]] = manifest["splits"][split]["entries"]
        self.skipped: dict[str, str] = manifest["splits"][split]["skipped"]
        if not self.entries:
            raise ValueError(f"latent cache {self.directory} has no usable {split!r} videos")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def lengths(self) -> list[int]:
        """Segments per video, as cached (the curriculum batches videos of equal length)."""
        return [int(e["num_segments"]) for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        path = self.directory / entry["file"]
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise OSError(
                f"latent cache shard {path} does not match its checksum; rerun so "
                f"prepare_data re-encodes it"
            )
        shard = torch.load(io.BytesIO(data), weights_only=True)
        return {
            **shard,
            "caption": entry["caption"],
            "num_segments": entry["num_segments"],
            "name": entry["name"],
            "focus_segment": entry.get("focus_segment", -1),  # caches before the field: none
            "focus_memory": entry.get("focus_memory", -1),
        }


def collate_latents(items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Batch cached items, zero-padding the segment axis (as `collate_videos` pads pixels)."""
    kept = [item for item in items if item is not None]
    if not kept:
        return None
    longest = max(item["num_segments"] for item in kept)
    first: Tensor = kept[0]["latents"]
    latents = first.new_zeros((len(kept), longest, *first.shape[1:]))
    for row, item in enumerate(kept):
        latents[row, : item["num_segments"]] = item["latents"]
    return {
        "latents": latents,
        "image_latent": torch.stack([item["image_latent"] for item in kept]),
        "image": torch.stack([item["image"] for item in kept]),
        "num_segments": torch.tensor([item["num_segments"] for item in kept], dtype=torch.long),
        "caption": [item["caption"] for item in kept],
        "name": [item["name"] for item in kept],
        "focus_segment": torch.tensor([item.get("focus_segment", -1) for item in kept]),
        "focus_memory": torch.tensor([item.get("focus_memory", -1) for item in kept]),
    }
