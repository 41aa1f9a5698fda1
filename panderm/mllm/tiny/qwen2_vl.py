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
from typing import TYPE_CHECKING, Any

from panderm.errors import ConfigError
from panderm.mllm.tiny.common import (
    INIT_RANGE,
    PATCH_SIZE,
    VOCAB_SIZE,
    fast_tokenizer,
    output_folder,
    save_checkpoint,
    seeded_model,
    text_config,
    token_ids,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

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

# head_dim 16 -> 8 rotary frequencies split over (temporal, height, width)
MROPE: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}


def qwen_tokenizer(vocab_size: int = VOCAB_SIZE) -> tuple[PreTrainedTokenizerFast, dict[str, int]]:
    """The shared BPE tokenizer with the Qwen-VL special tokens, and those tokens' ids."""
    tokenizer = fast_tokenizer(SPECIAL_TOKENS, vocab_size, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    return tokenizer, token_ids(tokenizer, SPECIAL_TOKENS)


def qwen_text_config(tokenizer: PreTrainedTokenizerFast, ids: dict[str, int], **extra: Any) -> dict[str, Any]:
    """The tiny text model with Qwen's special token ids (no BOS); `extra` adds keys."""
    return text_config(len(tokenizer), bos=None, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"], **extra)


def vision_token_ids(ids: dict[str, int]) -> dict[str, int]:
    """The Qwen-VL config's image, video and vision start/end token ids."""
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def save_qwen(out: Path, model: PreTrainedModel, processor: ProcessorMixin, ids: dict[str, int]) -> Path:
    """Save a Qwen-VL `model` (stopping at <|im_end|> or <|endoftext|>) and its `processor` to `out`."""
    return save_checkpoint(
        out, model, processor, eos=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad=ids["<|endoftext|>"]
    )


def build_tiny_qwen2_vl(
    out_dir: str | Path,
    seed: int = 0,
    *,
    vocab_size: int = VOCAB_SIZE,
    image_pixels: int = 56 * 56,
    vision_depth: int = 2,
) -> Path:
    """Write a tiny random Qwen2-VL checkpoint (model, processor, tokenizer, chat template) to `out_dir`.

    `image_pixels` is the processors' `max_pixels` (an image is resized to at most that many pixels, in
    28-pixel steps, one image token per 28x28 pixels; the minimum stays 28 * 28); `vision_depth` is the
    number of vision transformer blocks.
    """
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out = output_folder(out_dir, "build_tiny_qwen2_vl")
    if isinstance(image_pixels, bool) or not isinstance(image_pixels, int) or image_pixels < MIN_PIXELS:
        raise ConfigError(
            f"build_tiny_qwen2_vl: image_pixels must be an integer >= {MIN_PIXELS}, got {image_pixels!r}"
        )
    if isinstance(vision_depth, bool) or not isinstance(vision_depth, int) or vision_depth < 1:
        raise ConfigError(f"build_tiny_qwen2_vl: vision_depth must be an integer >= 1, got {vision_depth!r}")
    tokenizer, ids = qwen_tokenizer(vocab_size)
    config = Qwen2VLConfig(
        text_config=qwen_text_config(tokenizer, ids, rope_parameters=MROPE),
        vision_config={
            "depth": vision_depth,
            "embed_dim": 32,
            "hidden_size": 64,  # the merger projects into the text model's width
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "initializer_range": INIT_RANGE,
        },
        **vision_token_ids(ids),
    )
    model = seeded_model(Qwen2VLForConditionalGeneration, config, seed)
    # by default 64x64 -> 56x56 pixels -> 4x4 patches of 14 px -> 4 tokens after the 2x2 merge
    pixels = {"min_pixels": MIN_PIXELS, "max_pixels": image_pixels}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=CHAT_TEMPLATE,
    )
    return save_qwen(out, model, processor, ids)
