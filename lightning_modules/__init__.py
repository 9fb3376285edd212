"""The model. At this level: the two LightningModules (`video_module.py` stage 1,
`direct_forcing.py` stage 2), MemoryPack's state (`memory_pack.py`), generation (`pipeline.py`),
rectified flow (`rectified_flow.py`) and checkpoint loading (`loading.py`). Below: `networks/`,
`codecs/`, `pretrained/` (the only Hugging Face code) and `training/`."""
