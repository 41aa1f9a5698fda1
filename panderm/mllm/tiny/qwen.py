"""Tiny, randomly initialised Qwen2.5-VL and Qwen3-VL checkpoints built offline, for tests and demos.

Both share Qwen2-VL's ChatML chat template and special tokens (`panderm.mllm.tiny.qwen2_vl`) and its
dynamic-resolution image processor: a 2-layer text model of width 64 and a 2-block vision tower of width 32.
Qwen2.5-VL has 14-pixel patches (window attention in block 0, full attention in block 1), Qwen3-VL 16-pixel
patches with learned position embeddings and one deepstack layer; after the 2x2 merge a 48x48 image gives
4 image tokens in both. Replies are gibberish that depends on the input; the same seed gives the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from panderm.errors import ConfigError
from panderm.mllm.tiny.qwen2_vl import CHAT_TEMPLATE, SPECIAL_TOKENS
from panderm.mllm.tiny.tokenizer import train_tokenizer

VOCAB_SIZE = 512
INIT_RANGE = 0.3  # far above the usual 0.02: with near-uniform attention a random model ignores its input


def _tokenizer() -> tuple[Any, dict[str, int]]:
    """The shared BPE tokenizer with Qwen's special tokens, and the special tokens' ids."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(VOCAB_SIZE, SPECIAL_TOKENS),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    return tokenizer, {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}


def _text_config(ids: dict[str, int], vocab_size: int, **extra: Any) -> dict[str, Any]:
    """A 2-layer text model of width 64 (4 query heads of 16, 2 key/value heads)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "initializer_range": INIT_RANGE,
        "bos_token_id": None,
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        **extra,
    }


def _token_ids(ids: dict[str, int]) -> dict[str, int]:
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _save(out: Path, model_class: type, config: Any, processor: Any, ids: dict[str, int], seed: int) -> Path:
    """`model_class(config)` built under `seed`, with greedy generation defaults, saved with `processor`."""
    from transformers import GenerationConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _out_dir(out_dir: str | Path, name: str) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{name}: out_dir {out} exists and is not a folder")
    return out


def build_tiny_qwen2_5_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint (model, processor, tokenizer, chat template) to `out_dir`.

    Images are resized to between 28 * 28 and 56 * 56 pixels in 28-pixel steps: one image token per 28x28.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    out = _out_dir(out_dir, "build_tiny_qwen2_5_vl")
    tokenizer, ids = _tokenizer()
    config = Qwen2_5_VLConfig(
        # head_dim 16 -> 8 rotary frequencies split over (temporal, height, width)
        text_config=_text_config(
            ids,
            len(tokenizer),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,  # the merger projects into the text model's width
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,  # windows of 2x2 merged tokens
            "fullatt_block_indexes": [1],
            "initializer_range": INIT_RANGE,
        },
        **_token_ids(ids),
    )
    pixels = {"min_pixels": 28 * 28, "max_pixels": 56 * 56}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=CHAT_TEMPLATE,
    )
    return _save(out, Qwen2_5_VLForConditionalGeneration, config, processor, ids, seed)


def build_tiny_qwen3_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen3-VL checkpoint (model, processor, tokenizer, chat template) to `out_dir`.

    Images are resized to between 32 * 32 and 64 * 64 pixels in 32-pixel steps: one image token per 32x32.
    """
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    out = _out_dir(out_dir, "build_tiny_qwen3_vl")
    tokenizer, ids = _tokenizer()
    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    }
    config = Qwen3VLConfig(
        text_config=_text_config(ids, len(tokenizer), head_dim=16, rope_parameters=rope),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 16,  # a 4x4 grid, interpolated to each image's patch grid
            "deepstack_visual_indexes": [0],
            "initializer_range": INIT_RANGE,
        },
        **_token_ids(ids),
    )
    size = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=16),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(size=size, patch_size=16),
        chat_template=CHAT_TEMPLATE,
    )
    return _save(out, Qwen3VLForConditionalGeneration, config, processor, ids, seed)
