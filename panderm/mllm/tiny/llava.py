"""Tiny, randomly initialised LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision checkpoints built offline.

Each is its family's transformers config class with a 2-layer text model of width 64 (Llama for LLaVA-1.5,
Mistral for LLaVA-NeXT, Qwen2 for OneVision) and a 2-layer vision tower of width 32 on 28-pixel images in
14-pixel patches (CLIP for LLaVA-1.5 and NeXT, SigLIP for OneVision), so one image view is 2x2 patches:

* LLaVA-1.5: an image is resized and cropped to 28x28: 4 image tokens (CLS dropped).
* LLaVA-NeXT and OneVision: "anyres" tiling over grid pinpoints of at most 56x56 pixels (2x2 tiles of 28),
  so a 48x48 image gives the 4 tokens of its overview, 16 of its tiles and one newline per tile row: 24.
  OneVision gives each image of a multi-image prompt its overview only (4 tokens and a newline).

The chat templates are written here in each family's turn format (Vicuna's ``USER: ... ASSISTANT:``,
Mistral's ``[INST] ... [/INST]``, ChatML), an image part as ``<image>`` and a newline, as the checkpoints
on the hub write it. Replies are gibberish that depends on the input; the same seed gives the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from panderm.errors import ConfigError
from panderm.mllm.tiny.tokenizer import train_tokenizer

VOCAB_SIZE = 512
INIT_RANGE = 0.3  # far above the usual 0.02: with near-uniform attention a random model ignores its input
IMAGE_SIZE = 28  # one view: 2x2 patches of 14 pixels
PATCH_SIZE = 14
# LLaVA-NeXT / OneVision tilings: at most 2x2 tiles of 28 pixels
GRID_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]

# one content item per part: an image as "<image>\n" (the processor repeats <image> to the image's token
# count), a text as itself; a string content is its own text
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
)

# LLaVA-1.5 (Vicuna v1): "<s>SYSTEM USER: <image>\nQ ASSISTANT: A</s>USER: ... ASSISTANT:"
VICUNA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + _CONTENT + " "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: " + _CONTENT + "{{ eos_token }}"
    "{% else %}{{ message['role'] | upper }}: " + _CONTENT + " "
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# LLaVA-NeXT (Mistral instruct): "<s>SYSTEM\n\n[INST] <image>\nQ [/INST] A</s>[INST] ... [/INST]"; the
# assistant's reply follows [/INST] directly, so the generation prompt adds nothing
# (the newlines are an expression: transformers renders templates with trim_blocks, which would drop the
# first newline after a block tag)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + _CONTENT + "{{ '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %} " + _CONTENT + "{{ eos_token }}"
    "{% else %}[INST] " + _CONTENT + " [/INST]"
    "{% endif %}{% endfor %}"
)

# LLaVA-OneVision (Qwen2, ChatML)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + _CONTENT + "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAMA_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
CHATML_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")


def _tokenizer(special_tokens: tuple[str, ...], **roles: str) -> Any:
    """The shared BPE tokenizer holding `special_tokens`, with `roles` (bos_token=..., eos_token=...)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(VOCAB_SIZE, special_tokens), **roles)


def _text_config(model_type: str, tokenizer: Any) -> dict[str, Any]:
    """A 2-layer text model of width 64 (4 query heads of 16, 2 key/value heads)."""
    return {
        "model_type": model_type,
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "initializer_range": INIT_RANGE,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _vision_config(model_type: str) -> dict[str, Any]:
    """A 2-layer vision tower of width 32 on 28x28 images in 14-pixel patches."""
    return {
        "model_type": model_type,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "initializer_range": INIT_RANGE,
    }


def _save(out_dir: str | Path, name: str, model_class: type, config: Any, processor: Any, seed: int) -> Path:
    """`model_class(config)` built under `seed`, with greedy generation defaults, saved with `processor`."""
    from transformers import GenerationConfig

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{name}: out_dir {out} exists and is not a folder")
    tokenizer = processor.tokenizer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random LLaVA-1.5 checkpoint (Llama text model, CLIP vision tower, processor, tokenizer,
    Vicuna chat template) to `out_dir`: an image is resized and center-cropped to 28x28, 4 image tokens."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = _tokenizer(
        LLAMA_TOKENS, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    config = LlavaConfig(
        text_config=_text_config("llama", tokenizer),
        vision_config=_vision_config("clip_vision_model"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which the "default" strategy drops again
        chat_template=VICUNA_TEMPLATE,
    )
    return _save(out_dir, "build_tiny_llava", LlavaForConditionalGeneration, config, processor, seed)


def build_tiny_llava_next(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random LLaVA-NeXT checkpoint (Mistral text model, CLIP vision tower, anyres tiling up to
    2x2 tiles of 28 pixels, processor, tokenizer, Mistral chat template) to `out_dir`."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = _tokenizer(
        LLAMA_TOKENS, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    config = LlavaNextConfig(
        text_config={**_text_config("mistral", tokenizer), "sliding_window": None},
        vision_config=_vision_config("clip_vision_model"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            image_grid_pinpoints=GRID_PINPOINTS,
        ),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=MISTRAL_TEMPLATE,
    )
    return _save(out_dir, "build_tiny_llava_next", LlavaNextForConditionalGeneration, config, processor, seed)


def build_tiny_llava_onevision(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random LLaVA-OneVision checkpoint (Qwen2 text model, SigLIP vision tower, anyres tiling
    up to 2x2 tiles of 28 pixels, processors, tokenizer, ChatML chat template) to `out_dir`."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tokenizer = _tokenizer(CHATML_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    config = LlavaOnevisionConfig(
        text_config=_text_config("qwen2", tokenizer),
        vision_config={**_vision_config("siglip_vision_model"), "vision_use_head": False},
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=GRID_PINPOINTS),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=CHATML_TEMPLATE,
    )
    return _save(
        out_dir, "build_tiny_llava_onevision", LlavaOnevisionForConditionalGeneration, config, processor, seed
    )
