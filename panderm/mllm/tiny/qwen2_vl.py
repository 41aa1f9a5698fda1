"""A tiny, randomly initialised Qwen2-VL built offline, for tests, benchmarks and demos.

`build_tiny_qwen2_vl(out_dir)` writes a checkpoint folder that `AutoProcessor.from_pretrained(out_dir)` and
`AutoModelForImageTextToText.from_pretrained(out_dir)` load with no network: a 2-layer text model and a
2-block vision tower (about 0.2 M parameters), a byte-level BPE tokenizer trained here on a small built-in
corpus, a ChatML chat template, and image/video processors whose pixel budget turns a 64x64 image into
4 image tokens. Its replies are gibberish, but they depend on the image and the text and are reproducible:
the same seed gives byte-identical files. `image_pixels` raises the pixel budget (224 * 224: a 224x224 image
gives 64 image tokens) and `vision_depth` the number of vision blocks, e.g. for benchmarks of the vision side.
"""

from __future__ import annotations

from pathlib import Path

import torch

from panderm.errors import ConfigError
from panderm.mllm.tiny.tokenizer import train_tokenizer

# every special token the Qwen2-VL processor, model config and chat template refer to
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# ChatML turns; an image part becomes <|vision_start|><|image_pad|><|vision_end|>, which the processor then
# repeats <|image_pad|> to the image's token count. Written here because a random checkpoint ships none.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

MIN_PIXELS = 28 * 28  # one 2x2 group of 14-pixel patches: one image token


def build_tiny_qwen2_vl(
    out_dir: str | Path,
    seed: int = 0,
    *,
    vocab_size: int = 512,
    image_pixels: int = 56 * 56,
    vision_depth: int = 2,
) -> Path:
    """Write a tiny random Qwen2-VL checkpoint (model, processor, tokenizer, chat template) to `out_dir`.

    `image_pixels` is the processors' `max_pixels` (an image is resized to at most that many pixels, in
    28-pixel steps, one image token per 28x28 pixels; the minimum stays 28 * 28); `vision_depth` is the
    number of vision transformer blocks.
    """
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"build_tiny_qwen2_vl: out_dir {out} exists and is not a folder")
    if isinstance(image_pixels, bool) or not isinstance(image_pixels, int) or image_pixels < MIN_PIXELS:
        raise ConfigError(
            f"build_tiny_qwen2_vl: image_pixels must be an integer >= {MIN_PIXELS}, got {image_pixels!r}"
        )
    if isinstance(vision_depth, bool) or not isinstance(vision_depth, int) or vision_depth < 1:
        raise ConfigError(f"build_tiny_qwen2_vl: vision_depth must be an integer >= 1, got {vision_depth!r}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(vocab_size, SPECIAL_TOKENS),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            # head_dim 16 -> 8 rotary frequencies split over (temporal, height, width)
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            # far above the usual 0.02: with near-uniform attention a random model ignores its input
            "initializer_range": 0.3,
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": vision_depth,
            "embed_dim": 32,
            "hidden_size": 64,  # the merger projects into the text model's width
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "initializer_range": 0.3,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    # by default 64x64 -> 56x56 pixels -> 4x4 patches of 14 px -> 4 tokens after the 2x2 merge
    pixels = {"min_pixels": MIN_PIXELS, "max_pixels": image_pixels}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=CHAT_TEMPLATE,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
