"""Plain `nn.Module`s, no Lightning and no Hugging Face: the backbone contract, the small DiT,
FramePack-F1 context packing, SemanticPack memory, 3D RoPE, attention and the text encoder."""
