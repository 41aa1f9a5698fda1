"""A tiny, randomly initialised InternVL (transformers' native ``internvl``) checkpoint built offline.

`build_tiny_internvl(out_dir)` writes a 2-layer Qwen2 text model of width 64 and a 2-layer InternViT of
width 32 on 56-pixel tiles in 14-pixel patches, whose 4x4 patches the pixel shuffle (downsample ratio 0.5)
turns into 4 image tokens per tile. The GOT-OCR2 image processor cuts an image into at most 4 tiles (plus a
thumbnail when there are several; a square image of 48 pixels is one tile). The processor writes an image
as ``<img>``, its tiles' ``<IMG_CONTEXT>`` tokens and ``</img>``; the chat template is ChatML with an image
part as ``<IMG_CONTEXT>`` and a newline, as InternVL's hub checkpoints write it. The tokenizer also holds
InternVL's grounding tags (``<ref>``, ``<box>``, ``<quad>``). Replies are gibberish that depends on the input;
the same seed gives the same files.
"""

from __future__ import annotations

from pathlib import Path

from panderm.mllm.tiny.common import (
    PATCH_SIZE,
    fast_tokenizer,
    output_folder,
    save_checkpoint,
    seeded_model,
    text_config,
    vision_config,
)

TILE_SIZE = 56
DOWNSAMPLE_RATIO = 0.5
TOKENS_PER_TILE = int((TILE_SIZE // PATCH_SIZE * DOWNSAMPLE_RATIO) ** 2)

# the processor finds these through the tokenizer's attributes of the same names
IMAGE_TOKENS: dict[str, str] = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    *IMAGE_TOKENS.values(),
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<quad>",
    "</quad>",
)

# ChatML turns; an image part is <IMG_CONTEXT> and a newline, which the processor expands to
# <img><IMG_CONTEXT>...</img> with the image's tile count times TOKENS_PER_TILE context tokens
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif part['type'] == 'video' %}<video>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_internvl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random InternVL checkpoint (model, processor, tokenizer, chat template) to `out_dir`."""
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    out = output_folder(out_dir, "build_tiny_internvl")
    tokenizer = fast_tokenizer(
        SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=IMAGE_TOKENS
    )
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = InternVLConfig(
        text_config=text_config(len(tokenizer), bos=None, eos=eos, pad=pad, model_type="qwen2"),
        vision_config=vision_config(TILE_SIZE),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKENS["context_image_token"]),
        image_seq_length=TOKENS_PER_TILE,
        downsample_ratio=DOWNSAMPLE_RATIO,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = seeded_model(InternVLForConditionalGeneration, config, seed)
    size = {"height": TILE_SIZE, "width": TILE_SIZE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=True, min_patches=1, max_patches=4),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=TOKENS_PER_TILE,
        chat_template=CHAT_TEMPLATE,
    )
    return save_checkpoint(out, model, processor, eos=[eos, pad], pad=pad)
