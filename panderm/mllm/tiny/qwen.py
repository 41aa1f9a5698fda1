"""Tiny, randomly initialised Qwen2.5-VL and Qwen3-VL checkpoints built offline, for tests and demos.

Both share Qwen2-VL's ChatML chat template and special tokens (`panderm.mllm.tiny.qwen2_vl`) and its
dynamic-resolution image processor: a 2-layer text model of width 64 and a 2-block vision tower of width 32.
Qwen2.5-VL has 14-pixel patches (window attention in block 0, full attention in block 1), Qwen3-VL 16-pixel
patches with learned position embeddings and one deepstack layer; after the 2x2 merge a 48x48 image gives
4 image tokens in both. Replies are gibberish that depends on the input; the same seed gives the same files.
"""

from __future__ import annotations

from pathlib import Path

from panderm.mllm.tiny.common import INIT_RANGE, output_folder, seeded_model
from panderm.mllm.tiny.qwen2_vl import (
    CHAT_TEMPLATE,
    MROPE,
    qwen_text_config,
    qwen_tokenizer,
    save_qwen,
    vision_token_ids,
)


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

    out = output_folder(out_dir, "build_tiny_qwen2_5_vl")
    tokenizer, ids = qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config=qwen_text_config(tokenizer, ids, rope_parameters=MROPE),
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
        **vision_token_ids(ids),
    )
    pixels = {"min_pixels": 28 * 28, "max_pixels": 56 * 56}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=CHAT_TEMPLATE,
    )
    model = seeded_model(Qwen2_5_VLForConditionalGeneration, config, seed)
    return save_qwen(out, model, processor, ids)


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

    out = output_folder(out_dir, "build_tiny_qwen3_vl")
    tokenizer, ids = qwen_tokenizer()
    config = Qwen3VLConfig(
        text_config=qwen_text_config(
            tokenizer, ids, head_dim=16, rope_parameters={**MROPE, "mrope_interleaved": True}
        ),
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
        **vision_token_ids(ids),
    )
    size = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=16),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(size=size, patch_size=16),
        chat_template=CHAT_TEMPLATE,
    )
    model = seeded_model(Qwen3VLForConditionalGeneration, config, seed)
    return save_qwen(out, model, processor, ids)
