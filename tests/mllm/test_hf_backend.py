"""HFBackend on a tiny random Qwen2-VL built offline (panderm.mllm.tiny)."""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panderm.errors import BackendError, DataError
from panderm.mllm.backends import build_backend
from panderm.mllm.backends.base import GenerationSettings
from panderm.mllm.backends.hf import HFBackend, decode_replies, dropped_special_ids, prompt_text
from panderm.mllm.cache import ResponseCache
from panderm.mllm.conversation import Conversation, ImagePart
from panderm.mllm.requests import run_requests
from panderm.mllm.tiny import build_tiny_qwen2_vl

VISION = "<|vision_start|><|image_pad|><|vision_end|>"
SHORT = GenerationSettings(max_new_tokens=6)


def png(seed: int, size: tuple[int, int] = (64, 64)) -> ImagePart:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return ImagePart(data=buffer.getvalue())


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"))


@pytest.fixture(scope="module")
def backend(tiny_path: Path) -> HFBackend:
    return HFBackend(str(tiny_path), adapter="qwen2_vl", batch_size=3, settings=SHORT)


def conversations() -> list[Conversation]:
    """Different lengths, images, image sizes and turn counts; one without an image."""
    return [
        Conversation.user("Is this melanoma?", png(0)),
        Conversation.user(png(1, (64, 96)), "Describe the colour, shape and border of the lesion.", png(2)),
        Conversation.user("Benign or malignant?"),
        Conversation.user("Options: A. nevus B. melanoma", png(3)).assistant("A").user("And this?", png(4)),
        Conversation.user("Is this melanoma?", png(5)),
    ]


def test_batched_replies_equal_one_by_one(backend: HFBackend) -> None:
    rendered = [backend.render(c) for c in conversations()]
    lengths = {len(backend.processor.tokenizer(backend.prompt_text(c))["input_ids"]) for c in rendered}
    assert len(lengths) > 1  # the batch really needs padding
    batched = backend.generate(rendered)
    single = [backend.generate([c])[0] for c in rendered]
    assert batched == single
    assert all(batched) and len(set(batched)) == len(batched)  # replies depend on the input


def test_greedy_and_seeded_sampling_are_reproducible(tiny_path: Path) -> None:
    replies = {}
    for seed in (None, 7, 8):
        settings = SHORT if seed is None else GenerationSettings(max_new_tokens=6, temperature=1.5, seed=seed)
        first, second = (HFBackend(str(tiny_path), settings=settings, batch_size=2) for _ in range(2))
        rendered = [first.render(c) for c in conversations()[:3]]
        torch.manual_seed(1)  # the global RNG state must not matter
        replies[seed] = first.generate(rendered)
        torch.manual_seed(2)
        assert replies[seed] == second.generate(rendered)
    assert len({tuple(r) for r in replies.values()}) == 3  # sampling samples, and by its own seed


def test_prompt_follows_adapter(backend: HFBackend) -> None:
    conv = Conversation.user("What is this?", png(0))
    prompt = backend.prompt_text(backend.render(conv))
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{VISION}What is this?<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = backend.processor(text=[prompt], images=[backend._image(conv.images()[0])])
    tokens = backend.processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    image_positions = [i for i, t in enumerate(tokens) if t == "<|image_pad|>"]
    question = backend.processor.tokenizer.tokenize("What")[0]
    assert len(image_positions) == 4  # 64x64 -> 56x56 -> 2x2 merged patches
    assert max(image_positions) < tokens.index(question)
    text_first = HFBackend.from_pretrained_objects(
        backend._model, backend.processor, name="tiny", adapter="medgemma"
    )
    assert f"What is this?{VISION}<|im_end|>" in text_first.prompt_text(text_first.render(conv))


def test_multi_turn_with_assistant_examples(backend: HFBackend) -> None:
    last = Conversation.user("And this one?", png(4))
    history = (
        Conversation.system("Answer A or B.")
        .user(png(3), "Options: A. nevus B. melanoma")
        .assistant("A")
        .add("user", *last.turns[0].parts)
    )
    prompt = backend.prompt_text(backend.render(history))
    assert prompt.startswith("<|im_start|>system\nAnswer A or B.<|im_end|>\n")
    assert prompt.count(VISION) == 2
    assert "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\n" in prompt
    assert prompt.endswith("And this one?<|im_end|>\n<|im_start|>assistant\n")
    with_history, alone = backend.generate([backend.render(history), backend.render(last)])
    assert with_history and with_history != alone


