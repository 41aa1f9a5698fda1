"""The hf backend's per-image preprocessing and vision-encoder caches (mllm.backends.vision_cache)."""

from __future__ import annotations

import inspect
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2VLImageProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from panderm.errors import ConfigError
from panderm.mllm.backends.base import GenerationSettings
from panderm.mllm.backends.hf import HFBackend
from panderm.mllm.backends.vision_cache import (
    CachedImageProcessor,
    VisionEncoderCache,
    VisionStats,
    image_digest,
)
from panderm.mllm.conversation import Conversation, ImagePart, decode_rgb
from panderm.mllm.tiny import build_tiny_qwen2_vl

SHORT = GenerationSettings(max_new_tokens=6)
PAD = "<|vision_start|><|image_pad|><|vision_end|>"


def png(seed: int, size: tuple[int, int] = (64, 64)) -> ImagePart:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return ImagePart(data=buffer.getvalue())


A, B, C = png(0), png(1, (64, 96)), png(2, (100, 50))  # three sizes: 4, 2 and 2 image tokens


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    path: Path = build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"))
    return AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def make(loaded: tuple[Any, Any], size: int, batch_size: int = 2, model: Any = None) -> HFBackend:
    return HFBackend.from_pretrained_objects(
        model if model is not None else loaded[0],
        loaded[1],
        name="tiny",
        adapter="qwen2_vl",
        settings=SHORT,
        batch_size=batch_size,
        image_cache_size=size,
    )


def icl_conversations() -> list[Conversation]:
    """Permutations of three images over batches of two: 10 images, 3 unique; one batch all repeats."""
    return [
        Conversation.user("Q0", A, "then", B),
        Conversation.user("Q1", B, "then", C),
        Conversation.user("Q2", C, "then", A),  # second batch: only images seen before
        Conversation.user("Q3", A, "then", C),
        Conversation.user("Q4 has no image"),
        Conversation.user("Q5", B, "twice", B),
    ]


def run(backend: HFBackend, conversations: list[Conversation]) -> list[str]:
    return backend.generate([backend.render(c) for c in conversations])


def test_replies_equal_and_each_unique_image_done_once(loaded: tuple[Any, Any]) -> None:
    cached, plain = make(loaded, 256), make(loaded, 0)
    convs = icl_conversations()
    with_cache, without = run(cached, convs), run(plain, convs)
    assert with_cache == without
    assert len(set(with_cache)) == len(with_cache)  # replies depend on the images
    assert cached.vision_stats() == {
        "images_seen": 10,
        "images_preprocessed": 3,
        "images_encoded": 3,
        "encoder_calls": 1,  # batches 2 and 3 are served from the cache
    }
    assert plain.vision_stats() == {
        "images_seen": 10,
        "images_preprocessed": 10,
        "images_encoded": 10,
        "encoder_calls": 3,
    }
    assert run(cached, convs) == with_cache  # a second pass: no work on images at all
    assert cached.vision_stats() == {
        "images_seen": 20,
        "images_preprocessed": 3,
        "images_encoded": 3,
        "encoder_calls": 1,
    }
    assert "get_image_features" not in loaded[0].model.__dict__  # the hook is gone after generate


def test_zero_size_is_the_plain_path(loaded: tuple[Any, Any]) -> None:
    plain = make(loaded, 0)
    assert not plain._vision.images.supported
    run(plain, icl_conversations())
    assert len(plain._vision.images) == len(plain._vision.encoder) == 0
    assert plain.vision_stats()["images_encoded"] == 10


def test_lru_bound_evicts_and_recounts(loaded: tuple[Any, Any]) -> None:
    convs = [Conversation.user(f"Q{i}", image) for i, image in enumerate([A, B, A, A])]
    stats = {}
    replies = {}
    for size in (1, 2):
        backend = make(loaded, size, batch_size=1)
        replies[size] = run(backend, convs)
        stats[size] = backend.vision_stats()
        assert len(backend._vision.encoder) == len(backend._vision.images) == size
    assert replies[1] == replies[2]
    # size 1: A, B (evicts A), A again (evicts B), A hit; size 2: A, B, then hits
    assert stats[1] == {"images_seen": 4, "images_preprocessed": 3, "images_encoded": 3, "encoder_calls": 3}
    assert stats[2] == {"images_seen": 4, "images_preprocessed": 2, "images_encoded": 2, "encoder_calls": 2}
    # within one batch the cache can hold fewer images than the batch: every image is still served
    one_batch = make(loaded, 1, batch_size=6)
    assert run(one_batch, icl_conversations()) == run(make(loaded, 0), icl_conversations())
    assert one_batch.vision_stats()["images_encoded"] == 3


def test_preprocessing_matches_the_processor(loaded: tuple[Any, Any]) -> None:
    processor = loaded[1]
    cache = CachedImageProcessor(processor, 8)
    parts = [A, B, A, C, B]
    images = [decode_rgb(p) for p in parts]
    texts = [PAD * 2 + "one", PAD * 3 + "two"]
    options = {"padding": True, "padding_side": "left", "return_tensors": "pt"}
    expected = processor(text=list(texts), images=images, **options)
    for keys in ([p.sha256() for p in parts], None):  # ImagePart keys, then content digests
        cache.clear()
        for _ in range(2):
            got = cache(text=list(texts), images=images, keys=keys, **options)
            assert list(got) == list(expected)
            assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert cache.stats.as_dict()["images_preprocessed"] == 6  # 3 unique images, twice (cleared once)
    assert cache.stats.as_dict()["images_seen"] == 20
    assert image_digest(images[0]) == image_digest(decode_rgb(A)) != image_digest(images[1])


