"""Tiny, randomly initialised Gemma 3 and PaliGemma checkpoints, built offline for tests, benchmarks, demos.

`build_tiny_gemma3(out_dir)` writes a Gemma3ForConditionalGeneration (2 text layers of width 64, a 1-layer
SigLIP tower on 56-pixel images pooled to 4 image tokens) with a Gemma3Processor and a hand-written Gemma
chat template (``<start_of_turn>user ... <end_of_turn>``). `build_tiny_paligemma(out_dir)` writes a
PaliGemmaForConditionalGeneration (Gemma text model, SigLIP tower on 28-pixel images, 4 image tokens) with a
PaliGemmaProcessor and no chat template, as PaliGemma has none: prompts are ``<image>...text``, the
processor adds the BOS and newline. Both use the shared byte-level BPE tokenizer; replies are gibberish but
depend on the images and the text, and the same seed gives the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from panderm.mllm.tiny.common import (
    INIT_RANGE,
    TEXT_WIDTH,
    VOCAB_SIZE,
    fast_tokenizer,
    output_folder,
    save_checkpoint,
    seeded_model,
    text_config,
    token_ids,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

# Gemma 3's turn, image and padding tokens: every special token its processor, config and template name
GEMMA3_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)
# PaliGemma's; its processor adds the <loc....> and <seg...> region tokens itself
PALIGEMMA_TOKENS: tuple[str, ...] = ("<pad>", "<eos>", "<bos>", "<image>")

# Gemma turns ("assistant" is "model"); a system message is put before the first user turn's content, as
# Gemma has no system role. An image part is <start_of_image>, which the processor expands to the image's
# <image_soft_token>s between <start_of_image> and <end_of_image>.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'system' %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}"
    "{% set ns.system = ns.system + part['text'] | trim + '\n\n' %}{% endif %}{% endfor %}"
    "{% else %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ ns.system }}{% set ns.system = '' %}"
    "{% for part in parts %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}"
    "{% endif %}{% endfor %}"
    "<end_of_turn>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# the text model's size beyond the shared one, for both families
_TEXT: dict[str, Any] = {
    "head_dim": 16,
    # untied: with Gemma's embedding scale, tied random weights make each step repeat the last token
    "tie_word_embeddings": False,
}
_VISION = {  # a one-layer SigLIP tower, patches of 14 pixels
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "patch_size": 14,
    "vision_use_head": False,
}


def _tokenizer(special_tokens: tuple[str, ...], vocab_size: int, **named: Any) -> PreTrainedTokenizerFast:
    """The shared BPE tokenizer with `special_tokens`, as a fast tokenizer with Gemma's bos/eos/pad."""
    return fast_tokenizer(
        special_tokens, vocab_size, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", **named
    )


def _unblind(model: PreTrainedModel) -> None:
    """Redraw the projections Gemma initialises to zero (which would make a random model blind) with the
    initializer range, and undo Gemma's embedding scale on the random embeddings."""
    for name, parameter in model.named_parameters():
        if name.endswith("mm_input_projection_weight"):
            parameter.normal_(0.0, INIT_RANGE)
        elif name.endswith("embed_tokens.weight"):
            parameter.div_(TEXT_WIDTH**0.5)


def build_tiny_gemma3(out_dir: str | Path, seed: int = 0, *, vocab_size: int = VOCAB_SIZE) -> Path:
    """Write a tiny random Gemma 3 checkpoint (model, Gemma3Processor, tokenizer, chat template) to `out_dir`.

    Images are resized to 56x56 pixels: 4x4 patches, average-pooled to 4 image tokens.
    """
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
    )

    out = output_folder(out_dir, "build_tiny_gemma3")
    tokenizer = _tokenizer(
        GEMMA3_TOKENS,
        vocab_size,
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    ids = token_ids(tokenizer, GEMMA3_TOKENS)
    config = Gemma3Config(
        text_config=text_config(
            len(tokenizer),
            bos=ids["<bos>"],
            eos=[ids["<eos>"], ids["<end_of_turn>"]],
            pad=ids["<pad>"],
            **_TEXT,
            query_pre_attn_scalar=_TEXT["head_dim"],
            sliding_window=512,
            layer_types=["sliding_attention", "full_attention"],
        ),
        vision_config={**_VISION, "image_size": 56},
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        initializer_range=INIT_RANGE,
        tie_word_embeddings=False,
    )
    model = seeded_model(Gemma3ForConditionalGeneration, config, seed, _unblind)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 56, "width": 56}),
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=4,
    )
    return save_checkpoint(out, model, processor, eos=[ids["<end_of_turn>"], ids["<eos>"]], pad=ids["<pad>"])


def build_tiny_paligemma(out_dir: str | Path, seed: int = 0, *, vocab_size: int = VOCAB_SIZE) -> Path:
    """Write a tiny random PaliGemma checkpoint (model, PaliGemmaProcessor, tokenizer; no chat template).

    Images are resized to 28x28 pixels: 2x2 patches, 4 image tokens. The vocabulary includes the 1152
    ``<loc....>``/``<seg...>`` tokens the processor adds.
    """
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    out = output_folder(out_dir, "build_tiny_paligemma")
    tokenizer = _tokenizer(PALIGEMMA_TOKENS, vocab_size, extra_special_tokens={"image_token": "<image>"})
    processor = PaliGemmaProcessor(
        image_processor=SiglipImageProcessor(size={"height": 28, "width": 28}, image_seq_length=4),
        tokenizer=tokenizer,
    )
    ids = token_ids(tokenizer, PALIGEMMA_TOKENS)
    config = PaliGemmaConfig(
        text_config=text_config(
            len(tokenizer),  # the processor's region tokens included
            bos=ids["<bos>"],
            eos=ids["<eos>"],
            pad=ids["<pad>"],
            **_TEXT,
            model_type="gemma",
        ),
        vision_config={**_VISION, "image_size": 28, "projection_dim": TEXT_WIDTH},
        image_token_index=ids["<image>"],
        vocab_size=len(tokenizer),
        projection_dim=TEXT_WIDTH,
        hidden_size=TEXT_WIDTH,
        tie_word_embeddings=False,
    )
    model = seeded_model(PaliGemmaForConditionalGeneration, config, seed, _unblind)
    return save_checkpoint(out, model, processor, eos=[ids["<eos>"]], pad=ids["<pad>"])
