"""Tiny random stand-ins for the real pretrained folders, in the same diffusers/transformers layout.

They let the real loading code (`from_pretrained(folder, local_files_only=True)`) and the real
classes (HunyuanVideo/Wan VAEs, LLaMA, CLIP-L, SigLIP, UMT5, the FramePack-F1 transformer) run
on a CPU in seconds, with no download: the tests and `configs/framepack_f1/small.yaml` use them.
The weights are random; only the architecture and the folder layout are real.

    python -m lightning_modules.pretrained.tiny data/tiny_pretrained

writes `hunyuan/` (vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2), `framepack/`
(the transformer, at the root as in FramePack's release), `siglip/` (image_encoder, feature_extractor) and `wan/` (vae, text_encoder,
tokenizer). Sizes are the `TINY` constants below (the configs repeat them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lightning_modules.pretrained.folders import import_hf

# Architecture of the tiny stand-ins (configs/framepack_f1/small.yaml repeats these numbers).
TINY = {
    "latent_channels": 4,
    "llama_dim": 32,  # = text_dim of the packed conditioning
    "clip_dim": 16,  # pooled_projection_dim
    "siglip_dim": 24,  # image_proj_dim
    "siglip_image": 32,
    "siglip_patch": 16,  # -> 4 image tokens
    "heads": 2,
    "head_dim": 16,  # width 32
    "rope_axes_dim": (4, 6, 6),
    "t5_dim": 32,
}
# Every word of the synthetic captions and the template, so the tiny tokenizers see real ids.
WORDS = (
    "a an and the as of over past two dark pillar pillars bounce bounces camera pans left right "
    "background striped checkered mottled green blue gray brown purple red orange yellow white "
    "cyan magenta pink circle square triangle diamond cross describe video user system"
).split()
SPECIAL = ["[PAD]", "[UNK]", "<s>", "</s>"]


def write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer (lower-cased, BOS/EOS added) saved as tokenizer.json."""
    tokenizers = __import__("tokenizers")
    transformers = import_hf("transformers")
    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.Lowercase()
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>",
        eos_token="</s>",
    )  # fmt: skip
    fast.save_pretrained(str(folder))


def write_tiny_pretrained(root: str | Path, seed: int = 0) -> Path:
    """Write every tiny folder under `root` (skipped when already complete); returns root."""
    root = Path(root)
    done = root / "COMPLETE"
    if done.is_file():
        return root
    diffusers, transformers = import_hf("diffusers"), import_hf("transformers")
    torch.manual_seed(seed)
    c = TINY
    vocab = len(SPECIAL) + len(WORDS)
    tiny_vae = {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4,
                "latent_channels": c["latent_channels"],
                "down_block_types": ("HunyuanVideoDownBlock3D",) * 4,
                "up_block_types": ("HunyuanVideoUpBlock3D",) * 4}  # fmt: skip
    diffusers.AutoencoderKLHunyuanVideo(**tiny_vae).save_pretrained(root / "hunyuan/vae")
    llama = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=c["llama_dim"], intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
    )  # fmt: skip
    transformers.LlamaModel(llama).save_pretrained(root / "hunyuan/text_encoder")
    clip = transformers.CLIPTextConfig(
        vocab_size=vocab, hidden_size=c["clip_dim"], intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=c["clip_dim"],
        pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    transformers.CLIPTextModel(clip).save_pretrained(root / "hunyuan/text_encoder_2")
    for sub in ("hunyuan/tokenizer", "hunyuan/tokenizer_2", "wan/tokenizer"):
        write_tokenizer(root / sub)
    siglip = transformers.SiglipVisionConfig(
        hidden_size=c["siglip_dim"], intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, image_size=c["siglip_image"], patch_size=c["siglip_patch"],
    )  # fmt: skip
    transformers.SiglipVisionModel(siglip).save_pretrained(root / "siglip/image_encoder")
    (root / "siglip/feature_extractor").mkdir(parents=True, exist_ok=True)
    (root / "siglip/feature_extractor/preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "resample": 3,
        "size": {"height": c["siglip_image"], "width": c["siglip_image"]},
        "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
    }))  # fmt: skip
    diffusers.HunyuanVideoFramepackTransformer3DModel(
        in_channels=c["latent_channels"], out_channels=c["latent_channels"],
        num_attention_heads=c["heads"], attention_head_dim=c["head_dim"], num_layers=1,
        num_single_layers=1, num_refiner_layers=1, text_embed_dim=c["llama_dim"],
        pooled_projection_dim=c["clip_dim"], rope_axes_dim=c["rope_axes_dim"],
        has_image_proj=True, image_proj_dim=c["siglip_dim"], has_clean_x_embedder=True,
    ).save_pretrained(root / "framepack")  # fmt: skip
    diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=c["latent_channels"], dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        latents_mean=[0.1] * c["latent_channels"], latents_std=[2.0] * c["latent_channels"],
    ).save_pretrained(root / "wan/vae")  # fmt: skip
    t5 = transformers.UMT5Config(
        vocab_size=vocab, d_model=c["t5_dim"], d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=4, pad_token_id=0, eos_token_id=3,
    )  # fmt: skip
    transformers.UMT5EncoderModel(t5).save_pretrained(root / "wan/text_encoder")
    done.write_text("tiny random stand-ins written by lightning_modules/pretrained/tiny.py\n")
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default="data/tiny_pretrained")
    print(write_tiny_pretrained(parser.parse_args().root))
