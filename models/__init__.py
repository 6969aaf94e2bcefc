"""Checkpoint loaders (HF safetensors folders, GGUF files) and the decoder architectures.

Each architecture is one module (`llama`, `gpt2`, `opt`, `gptj`, `gpt_neox`) with its config
reader, its weight names and its graph; see docs/adding-a-model.md.
"""

from tilesim.models.checkpoint import ARCHITECTURES, Checkpoint, open_checkpoint
from tilesim.models.config import ModelConfig

__all__ = ["ARCHITECTURES", "Checkpoint", "ModelConfig", "open_checkpoint"]
