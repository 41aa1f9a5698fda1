"""Tiny, randomly initialised vision-language models of each supported family, built offline.

For tests, benchmarks and demos: `build_tiny(family, out_dir)` writes a checkpoint folder (model, processor,
tokenizer, chat template where the family has one) that `AutoProcessor.from_pretrained(out_dir)` and
`AutoModelForImageTextToText.from_pretrained(out_dir)` load with no network. Each is built from the family's
transformers config class with a few layers of small width and the shared byte-level BPE tokenizer
(`panderm.mllm.tiny.tokenizer`) holding the family's special tokens; replies are gibberish, but they depend
on the images and the text and are reproducible (the same seed gives the same files).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from panderm.errors import ConfigError
from panderm.mllm.tiny.qwen2_vl import build_tiny_qwen2_vl

# family -> "module:function" under panderm.mllm.tiny; the function is build(out_dir, seed=0) -> Path
FAMILIES: dict[str, str] = {
    "qwen2_vl": "qwen2_vl:build_tiny_qwen2_vl",
    "qwen2_5_vl": "qwen:build_tiny_qwen2_5_vl",
    "qwen3_vl": "qwen:build_tiny_qwen3_vl",
    "llava": "llava:build_tiny_llava",
    "llava_next": "llava:build_tiny_llava_next",
    "llava_onevision": "llava:build_tiny_llava_onevision",
    "internvl": "internvl:build_tiny_internvl",
    "idefics3": "idefics:build_tiny_idefics3",
    "smolvlm": "idefics:build_tiny_smolvlm",
    "gemma3": "gemma:build_tiny_gemma3",
    "paligemma": "gemma:build_tiny_paligemma",
    "mllama": "mllama:build_tiny_mllama",
}

__all__ = ["FAMILIES", "build_tiny", "build_tiny_qwen2_vl"]


def build_tiny(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of `family` (one of FAMILIES) to `out_dir`; returns the folder."""
    if family not in FAMILIES:
        raise ConfigError(f"tiny model family {family!r} is not one of {', '.join(FAMILIES)}")
    module, function = FAMILIES[family].split(":")
    build = getattr(importlib.import_module(f"panderm.mllm.tiny.{module}"), function)
    return build(out_dir, seed=seed)
