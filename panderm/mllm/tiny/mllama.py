"""A tiny, randomly initialised Llama 3.2 Vision (mllama) checkpoint, built offline for tests and demos.

`build_tiny_mllama(out_dir)` writes a MllamaForConditionalGeneration: a 3-layer text model of width 64
whose middle layer cross-attends to the image, and a vision tower (2 local layers, 1 global layer, width 32)
on single 28-pixel tiles (``max_num_tiles`` 1: each image is resized to one 28x28 tile of 2x2 patches),
with a MllamaProcessor and a hand-written Llama 3 chat template (``<|start_header_id|>user<|end_header_id|>``
turns ending with ``<|eot_id|>``, ``<|image|>`` per image). Built on the shared byte-level BPE tokenizer;
replies are gibberish but depend on the images and the text, and the same seed gives the same weights.

The cross-attention gates are opened (transformers initialises them to 0, which would make the model blind).
With them open, transformers' Mllama shows that text before a prompt's first ``<|image|>`` (which has no image
to attend to) still gets a uniform average over every vision token in its row, zero-padded image slots of a
batch included, so a prompt batched with prompts holding more images gets slightly different replies.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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
    from transformers import PreTrainedModel

# every special token the Mllama processor, model config and chat template refer to
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|finetune_right_pad_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
)

# Llama 3 turns; an image part is <|image|>, which the processor leaves as one token (the text model
# cross-attends to the image's tiles from there on)
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|image|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

TILE_SIZE = 28  # pixels a side of the one tile per image: 2x2 patches of 14 pixels


def _open_gates(model: PreTrainedModel) -> None:
    """Open the cross-attention gates, which start closed (tanh(0)) and would leave the model blind."""
    for name, parameter in model.named_parameters():
        if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
            parameter.fill_(1.0)


def build_tiny_mllama(out_dir: str | Path, seed: int = 0, *, vocab_size: int = VOCAB_SIZE) -> Path:
    """Write a tiny random Llama 3.2 Vision checkpoint (model, MllamaProcessor, tokenizer, chat template)."""
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
    )

    out = output_folder(out_dir, "build_tiny_mllama")
    tokenizer = fast_tokenizer(
        SPECIAL_TOKENS,
        vocab_size,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        extra_special_tokens={"image_token": "<|image|>"},
    )
    ids = token_ids(tokenizer, SPECIAL_TOKENS)
    eos = [ids["<|eot_id|>"], ids["<|end_of_text|>"]]
    pad = ids["<|finetune_right_pad_id|>"]
    config = MllamaConfig(
        text_config=text_config(
            len(tokenizer),
            bos=ids["<|begin_of_text|>"],
            eos=eos,
            pad=pad,
            num_hidden_layers=3,
            cross_attention_layers=[1],
        ),
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "intermediate_layers_indices": [1],
            "vision_output_dim": 64,  # hidden_size x (1 + one intermediate layer)
            "image_size": TILE_SIZE,
            "patch_size": PATCH_SIZE,
            "max_num_tiles": 1,
            "supported_aspect_ratios": [[1, 1]],
            "initializer_range": INIT_RANGE,
        },
        image_token_index=ids["<|image|>"],
    )
    model = seeded_model(MllamaForConditionalGeneration, config, seed, _open_gates)
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessor(
            size={"height": TILE_SIZE, "width": TILE_SIZE}, max_image_tiles=1
        ),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    return save_checkpoint(out, model, processor, eos=eos, pad=pad)
