"""Real text and image encoders behind the `TextEncoder` contract (frozen, eval mode, local folders).

`HunyuanTextEncoder` is FramePack-F1's conditioning (HunyuanVideo's text encoders + FramePack's
image encoder), computed the way diffusers' FramePack pipeline computes it:

- LLaMA: the caption inside HunyuanVideo's prompt template, padded to `crop_start + max_tokens`
  tokens; the hidden state `hidden_layer_skip` layers before the last (-3), with the template's
  first `crop_start` tokens cropped off -> [b, max_tokens, 4096] + its padding mask;
- CLIP-L: `pooler_output` of the caption (77 tokens) -> [b, 768], FramePack's pooled projection;
- SigLIP (optional, `image_encoder_dir`): `last_hidden_state` of the reference image resized to
  the processor's size and normalised with its mean/std -> [b, 729, 1152].

The contract carries one token tensor and one mask, so the three are packed along the token axis
into the LLaMA width, each zero-padded in channels:

    tokens [b, 1 + image_tokens + max_tokens, dim] = [ pooled | image features | LLaMA tokens ]

`unpack_conditioning` undoes it (the FramePack backbone calls it); `pooled_dim`, `image_tokens`
and `image_dim` describe the layout and are checked against the backbone at construction.
SemanticPack's psi_0 reads the packed tokens as they are: prompt and image features (Sec. 3.1).

`T5TextEncoder` is Wan's UMT5 (or any T5) encoder: `last_hidden_state` with padding zeroed.

Both are frozen and load their weights on first use (`LazyEncoder`): the sizes come from the
folders' `config.json`, so a run that reads the conditioning cache (`datamodules/
conditioning_cache.py`) never loads LLaMA, CLIP or SigLIP. Their outputs split into per-caption
parts (`encode_captions`) and per-image parts (`encode_images`), which the cache stores and
`combine` packs exactly as `forward` does. Their weights never enter a checkpoint
(`pretrained_sources`, `training/frozen_parts.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.networks.text_encoder import TextEncoder
from lightning_modules.pretrained.folders import (
    IMAGE_PROCESSOR,
    TOKENIZER,
    TRANSFORMERS_MODEL,
    DType,
    check_folder,
    freeze,
    load_transformers,
    torch_dtype,
)

# HunyuanVideo's prompt template (diffusers' pipeline_hunyuan_video_framepack DEFAULT_PROMPT_TEMPLATE);
# its first 95 LLaMA-3 tokens (everything before the caption) are cropped from the features.
HUNYUAN_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following "
    "aspects: 1. The main content and theme of the video.2. The color, shape, size, texture, "
    "quantity, text, and spatial relationships of the objects.3. Actions, events, behaviors "
    "temporal relationships, physical movement changes of the objects.4. background environment, "
    "light, style and atmosphere.5. camera angles, movements, and transitions used in the video:"
    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
HUNYUAN_CROP_START = 95


def pack_conditioning(
    pooled: Tensor, image: Tensor | None, text: Tensor, text_mask: Tensor, dim: int
) -> tuple[Tensor, Tensor]:
    """[pooled [b, p] | image [b, n_i, d_i] | text [b, n, dim]] -> tokens [b, 1 + n_i + n, dim]."""
    b = text.shape[0]
    parts = [F.pad(pooled.float(), (0, dim - pooled.shape[-1]))[:, None]]
    if image is not None:
        parts.append(F.pad(image.float(), (0, dim - image.shape[-1])))
    parts.append(text.float())
    ones = text_mask.new_ones(b, 1 + (0 if image is None else image.shape[1]))
    return torch.cat(parts, dim=1), torch.cat((ones, text_mask), dim=1)


def unpack_conditioning(
    tokens: Tensor, mask: Tensor, pooled_dim: int, image_tokens: int, image_dim: int
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """The inverse of `pack_conditioning`: (pooled, image features or None, text, text mask)."""
    if tokens.shape[1] <= 1 + image_tokens:
        raise ValueError(
            f"conditioning has {tokens.shape[1]} tokens; the layout [pooled | {image_tokens} image "
            "tokens | text] needs more (is the text encoder HunyuanTextEncoder?)"
        )
    image = tokens[:, 1 : 1 + image_tokens, :image_dim] if image_tokens else None
    text = slice(1 + image_tokens, None)
    return tokens[:, 0, :pooled_dim], image, tokens[:, text], mask[:, text]


def _sub(root: str, subfolder: str) -> str:
    return f"{root}/{subfolder}" if subfolder else root


class LazyEncoder(TextEncoder):
    """A frozen pretrained encoder whose weights load on first use, onto the module's device.

    Subclasses set `self.folders` (name -> folder, the weights' sources) and implement
    `_load_models()` and `_model_names`; `load()` / `unload()` are explicit too (the
    conditioning cache loads the encoder to fill itself and unloads it afterwards).
    """

    _model_names: tuple[str, ...] = ()
    folders: dict[str, Path]

    def __init__(self, dtype: DType) -> None:
        super().__init__()
        self.cache_dtype = torch_dtype(dtype)  # the weights' dtype: outputs stored losslessly in it
        self._dtype = dtype
        # Tracks the device the module was moved to, where lazily loaded weights then go.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        for name in self._model_names:
            setattr(self, name, None)

    @property
    def loaded(self) -> bool:
        return all(getattr(self, n) is not None for n in self._model_names if self._needed(n))

    def _needed(self, name: str) -> bool:
        return True

    def pretrained_sources(self) -> list[Path]:
        return list(self.folders.values())

    def _load_models(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def load(self) -> None:
        """Load the weights from the folders (a no-op once loaded)."""
        if self.loaded:
            return
        for name, model in self._load_models().items():
            setattr(self, name, freeze(model.to(self._anchor.device)))

    def unload(self) -> None:
        """Drop the weights (they load again on the next use)."""
        for name in self._model_names:
            setattr(self, name, None)

    def train(self, mode: bool = True) -> LazyEncoder:
        super().train(mode)
        for name in self._model_names:
            model = getattr(self, name)
            if model is not None:
                model.eval()  # frozen encoders stay in eval mode
        return self

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (e.g. in a checkpoint's hyperparameters) without the weights, which load
        from the folders again on first use."""
        state = dict(super().__getstate__())  # a copy: the live module keeps its weights
        state["_modules"] = {
            k: None if k in self._model_names else v for k, v in state["_modules"].items()
        }
        return state

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """A checkpoint written before frozen parts were left out holds these weights: load
        the models first, so that its weights replace them as they did."""
        if not self.loaded and any(k.startswith(prefix) for k in state_dict):
            self.load()
        super()._load_from_state_dict(state_dict, prefix, *args)


class HunyuanTextEncoder(LazyEncoder):
    """LLaMA (HunyuanVideo layer -3, template cropped) + CLIP-L pooled [+ SigLIP image features].

    Args:
        pretrained_dir: a HunyuanVideo checkout in the diffusers layout (`text_encoder/`,
            `tokenizer/`, `text_encoder_2/`, `tokenizer_2/`).
        image_encoder_dir: FramePack's SigLIP folder (`image_encoder/`, `feature_extractor/`), or
            None for no image features (the backbone must then have no image projection).
        max_tokens: LLaMA tokens kept after the template crop (256 in HunyuanVideo).
        hidden_layer_skip: use `hidden_states[-(hidden_layer_skip + 1)]` (2 in HunyuanVideo).
        prompt_template, crop_start: the template around the caption and how many of its leading
            tokens to crop; crop_start None counts the tokens before `{}` with the tokenizer.
        dtype: weights' dtype (bfloat16 on GPU; features are returned in float32).
    """

    reads_image = False
    _model_names = ("llama", "clip", "siglip")

    def __init__(
        self,
        pretrained_dir: str,
        image_encoder_dir: str | None = None,
        text_subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
        clip_subfolder: str = "text_encoder_2",
        clip_tokenizer_subfolder: str = "tokenizer_2",
        image_subfolder: str = "image_encoder",
        processor_subfolder: str = "feature_extractor",
        max_tokens: int = 256,
        clip_tokens: int = 77,
        hidden_layer_skip: int = 2,
        prompt_template: str = HUNYUAN_TEMPLATE,
        crop_start: int | None = HUNYUAN_CROP_START,
        dtype: DType = "bfloat16",
    ) -> None:
        super().__init__(dtype)
        if "{}" not in prompt_template:
            raise ValueError(
                f"prompt_template must contain '{{}}' for the caption: {prompt_template!r}"
            )
        name = type(self).__name__
        folders = {
            "llama": check_folder(_sub(pretrained_dir, text_subfolder), f"{name} LLaMA", TRANSFORMERS_MODEL),
            "tok": check_folder(_sub(pretrained_dir, tokenizer_subfolder), f"{name} LLaMA tokenizer", TOKENIZER),
            "clip": check_folder(_sub(pretrained_dir, clip_subfolder), f"{name} CLIP-L", TRANSFORMERS_MODEL),
            "clip_tok": check_folder(
                _sub(pretrained_dir, clip_tokenizer_subfolder), f"{name} CLIP tokenizer", TOKENIZER
            ),
        }  # fmt: skip
        if image_encoder_dir is not None:
            folders["siglip"] = check_folder(
                _sub(image_encoder_dir, image_subfolder), f"{name} SigLIP", TRANSFORMERS_MODEL
            )
            folders["proc"] = check_folder(
                _sub(image_encoder_dir, processor_subfolder), f"{name} SigLIP processor", IMAGE_PROCESSOR
            )  # fmt: skip
        self.folders = folders
        self.tokenizer = load_transformers("AutoTokenizer", folders["tok"])
        self.clip_tokenizer = load_transformers("AutoTokenizer", folders["clip_tok"])
        self.max_tokens, self.clip_tokens = max_tokens, clip_tokens
        self.hidden_layer_skip = hidden_layer_skip
        self.prompt_template = prompt_template
        if crop_start is None:  # the tokens before the caption, special tokens included
            prefix = prompt_template.split("{}")[0]
            crop_start = len(self.tokenizer(prefix)["input_ids"])
        self.crop_start = crop_start
        self.dim = int(load_transformers("AutoConfig", folders["llama"]).hidden_size)
        self.pooled_dim = int(load_transformers("AutoConfig", folders["clip"]).hidden_size)
        self.image_tokens, self.image_dim = 0, 0
        if image_encoder_dir is not None:
            config = load_transformers("AutoConfig", folders["siglip"])
            config = getattr(config, "vision_config", config)
            self._siglip_image_size = int(config.image_size)
            self._read_processor(folders["proc"] / "preprocessor_config.json")
            self.image_tokens = (config.image_size // config.patch_size) ** 2
            self.image_dim = int(config.hidden_size)
            self.reads_image = True
        for name, width in (("pooled", self.pooled_dim), ("image", self.image_dim)):
            if width > self.dim:
                raise ValueError(f"{name} width {width} exceeds the LLaMA width {self.dim}")

    def _read_processor(self, path: Path) -> None:
        """SigLIP's resize and normalisation, read from its processor config, applied in torch."""
        config = json.loads(path.read_text())
        size = config.get("size", {})
        side = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
        self.image_size = int(side or self._siglip_image_size)
        self.register_buffer("image_mean", torch.tensor(config.get("image_mean", [0.5] * 3)), False)
        self.register_buffer("image_std", torch.tensor(config.get("image_std", [0.5] * 3)), False)

    def _needed(self, name: str) -> bool:
        return name != "siglip" or self.reads_image

    def _load_models(self) -> dict[str, torch.nn.Module]:
        f, dtype = self.folders, self._dtype
        models = {"llama": load_transformers("AutoModel", f["llama"], dtype),
                  "clip": load_transformers("CLIPTextModel", f["clip"], dtype)}  # fmt: skip
        if self.reads_image:
            models["siglip"] = load_transformers("SiglipVisionModel", f["siglip"], dtype)
        return models

    @torch.no_grad()
    def encode_llama(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        self.load()
        prompts = [self.prompt_template.format(c) for c in captions]
        device = next(self.llama.parameters()).device
        ids = self.tokenizer(
            prompts, max_length=self.crop_start + self.max_tokens, padding="max_length",
            truncation=True, return_tensors="pt",
        ).to(device)  # fmt: skip
        out = self.llama(
            input_ids=ids["input_ids"],
            attention_mask=ids["attention_mask"],
            output_hidden_states=True,
        )
        hidden = out.hidden_states[-(self.hidden_layer_skip + 1)]
        return hidden[:, self.crop_start :].float(), ids["attention_mask"][
            :, self.crop_start :
        ].bool()

    @torch.no_grad()
    def encode_clip(self, captions: list[str]) -> Tensor:
        self.load()
        device = next(self.clip.parameters()).device
        ids = self.clip_tokenizer(
            captions, max_length=self.clip_tokens, padding="max_length", truncation=True,
            return_tensors="pt",
        ).to(device)  # fmt: skip
        return self.clip(input_ids=ids["input_ids"]).pooler_output.float()

    @torch.no_grad()
    def encode_image(self, image: Tensor) -> Tensor:
        """image [b, 3, H, W] in [-1, 1] -> SigLIP features [b, image_tokens, image_dim]."""
        self.load()
        x = F.interpolate(
            (image.float() + 1) / 2, size=(self.image_size, self.image_size), mode="bicubic",
            align_corners=False, antialias=True,
        ).clamp(0, 1)  # fmt: skip
        x = (x - self.image_mean[:, None, None]) / self.image_std[:, None, None]
        dtype = next(self.siglip.parameters()).dtype
        return self.siglip(pixel_values=x.to(dtype)).last_hidden_state.float()

    def encode_captions(self, captions: list[str]) -> dict[str, Tensor]:
        """The per-caption parts: LLaMA tokens [b, max_tokens, dim] + mask, CLIP pooled [b, p]."""
        text, mask = self.encode_llama(list(captions))
        return {"llama": text, "llama_mask": mask, "pooled": self.encode_clip(list(captions))}

    def encode_images(self, image: Tensor) -> dict[str, Tensor]:
        """The per-image part: SigLIP features [b, image_tokens, image_dim] (none without it)."""
        return {"siglip": self.encode_image(image)} if self.reads_image else {}

    def combine(self, text: dict[str, Tensor], image: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """`forward`'s packed (tokens, mask) from the two kinds of parts."""
        return pack_conditioning(
            text["pooled"], image.get("siglip"), text["llama"], text["llama_mask"], self.dim
        )

    def forward(self, captions: list[str], image: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.reads_image and image is None:
            raise ValueError(
                "HunyuanTextEncoder has a SigLIP image encoder: pass the reference image"
            )
        images = self.encode_images(image) if self.reads_image else {}
        return self.combine(self.encode_captions(captions), images)


class T5TextEncoder(LazyEncoder):
    """A (UM)T5 encoder (Wan's text encoder): `last_hidden_state`, padding tokens zeroed.

    Args:
        pretrained_dir: a checkout in the diffusers layout (`text_encoder/`, `tokenizer/`).
        max_tokens: fixed token count (512 in Wan).
    """

    _model_names = ("t5",)

    def __init__(
        self,
        pretrained_dir: str,
        text_subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
        max_tokens: int = 512,
        dtype: DType = "bfloat16",
    ) -> None:
        super().__init__(dtype)
        name = type(self).__name__
        model_dir = check_folder(
            _sub(pretrained_dir, text_subfolder), f"{name} T5", TRANSFORMERS_MODEL
        )
        tok_dir = check_folder(
            _sub(pretrained_dir, tokenizer_subfolder), f"{name} tokenizer", TOKENIZER
        )
        self.folders = {"t5": model_dir, "tok": tok_dir}
        self.tokenizer = load_transformers("AutoTokenizer", tok_dir)
        self.max_tokens = max_tokens
        self.dim = int(load_transformers("AutoConfig", model_dir).d_model)

    def _load_models(self) -> dict[str, torch.nn.Module]:
        model = load_transformers("AutoModelForTextEncoding", self.folders["t5"], self._dtype)
        return {"t5": model}

    def encode_captions(self, captions: list[str]) -> dict[str, Tensor]:
        tokens, mask = self(captions)
        return {"tokens": tokens, "mask": mask}

    def combine(self, text: dict[str, Tensor], image: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return text["tokens"].float(), text["mask"]

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        self.load()
        device = next(self.t5.parameters()).device
        ids = self.tokenizer(
            list(captions), max_length=self.max_tokens, padding="max_length", truncation=True,
            return_tensors="pt",
        ).to(device)  # fmt: skip
        mask = ids["attention_mask"]
        hidden = self.t5(input_ids=ids["input_ids"], attention_mask=mask).last_hidden_state
        return hidden.float() * mask[..., None], mask.bool()
