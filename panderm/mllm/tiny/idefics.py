"""Tiny, randomly initialised Idefics3 and SmolVLM checkpoints, built offline for tests, benchmarks, demos.

`build_tiny_idefics3(out_dir)` and `build_tiny_smolvlm(out_dir)` write an Idefics3ForConditionalGeneration /
SmolVLMForConditionalGeneration (a 2-layer Llama text model of width 64, a 1-layer vision tower on 56-pixel
images, whose 4x4 patches the connector's pixel shuffle turns into 4 image tokens) with the family's own
processor and image processor (no image splitting: one 56x56 view per image) and a hand-written
``User:``/``Assistant:`` chat template ending turns with ``<end_of_utterance>``. They share the byte-level
BPE tokenizer; replies are gibberish but depend on the images and the text, and the same seed gives the
same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from panderm.mllm.tiny.common import (
    VOCAB_SIZE,
    fast_tokenizer,
    output_folder,
    save_checkpoint,
    seeded_model,
    text_config,
    token_ids,
    vision_config,
)

IMAGE_SIZE = 56  # pixels a side: 4x4 patches of 14 pixels, 4 image tokens after the 2x2 pixel shuffle
IMAGE_SEQ_LEN = 4
# image markers both processors put around each image's <image> tokens
_IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>")
IDEFICS3_TOKENS: tuple[str, ...] = ("<|begin_of_text|>", "<|end_of_text|>", *_IMAGE_TOKENS)
SMOLVLM_TOKENS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>", *_IMAGE_TOKENS)

# Idefics3 turns: "User:<image>Question?<end_of_utterance>\nAssistant: answer<end_of_utterance>\n"; a role
# is followed by ":" before an image and ": " before text, as in the model cards. The processor expands each
# <image> to <fake_token_around_image><global-img><image>...<fake_token_around_image>.
_TURNS = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{{ ':' if message['content'] and message['content'][0]['type'] == 'image' else ': ' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _build(
    out_dir: str | Path,
    seed: int,
    vocab_size: int,
    *,
    family: str,
    special_tokens: tuple[str, ...],
    bos: str,
    pad: str,
) -> Path:
    """Write the tiny checkpoint of `family` ("idefics3" or "smolvlm"); the two differ only in their classes,
    their BOS (which the chat template starts with) and their padding token."""
    import transformers

    prefix = "Idefics3" if family == "idefics3" else "SmolVLM"
    names = ("Config", "ImageProcessor", "Processor", "ForConditionalGeneration")
    classes = {name: getattr(transformers, prefix + name) for name in names}
    out = output_folder(out_dir, f"build_tiny_{family}")
    tokenizer = fast_tokenizer(
        special_tokens, vocab_size, bos_token=bos, eos_token="<end_of_utterance>", pad_token=pad
    )
    ids = token_ids(tokenizer, special_tokens)
    eos = ids["<end_of_utterance>"]
    config = classes["Config"](
        text_config=text_config(len(tokenizer), bos=ids[bos], eos=eos, pad=ids[pad], model_type="llama"),
        vision_config=vision_config(IMAGE_SIZE, layers=1),
        scale_factor=2,
        image_token_id=ids["<image>"],
        pad_token_id=ids[pad],
    )
    model = seeded_model(classes["ForConditionalGeneration"], config, seed)
    # one square view per image, no splitting into tiles
    sizes: dict[str, Any] = {
        "do_image_splitting": False,
        "size": {"longest_edge": IMAGE_SIZE},
        "max_image_size": {"longest_edge": IMAGE_SIZE},
    }
    parts: dict[str, Any] = {"image_processor": classes["ImageProcessor"](**sizes), "tokenizer": tokenizer}
    if family == "smolvlm":
        parts["video_processor"] = transformers.SmolVLMVideoProcessor(**sizes)
    processor = classes["Processor"](
        **parts, image_seq_len=IMAGE_SEQ_LEN, chat_template="{{ bos_token }}" + _TURNS
    )
    return save_checkpoint(out, model, processor, eos=[eos, ids[pad]], pad=ids[pad])


def build_tiny_idefics3(out_dir: str | Path, seed: int = 0, *, vocab_size: int = VOCAB_SIZE) -> Path:
    """Write a tiny random Idefics3 checkpoint (model, Idefics3Processor, tokenizer, chat template)."""
    return _build(
        out_dir,
        seed,
        vocab_size,
        family="idefics3",
        special_tokens=IDEFICS3_TOKENS,
        bos="<|begin_of_text|>",
        pad="<|end_of_text|>",
    )


def build_tiny_smolvlm(out_dir: str | Path, seed: int = 0, *, vocab_size: int = VOCAB_SIZE) -> Path:
    """Write a tiny random SmolVLM checkpoint (model, SmolVLMProcessor, tokenizer, chat template)."""
    return _build(
        out_dir,
        seed,
        vocab_size,
        family="smolvlm",
        special_tokens=SMOLVLM_TOKENS,
        bos="<|im_start|>",
        pad="<|im_end|>",
    )
