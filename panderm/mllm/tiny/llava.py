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
from typing import TYPE_CHECKING, Any

from panderm.mllm.tiny.common import (
    PATCH_SIZE,
    fast_tokenizer,
    output_folder,
    save_checkpoint,
    seeded_model,
    text_config,
    vision_config,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

IMAGE_SIZE = 28  # one view: 2x2 patches of 14 pixels
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
LLAMA_ROLES: dict[str, str] = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
}
CHATML_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")


def _text_config(model_type: str, tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    """The tiny text model of `model_type` with `tokenizer`'s vocabulary and bos/eos/pad ids."""
    return text_config(
        len(tokenizer),
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
        model_type=model_type,
    )


def _save(
    out: Path, model_class: type[PreTrainedModel], config: Any, processor: ProcessorMixin, seed: int
) -> Path:
    """`model_class(config)` built under `seed`, with greedy generation defaults, saved with `processor`."""
    tokenizer = processor.tokenizer
    model = seeded_model(model_class, config, seed)
    return save_checkpoint(
        out,
        model,
        processor,
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )


def build_tiny_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random LLaVA-1.5 checkpoint (Llama text model, CLIP vision tower, processor, tokenizer,
    Vicuna chat template) to `out_dir`: an image is resized and center-cropped to 28x28, 4 image tokens."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    out = output_folder(out_dir, "build_tiny_llava")
    tokenizer = fast_tokenizer(LLAMA_TOKENS, **LLAMA_ROLES)
    tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    config = LlavaConfig(
        text_config=_text_config("llama", tokenizer),
        vision_config=vision_config(IMAGE_SIZE, model_type="clip_vision_model"),
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
    return _save(out, LlavaForConditionalGeneration, config, processor, seed)


def build_tiny_llava_next(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random LLaVA-NeXT checkpoint (Mistral text model, CLIP vision tower, anyres tiling up to
    2x2 tiles of 28 pixels, processor, tokenizer, Mistral chat template) to `out_dir`."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    out = output_folder(out_dir, "build_tiny_llava_next")
    tokenizer = fast_tokenizer(LLAMA_TOKENS, **LLAMA_ROLES)
    config = LlavaNextConfig(
        text_config={**_text_config("mistral", tokenizer), "sliding_window": None},
        vision_config=vision_config(IMAGE_SIZE, model_type="clip_vision_model"),
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
    return _save(out, LlavaNextForConditionalGeneration, config, processor, seed)


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

    out = output_folder(out_dir, "build_tiny_llava_onevision")
    tokenizer = fast_tokenizer(CHATML_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    config = LlavaOnevisionConfig(
        text_config=_text_config("qwen2", tokenizer),
        vision_config=vision_config(IMAGE_SIZE, model_type="siglip_vision_model", vision_use_head=False),
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
    return _save(out, LlavaOnevisionForConditionalGeneration, config, processor, seed)
