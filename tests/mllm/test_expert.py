"""The expert backend: our classifier and segmenter answering region-VQA prompts, no LLM."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from panderm.errors import BackendError, ConfigError
from panderm.mllm.backends import build_backend
from panderm.mllm.conversation import Conversation, ImagePart
from panderm.mllm.region_vqa import PROMPTS
from panderm.mllm.regions import parse_regions
from tests.mllm.helpers import constant_classifier, everywhere_segmenter


def png(width: int = 48, height: int = 40) -> ImagePart:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(buf, format="PNG")
    return ImagePart(data=buf.getvalue())


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("expert")
    return build_backend(
        "expert",
        classifier=constant_classifier(folder / "clf"),
        segmenter=everywhere_segmenter(folder / "seg"),
        device="cpu",
    )


def ask(backend, text: str, image: ImagePart | None = None) -> str:
    return backend.generate([Conversation.user(image or png(), text)])[0]


def test_classification_and_closed_questions_in_both_languages(expert):
    en, zh = PROMPTS["en"], PROMPTS["zh"]
    classes = "nevus, melanoma, seborrheic keratosis, basal cell carcinoma"
    assert ask(expert, en["classify"].format(image_kind="dermoscopy image", classes=classes)) == "melanoma"
    assert ask(expert, zh["classify"].format(image_kind="皮肤镜图像", classes="痣、黑色素瘤")) == "黑色素瘤"
    vqa = en["vqa"].format(image_kind="dermoscopy image", candidate="{}")
    assert ask(expert, vqa.format("a melanoma")) == "yes"
    assert ask(expert, vqa.format("a basal cell carcinoma")) == "no"
    assert ask(expert, zh["vqa"].format(image_kind="皮肤镜图像", candidate="痣")) == "否"
    assert ask(expert, zh["vqa"].format(image_kind="皮肤镜图像", candidate="黑色素瘤")) == "是"


def test_text_to_region_gives_the_mask_component_boxes(expert):
    question = PROMPTS["en"]["text_to_region"].format(phrase="lesion", image_kind="dermoscopy image")
    reply = ask(expert, question, png(48, 40))
    assert reply == "<ref>lesion</ref><box>[[0, 0, 999, 999]]</box>"  # the mask covers the whole image
    assert parse_regions(reply, 48, 40)[0][1] == [[0.0, 0.0, 48.0, 40.0]]
    report = ask(expert, PROMPTS["en"]["grounded_report"].format(targets="the lesion", image_kind="image"))
    assert report.startswith("<ref>lesion</ref><box>[[0, 0, 999, 999]]</box>: melanoma")


def test_each_model_runs_once_per_image(tmp_path, monkeypatch):
    backend = build_backend(
        "expert",
        classifier=constant_classifier(tmp_path / "clf"),
        segmenter=everywhere_segmenter(tmp_path / "seg"),
        device="cpu",
        memo_images=2,
    )
    calls = {"classifier": 0, "segmenter": 0}
    for name in calls:
        model = getattr(backend, name)
        forward = model.forward

        def counted(x, _name=name, _forward=forward):
            calls[_name] += 1
            return _forward(x)

        monkeypatch.setattr(model, "forward", counted)
    report = PROMPTS["en"]["grounded_report"].format(targets="the lesion", image_kind="image")
    classify = PROMPTS["en"]["classify"].format(image_kind="image", classes="nevus, melanoma")
    first, second, third = png(48, 40), png(40, 48), png(32, 32)
    answers = [ask(backend, q, first) for q in (report, classify, report)]
    assert answers[0] == answers[2] and calls == {"classifier": 1, "segmenter": 1}
    ask(backend, report, second)
    assert calls == {"classifier": 2, "segmenter": 2}  # other pixels: both models run again
    ask(backend, report, third)  # a third image: the first is forgotten (memo_images=2)
    ask(backend, report, first)
    assert calls == {"classifier": 4, "segmenter": 4}


def test_mask_boxes_split_components_drop_specks_and_sort_by_area(expert):
    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:30] = True  # 200 px
    mask[50:90, 40:80] = True  # 1600 px
    mask[0, 99] = True  # 1 px < 0.002 * 10000
    assert expert.mask_boxes(mask) == [[40, 50, 80, 90], [10, 10, 30, 20]]
    assert expert.mask_boxes(np.zeros((8, 8), bool)) == []


def test_cache_identity_names_the_weights_and_bad_setups_are_errors(expert, tmp_path):
    assert expert.model.startswith("expert(classifier=") and "segmenter=" in expert.model
    with pytest.raises(ConfigError, match="classifier=<saved probe>"):
        build_backend("expert")
    only_classifier = build_backend("expert", classifier=constant_classifier(tmp_path / "c"), device="cpu")
    with pytest.raises(BackendError, match="needs a segmenter"):
        ask(only_classifier, PROMPTS["en"]["text_to_region"].format(phrase="lesion", image_kind="image"))
    with pytest.raises(ConfigError, match="text_to_region needs segmenter"):
        build_backend("expert", classifier=tmp_path / "c.safetensors", task="text_to_region")
    with pytest.raises(BackendError, match="no image"):
        expert.generate([Conversation.user("what is this?")])
