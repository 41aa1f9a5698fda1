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

import torch

from panderm.errors import ConfigError
from panderm.mllm.tiny.tokenizer import train_tokenizer

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
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    prefix = "Idefics3" if family == "idefics3" else "SmolVLM"
    names = ("Config", "ImageProcessor", "Processor", "ForConditionalGeneration")
    classes = {name: getattr(transformers, prefix + name) for name in names}
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"build_tiny_{family}: out_dir {out} exists and is not a folder")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(vocab_size, special_tokens),
        bos_token=bos,
        eos_token="<end_of_utterance>",
        pad_token=pad,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special_tokens}
    config = classes["Config"](
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            # far above the usual 0.02: with near-uniform attention a random model ignores its input
            "initializer_range": 0.3,
            "bos_token_id": ids[bos],
            "eos_token_id": ids["<end_of_utterance>"],
            "pad_token_id": ids[pad],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 14,
            "initializer_range": 0.3,
        },
        scale_factor=2,
        image_token_id=ids["<image>"],
        pad_token_id=ids[pad],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = classes["ForConditionalGeneration"](config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<end_of_utterance>"], ids[pad]], pad_token_id=ids[pad], do_sample=False
    )
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
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_idefics3(out_dir: str | Path, seed: int = 0, *, vocab_size: int = 512) -> Path:
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


def build_tiny_smolvlm(out_dir: str | Path, seed: int = 0, *, vocab_size: int = 512) -> Path:
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
