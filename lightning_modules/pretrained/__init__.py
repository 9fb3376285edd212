"""Pretrained parts from local folders: the only code that imports `diffusers` / `transformers`.

The FramePack-F1 backbone (`framepack_backbone.py`), video VAEs (`vae.py`), text and image
encoders (`text_encoders.py`), folder checks and loading (`folders.py`) and tiny random
stand-ins for tests (`tiny.py`: `python -m lightning_modules.pretrained.tiny DIR`).
"""
