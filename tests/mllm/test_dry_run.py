"""`--dry-run` of `panderm vqa` and `panderm icl`: requests rendered, checked, keyed, counted, none sent."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import transformers
from PIL import Image

from panderm.cli import main
from panderm.data.synthetic.synthderm import generate_synthderm
from panderm.errors import ConfigError
from panderm.mllm.backends.openai_api import OpenAIBackend
from panderm.mllm.cache import ResponseCache, cache_record
from panderm.mllm.conversation import Conversation, ImagePart
from panderm.mllm.dry_run import UnloadedHF, dry_run, offline_backend
from panderm.mllm.region_vqa import make_region_vqa
from panderm.mllm.requests import backend_key
from panderm.mllm.tiny import build_tiny_qwen2_vl


def png(width: int, height: int, value: int) -> ImagePart:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(buffer, format="PNG")
    return ImagePart(data=buffer.getvalue())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny") / "qwen"))


@pytest.fixture(scope="module")
def vqa_set(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("vqa")
    manifest = generate_synthderm(folder / "synthderm", n_patients=6, image_size=48, seed=0)
    return {"set": make_region_vqa(manifest, folder / "set.jsonl", seed=0), "root": manifest.parent}


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def forbid_weights(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run loaded model weights")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", refuse)


def test_openai_dry_run_sends_nothing_and_counts_by_hand(chat_server, tmp_path, capsys):
    backend = OpenAIBackend("served", base_url=chat_server.base_url, api_key_env=None, adapter="openai")
    a, b = png(8, 8, 10), png(6, 4, 200)
    requests = [
        ("q1", Conversation.user(a, "What is it?")),  # 11 characters, 1 image
        ("q2", Conversation.system("Be brief.").user(a, b, "Compare.")),  # 9 + 8 characters, 2 images
        ("q3", Conversation.user(a, "What is it?")),  # the same request as q1
    ]
    cache_path = tmp_path / "responses.jsonl"
    with ResponseCache(cache_path) as cache:  # q2 answered by an earlier run
        key = backend_key(backend, backend.render(requests[1][1]))
        cache.put(cache_record(key, {}, "ok", "a reply", None, 1))
    totals = dry_run(backend, requests, cache_path, tmp_path)
    assert chat_server.requests == []
    expected = {
        "backend": "openai",
        "model": "served",
        "requests": 3,
        "unique_requests": 2,
        "cached": 1,
        "to_send": 1,
        "images": 4,
        "text_chars": 11 + 17 + 11,
        "tokens": None,
        "cache": str(cache_path),
    }
    assert totals == expected == json.loads((tmp_path / "dry_run.json").read_text())
    lines = read_lines(tmp_path / "dry_run.jsonl")
    assert [(x["id"], x["images"], x["text_chars"], x["cached"]) for x in lines] == [
        ("q1", 1, 11, False),
        ("q2", 2, 17, True),
        ("q3", 1, 11, False),
    ]
    assert lines[0]["key"] == lines[2]["key"] == backend_key(backend, backend.render(requests[0][1]))
    assert {x["tokens"] for x in lines} == {None} and {x["prompt"] for x in lines} == {None}
    assert "3 requests, 2 unique, 1 already cached, 1 to send" in capsys.readouterr().out


def processor_count(model: str, messages: list[dict], images: list[Image.Image]) -> tuple[str, int]:
    """The prompt and token count straight from the processor (images included)."""
    processor = transformers.AutoProcessor.from_pretrained(model)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[images] if images else None)
    return text, len(inputs["input_ids"][0])


def test_hf_dry_run_counts_with_the_processor_and_never_loads_weights(tiny, tmp_path, monkeypatch):
    forbid_weights(monkeypatch)
    backend = offline_backend("hf", model=tiny, batch_size=2)
    assert isinstance(backend, UnloadedHF) and backend.adapter.name == "qwen2_vl"
    image = png(56, 28, 90)
    requests = [("plain", Conversation.user("What?")), ("image", Conversation.user("What?", image))]
    totals = dry_run(backend, requests, tmp_path / "responses.jsonl", tmp_path)
    system = {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]}
    plain = processor_count(
        tiny, [system, {"role": "user", "content": [{"type": "text", "text": "What?"}]}], []
    )
    with_image = processor_count(
        tiny,
        [system, {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
        [Image.open(io.BytesIO(image.bytes())).convert("RGB")],
    )
    lines = read_lines(tmp_path / "dry_run.jsonl")
    assert [(x["prompt"], x["tokens"]) for x in lines] == [plain, with_image]
    assert with_image[1] > plain[1]  # the same text: the image's tokens are counted
    assert totals["tokens"] == {
        "min": plain[1],
        "mean": round((plain[1] + with_image[1]) / 2, 2),
        "max": with_image[1],
        "total": plain[1] + with_image[1],
    }
    assert totals["text_chars"] == 2 * len("You are a helpful assistant.") + 2 * len("What?")
    # the keys are a real hf backend's, so "already cached" means what a real run would find
    monkeypatch.undo()
    from panderm.mllm.backends.hf import HFBackend

    real = HFBackend(tiny, batch_size=2)
    assert real.identity() == backend.identity()
    assert [x["key"] for x in lines] == [backend_key(real, real.render(c)) for _, c in requests]
    real.close()


def test_an_hf_option_the_backend_does_not_take_is_refused(tiny):
    with pytest.raises(TypeError, match="base_url"):
        offline_backend("hf", model=tiny, base_url="http://x")


def vqa_args(chat_server, vqa_set, run, *extra: str) -> list[str]:
    return [
        "vqa",
        "backend=openai",
        "backend.model=served-model",
        f"backend.options.base_url={chat_server.base_url}",
        "backend.options.api_key_env=null",
        f"data={vqa_set['set']}",
        f"image_root={vqa_set['root']}",
        "progress=false",
        f"hydra.run.dir={run}",
        *extra,
    ]


def test_vqa_dry_run_flag_sends_nothing_and_knows_what_is_cached(chat_server, vqa_set, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(vqa_args(chat_server, vqa_set, run, "limit=3", "shown=0")) == 0  # a real run: 3 answers
    assert len(chat_server.requests) == 3
    assert main(vqa_args(chat_server, vqa_set, run, "limit=5", "--dry-run")) == 0
    assert len(chat_server.requests) == 3  # the dry run sent nothing
    totals = json.loads((run / "dry_run.json").read_text())
    lines = read_lines(run / "dry_run.jsonl")
    assert (totals["requests"], totals["unique_requests"], totals["cached"], totals["to_send"]) == (
        5,
        5,
        3,
        2,
    )
    assert [x["cached"] for x in lines] == [True, True, True, False, False]
    assert totals["images"] == sum(x["images"] for x in lines) == 5  # one image per sample
    assert "Nothing was sent" in capsys.readouterr().out


def test_icl_dry_run_counts_tokens_with_a_local_tokenizer(chat_server, tiny, tmp_path, monkeypatch):
    forbid_weights(monkeypatch)
    run = tmp_path / "run"
    args = [
        "icl",
        "--dry-run",
        "backend=openai",
        "backend.model=served-model",
        f"backend.options.base_url={chat_server.base_url}",
        "backend.options.api_key_env=null",
        f"dry_run_tokenizer={tiny}",
        "synth.n_patients=8",
        "synth.image_size=32",
        "n_problems=3",
        "strategy=original",
        "progress=false",
        f"hydra.run.dir={run}",
    ]
    assert main(args) == 0
    assert chat_server.requests == [] and not (run / "results.csv").exists()
    totals = json.loads((run / "dry_run.json").read_text())
    lines = read_lines(run / "dry_run.jsonl")
    assert totals["requests"] == len(lines) == 3
    tokens = [x["tokens"] for x in lines]
    assert all(isinstance(t, int) and t > 0 for t in tokens) and totals["tokens"]["total"] == sum(tokens)
    assert all(x["prompt"].count("<|image_pad|>") >= x["images"] for x in lines)


def test_max_images_fails_the_dry_run_as_it_fails_the_run(chat_server, vqa_set, tmp_path, capsys):
    conv = Conversation.user(png(4, 4, 1), png(4, 4, 2), "two")
    backend = OpenAIBackend("m", base_url=chat_server.base_url, api_key_env=None, max_images=1)
    with pytest.raises(ConfigError, match="2 images, more than max_images=1"):
        dry_run(backend, [("a", conv)], tmp_path / "c.jsonl", tmp_path)
    assert chat_server.requests == [] and not (tmp_path / "dry_run.json").exists()