def test_unknown_image_processor_takes_the_plain_call(loaded: tuple[Any, Any]) -> None:
    class OtherImageProcessor(Qwen2VLImageProcessor):
        pass

    processor = loaded[1]
    other = type(processor)(
        image_processor=OtherImageProcessor(**processor.image_processor.to_dict()),
        tokenizer=processor.tokenizer,
        video_processor=processor.video_processor,
        chat_template=processor.chat_template,
    )
    cache = CachedImageProcessor(other, 8)
    assert not cache.supported
    images = [decode_rgb(p) for p in (A, A)]
    got = cache(text=[PAD + "x", PAD + "y"], images=images, padding=True, return_tensors="pt")
    expected = processor(text=[PAD + "x", PAD + "y"], images=images, padding=True, return_tensors="pt")
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert cache.stats.as_dict()["images_preprocessed"] == 2


def test_encoder_cache_serves_pieces_in_order(loaded: tuple[Any, Any]) -> None:
    model, processor = loaded
    parts = [A, B, A, C]
    inputs = processor.image_processor([decode_rgb(p) for p in parts], return_tensors="pt")
    pixels, grid = inputs["pixel_values"], inputs["image_grid_thw"]
    module = model.model
    with torch.inference_mode():
        expected = module.get_image_features(pixels, grid).pooler_output
        cache = VisionEncoderCache(8, VisionStats())
        for keys in ([p.sha256() for p in parts], None):  # ImagePart keys, then pixel digests
            cache.clear()
            for _ in range(2):
                with cache.encoding(model, keys):
                    assert {"pixel_values", "image_grid_thw"} <= set(
                        inspect.signature(module.get_image_features).parameters
                    )
                    got = module.get_image_features(pixels, image_grid_thw=grid, return_dict=True)
                assert isinstance(got.pooler_output, tuple) and len(got.pooler_output) == 4
                assert [g.shape[0] for g in got.pooler_output] == [4, 2, 4, 2]
                for piece, reference in zip(got.pooler_output, expected, strict=True):
                    torch.testing.assert_close(piece, reference, rtol=1e-5, atol=1e-6)
    # per key mode: 3 unique images encoded in one call (A twice in the call); the repeat is all hits
    assert cache.stats.as_dict() == {
        "images_seen": 0,
        "images_preprocessed": 0,
        "images_encoded": 6,
        "encoder_calls": 2,
    }
    assert "get_image_features" not in module.__dict__


class FourDimEncoder(torch.nn.Module):
    """One entry per image along dim 0 of 4-D pixels; features are a tensor (images, tokens, dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> BaseModelOutputWithPooling:
        self.calls.append(pixel_values.shape[0])
        pooled = pixel_values.flatten(2).mean(-1, keepdim=True).transpose(1, 2)  # (n, 1, channels)
        return BaseModelOutputWithPooling(last_hidden_state=pixel_values, pooler_output=pooled)


def test_encoder_cache_four_dim_pixels_and_pass_through() -> None:
    encoder = FourDimEncoder()
    cache = VisionEncoderCache(8, VisionStats())
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2)
    for batch in ([0, 1], [1, 2, 1], [2, 0]):
        with cache.encoding(encoder):
            got = encoder.get_image_features(images[batch])
        assert isinstance(got.pooler_output, torch.Tensor)
        reference = FourDimEncoder().get_image_features(images[batch]).pooler_output
        assert torch.equal(got.pooler_output, reference)
    assert encoder.calls == [2, 1]  # [0, 1], then only 2; the third batch is all hits
    assert cache.stats.as_dict()["images_encoded"] == 3
    # a layout it does not know (5-D pixels): through unchanged, counted by the keys given
    odd = images[None]
    with cache.encoding(encoder, keys=["x"]):
        out = encoder.get_image_features(odd)
    assert out.last_hidden_state is odd
    assert cache.stats.as_dict() == {
        "images_seen": 0,
        "images_preprocessed": 0,
        "images_encoded": 4,
        "encoder_calls": 3,
    }
    assert "get_image_features" not in encoder.__dict__


class NoEncoderModel:
    """A stand-in generate-only model without `get_image_features`: replies with a fixed token."""

    name_or_path = "fake"
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self) -> None:
        self.batches: list[int] = []

    def eval(self) -> NoEncoderModel:
        return self

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.batches.append(int(kwargs["image_grid_thw"].shape[0]) if "image_grid_thw" in kwargs else 0)
        return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), 300)], dim=1)


def test_model_without_encoder_hook_is_counted(loaded: tuple[Any, Any]) -> None:
    fake = NoEncoderModel()
    backend = make(loaded, 256, model=fake)
    replies = run(backend, icl_conversations())
    assert len(replies) == 6 and len(set(replies)) == 1
    assert fake.batches == [4, 4, 2]  # the model still gets every image
    assert backend.vision_stats() == {
        "images_seen": 10,
        "images_preprocessed": 3,  # preprocessing is still cached
        "images_encoded": 10,  # not observable: every image counts as encoded
        "encoder_calls": 3,
    }


def test_close_clears_and_size_is_checked(loaded: tuple[Any, Any], tmp_path: Path) -> None:
    backend = make(loaded, 4)
    run(backend, icl_conversations()[:2])
    assert len(backend._vision.images) == len(backend._vision.encoder) == 3
    backend.close()
    assert len(backend._vision.images) == len(backend._vision.encoder) == 0
    assert backend.vision_stats()["images_encoded"] == 3  # counters stay
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="image_cache_size"):
            make(loaded, bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="image_cache_size"):
            HFBackend(str(tmp_path), image_cache_size=bad)  # type: ignore[arg-type]