def test_run_requests_second_run_is_all_cache_hits(
    backend: HFBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    generate = backend.generate
    monkeypatch.setattr(backend, "generate", lambda convs: calls.append(len(convs)) or generate(convs))
    convs = conversations()
    with ResponseCache(tmp_path / "cache.jsonl") as cache:
        first = run_requests(backend, convs, cache)
    assert sum(calls) == len(convs) and not any(r.cached for r in first)
    calls.clear()
    with ResponseCache(tmp_path / "cache.jsonl") as cache:
        second = run_requests(backend, convs, cache)
    assert calls == []
    assert all(r.cached for r in second)
    assert [r.response for r in second] == [r.response for r in first]
    assert all(r.status == "ok" for r in first)


def test_each_image_is_decoded_once(backend: HFBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(1) or real_open(fp, *a, **k))
    backend._images.clear()
    shared = png(11).data
    convs = [Conversation.user(f"Question {i}?", ImagePart(data=shared)) for i in range(3)]
    backend.generate([backend.render(c) for c in convs])
    assert len(opened) == 1


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_bad_model_path_names_it(tmp_path: Path, where: str) -> None:
    path = tmp_path / "no" / "model" if where == "missing" else tmp_path
    with pytest.raises(BackendError, match=re.escape(str(path))):
        HFBackend(str(path))


def test_corrupt_image_names_it(backend: HFBackend, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken\.png"):
        backend.generate([backend.render(Conversation.user("What is this?", ImagePart(path=bad)))])


def test_registry_builds_hf_backend(tiny_path: Path, backend: HFBackend) -> None:
    built = build_backend("hf", model=str(tiny_path), settings=SHORT, dtype="float32")
    assert isinstance(built, HFBackend)
    assert built.adapter.name == "qwen2_vl"  # picked from the folder's config.json
    assert built.identity() == backend.identity()
    assert built.identity()["dtype"] == "float32"
    conv = built.render(conversations()[0])
    assert built.generate([conv]) == backend.generate([conv])
    built.close()
    with pytest.raises(BackendError, match="closed"):
        built.generate([conv])


def test_tiny_model_is_deterministic_for_a_seed(tmp_path: Path, tiny_path: Path) -> None:
    def files(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    same = files(build_tiny_qwen2_vl(tmp_path / "again", seed=0))
    other = files(build_tiny_qwen2_vl(tmp_path / "other", seed=1))
    reference = files(tiny_path)
    assert same == reference
    assert {name for name in reference if other[name] != reference[name]} == {"model.safetensors"}


def test_adapter_comes_from_the_config_not_the_folder_name(tiny_path: Path, tmp_path: Path) -> None:
    """A fine-tuned Qwen2-VL saved as checkpoint-1000 (no family in its path) is still prompted as Qwen."""
    renamed = tmp_path / "run" / "checkpoint-1000"
    renamed.parent.mkdir()
    renamed.symlink_to(tiny_path, target_is_directory=True)
    built = HFBackend(str(renamed), settings=SHORT)
    assert built.adapter.name == "qwen2_vl"
    conv = Conversation.user("What is this?", png(0))
    prompt = built.prompt_text(built.render(conv))
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.")
    loaded = HFBackend.from_pretrained_objects(built._model, built.processor, name="checkpoint-1000")
    assert loaded.adapter.name == "qwen2_vl"  # from the loaded model's config
    built.close()


def test_a_processor_without_chat_template_gets_the_plain_prompt(backend: HFBackend) -> None:
    plain = copy.copy(backend.processor)
    plain.chat_template = None  # as PaliGemma's processor: image tokens first, then one line per turn
    conv = Conversation.user("Options: A. nevus B. melanoma", png(3)).assistant("A").user("And this?", png(4))
    text = prompt_text(plain, conv)
    assert text == "<|image_pad|><|image_pad|>Options: A. nevus B. melanoma\nA\nAnd this?"
    assert prompt_text(backend.processor, conv) == backend.prompt_text(conv) != text
    plain.image_token = None
    with pytest.raises(ValueError, match="neither a chat template nor an image token"):
        prompt_text(plain, conv)
    assert prompt_text(plain, Conversation.user("text only")) == "text only"


def test_replies_keep_region_tokens_and_drop_other_special_tokens(backend: HFBackend) -> None:
    tokenizer = copy.deepcopy(backend.processor.tokenizer)
    region = ["<|box_start|>", "<|box_end|>", "<loc0256>", "<|object_ref_start|>", "<|object_ref_end|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": region})
    reply = "<|object_ref_start|>lesion<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|> <loc0256>"
    ids = tokenizer(reply + "<|im_end|><|endoftext|>")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "lesion(10,20),(30,40)"  # why: all gone
    dropped = dropped_special_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in dropped
    assert not {tokenizer.convert_tokens_to_ids(t) for t in region} & dropped
    padded = torch.tensor([ids, [tokenizer.pad_token_id] * (len(ids) - 1) + [ids[0]]])
    assert decode_replies(tokenizer, padded, dropped) == [reply, tokenizer.decode([ids[0]])]
