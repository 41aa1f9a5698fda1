"""What every tiny builder shares: the output-folder check, the tokenizer, the text and vision model sizes,
the seeded model construction and the saving of model and processor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from panderm.errors import ConfigError
from panderm.mllm.tiny.tokenizer import train_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

VOCAB_SIZE = 512
TEXT_WIDTH = 64
PATCH_SIZE = 14  # pixels a side of a vision patch
INIT_RANGE = 0.3  # far above the usual 0.02: with near-uniform attention a random model ignores its input


def output_folder(out_dir: str | Path, who: str) -> Path:
    """`out_dir` as a Path; ConfigError (naming the builder `who`) when it exists and is not a folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{who}: out_dir {out} exists and is not a folder")
    return out


def fast_tokenizer(
    special_tokens: Sequence[str], vocab_size: int = VOCAB_SIZE, **named: Any
) -> PreTrainedTokenizerFast:
    """The shared BPE tokenizer holding `special_tokens`, with `named` roles (eos_token=..., etc.)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(vocab_size, special_tokens), **named)


def token_ids(tokenizer: PreTrainedTokenizerFast, tokens: Sequence[str]) -> dict[str, int]:
    """Each of `tokens` -> its id in `tokenizer`."""
    return {token: tokenizer.convert_tokens_to_ids(token) for token in tokens}


def text_config(
    vocab_size: int, *, bos: int | None, eos: int | list[int] | None, pad: int | None, **extra: Any
) -> dict[str, Any]:
    """A 2-layer text model of width 64 (4 query heads of 16, 2 key/value heads) with the given special token
    ids; `extra` adds or overrides keys."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 2 * TEXT_WIDTH,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "initializer_range": INIT_RANGE,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        **extra,
    }


def vision_config(image_size: int, *, layers: int = 2, **extra: Any) -> dict[str, Any]:
    """A ViT of width 32 (2 heads) on `image_size`-pixel images in 14-pixel patches; `extra` adds keys."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": PATCH_SIZE,
        "initializer_range": INIT_RANGE,
        **extra,
    }


def seeded_model(
    model_class: Callable[[Any], PreTrainedModel],
    config: Any,
    seed: int,
    adjust: Callable[[PreTrainedModel], None] | None = None,
) -> PreTrainedModel:
    """`model_class(config)` in eval mode with weights drawn from `seed` (the global RNG left as it was);
    `adjust(model)`, when given, runs under the same seeded RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
        if adjust is not None:
            with torch.no_grad():
                adjust(model)
    return model


def save_checkpoint(
    out: Path,
    model: PreTrainedModel,
    processor: ProcessorMixin,
    *,
    eos: int | list[int] | None,
    pad: int | None,
    bos: int | None = None,
) -> Path:
    """Give `model` greedy generation defaults with these token ids and save it and `processor` to `out`
    (created if missing); returns `out`."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, do_sample=False
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
