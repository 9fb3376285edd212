"""Training utilities shared by both stages: the non-finite loss policy, per-batch seeding,
FSDP2 / compile, checkpoint reading (`checkpoints.py`) and stage 2's start from stage 1
(`stage1.py`)."""
