"""Adapter choice by the model's own config.json (model_type, architectures), the model name as fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panderm.errors import ConfigError
from panderm.mllm.adapters import ADAPTERS, adapter_for, config_family
from panderm.mllm.conversation import Conversation, ImagePart

# (config.json of a real checkpoint of the family, reduced to the keys that matter) -> adapter
FAMILIES = [
    ({"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}, "qwen2_vl"),
    ({"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"]}, "qwen2_vl"),
    ({"model_type": "qwen3_vl", "architectures": ["Qwen3VLForConditionalGeneration"]}, "qwen2_vl"),
    ({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}, "llava"),
    ({"model_type": "llava_onevision", "architectures": ["LlavaOnevisionForConditionalGeneration"]}, "llava"),
    ({"model_type": "llava_next", "architectures": ["LlavaNextForConditionalGeneration"]}, "llava"),
    ({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]}, "gemma3"),
    ({"model_type": "internvl_chat", "architectures": ["InternVLChatModel"]}, "internvl"),
    ({"model_type": "internvl", "architectures": ["InternVLForConditionalGeneration"]}, "internvl"),
    ({"model_type": "paligemma", "architectures": ["PaliGemmaForConditionalGeneration"]}, "paligemma"),
    ({"model_type": "idefics3", "architectures": ["Idefics3ForConditionalGeneration"]}, "smolvlm"),
    ({"model_type": "smolvlm", "architectures": ["SmolVLMForConditionalGeneration"]}, "smolvlm"),
    ({"model_type": "mllama", "architectures": ["MllamaForConditionalGeneration"]}, "mllama"),
]


def checkpoint(root: Path, config: object, name: str = "checkpoint-1000") -> str:
    """A folder holding only a config.json, named as a trainer names its checkpoints."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize(("config", "family"), FAMILIES)
def test_every_known_family_is_found_in_its_config_json(tmp_path, config, family):
    assert adapter_for(checkpoint(tmp_path, config)) is ADAPTERS[family]
    # either key alone suffices: remote-code configs may name an architecture only
    assert adapter_for(checkpoint(tmp_path / "t", {"model_type": config["model_type"]})).name == family
    assert adapter_for(checkpoint(tmp_path / "a", {"architectures": config["architectures"]})).name == family
    assert config_family(config) == family


def test_config_wins_over_the_folder_name_and_the_name_is_only_a_fallback(tmp_path):
    qwen = {"model_type": "qwen2_vl"}
    assert adapter_for(checkpoint(tmp_path, qwen, "llava-finetune")).name == "qwen2_vl"
    # a config naming no known family (or none at all) leaves the choice to the name, as before
    assert adapter_for(checkpoint(tmp_path, {"model_type": "bert"}, "my-llava-run")).name == "llava"
    assert adapter_for(checkpoint(tmp_path, {"model_type": "bert"}, "checkpoint-7")).name == "as_given"
    (tmp_path / "qwen-empty").mkdir()
    assert adapter_for(str(tmp_path / "qwen-empty")).name == "qwen2_vl"
    assert adapter_for("Qwen/Qwen2-VL-2B-Instruct").name == "qwen2_vl"  # a hub id: not read, not downloaded
    assert adapter_for("gpt-4o").name == "openai" and adapter_for("").name == "as_given"
    # a loaded model's config, given as a mapping, decides without any file
    assert adapter_for("tiny", config={"model_type": "gemma3"}).name == "gemma3"
    # a named adapter is never second-guessed
    assert adapter_for(checkpoint(tmp_path, qwen, "named"), "medgemma").name == "medgemma"


def test_fine_tunes_that_keep_their_base_config_are_told_apart_by_name(tmp_path):
    gemma = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]}
    assert adapter_for(checkpoint(tmp_path, gemma, "medgemma-4b-it")).name == "medgemma"
    assert adapter_for(checkpoint(tmp_path, gemma, "gemma-3-4b-it")).name == "gemma3"
    internvl = {"model_type": "internvl_chat"}
    assert adapter_for(checkpoint(tmp_path, internvl, "MedRegA")).name == "medrega"
    assert adapter_for(checkpoint(tmp_path, internvl, "InternVL2-8B")).name == "internvl"
    # the name refines only within the config's family: a Qwen config stays Qwen whatever the folder says
    assert adapter_for(checkpoint(tmp_path, {"model_type": "qwen2_vl"}, "medgemma-ft")).name == "qwen2_vl"
    assert adapter_for("google/medgemma-4b-it").name == "medgemma"
    assert adapter_for("google/paligemma2-3b-mix-224").name == "paligemma"


def test_a_checkpoint_prompted_by_its_config_puts_the_image_first(tmp_path):
    conv = Conversation.user("question", ImagePart(data=b"\x89PNG-a"))
    rendered = adapter_for(checkpoint(tmp_path, {"model_type": "qwen2_5_vl"})).apply(conv)
    assert [t.role for t in rendered.turns] == ["system", "user"]
    assert isinstance(rendered.turns[1].parts[0], ImagePart)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\udcff"])
def test_an_unreadable_config_json_is_named(tmp_path, text):
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError, match=r"checkpoint-3/config\.json"):
        adapter_for(str(folder))
