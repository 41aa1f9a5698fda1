"""Region VQA from tiny SynthDerm/SynthCXR archives: boxes from the masks (both lungs on the right sides),
balanced yes/no, Chinese prompts, determinism, templates recognised, and the output reads back."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from panderm.data.images import load_mask, mask_to_box
from panderm.data.synthetic.synthcxr import generate_synthcxr
from panderm.data.synthetic.synthderm import generate_synthderm
from panderm.errors import ConfigError, DataError
from panderm.mllm.conversation import Conversation, ImagePart
from panderm.mllm.medrega import read_medrega
from panderm.mllm.region_vqa import (
    CLASS_NAMES,
    PROMPTS,
    YES_NO,
    make_region_vqa,
    match_prompt,
    task_phrase,
    task_phrases,
)
from panderm.mllm.regions import parse_regions
from panderm.mllm.samples import TASKS, VQASample
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def derm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthderm(tmp_path_factory.mktemp("synthderm"), n_patients=12, image_size=64, seed=0)


@pytest.fixture(scope="module")
def cxr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthcxr(tmp_path_factory.mktemp("synthcxr"), n_patients=12, image_size=64, seed=0)


def _build(manifest: Path, out: Path, **kwargs) -> list[VQASample]:
    path = make_region_vqa(manifest, out, **{"split": None, **kwargs})
    assert path == out
    return read_medrega(out, image_root=manifest.parent)


@pytest.fixture(scope="module")
def derm_set(derm: Path, tmp_path_factory: pytest.TempPathFactory) -> list[VQASample]:
    return _build(derm, tmp_path_factory.mktemp("out") / "derm.jsonl")


@pytest.fixture(scope="module")
def cxr_set(cxr: Path, tmp_path_factory: pytest.TempPathFactory) -> list[VQASample]:
    return _build(cxr, tmp_path_factory.mktemp("out") / "cxr.jsonl")


def _rows(manifest: Path) -> dict[str, pd.Series]:
    table = pd.read_csv(manifest)
    return {Path(r["image"]).stem: r for _, r in table.iterrows()}


def _stem(sample: VQASample) -> str:
    return sample.image.stem  # type: ignore[union-attr]


def _close(a, b, tol: float = 1.0) -> bool:
    return bool(np.all(np.abs(np.asarray(a, float) - np.asarray(b, float)) <= tol))


def test_derm_boxes_come_from_the_masks(derm: Path, derm_set: list[VQASample]) -> None:
    rows = _rows(derm)
    t2r = [s for s in derm_set if s.task == "text_to_region"]
    assert len(t2r) == 2 * len(rows)  # every image, both languages
    for sample in t2r:
        row = rows[_stem(sample)]
        truth = mask_to_box(load_mask(derm.parent / row["mask"]))
        assert sample.meta["box"] == list(truth)
        parsed = parse_regions(sample.answer, sample.width, sample.height)
        assert [p for p, _ in parsed] == [sample.meta["phrase"]] == [task_phrase(sample)]
        assert _close(parsed.boxes()[0], truth)  # MedRegA's 0-999 grid loses under a pixel
        assert (sample.width, sample.height) == Image.open(sample.image).size
    for sample in (s for s in derm_set if s.task == "region_to_text"):
        row = rows[_stem(sample)]
        question = sample.conversation.turns[-1].text
        assert _close(parse_regions(question, sample.width, sample.height).boxes()[0], sample.meta["box"])
        assert sample.answer == CLASS_NAMES["synthderm"][sample.language][row["label"]]


def test_cxr_both_lungs_on_the_correct_sides(cxr: Path, cxr_set: list[VQASample]) -> None:
    rows = _rows(cxr)
    reports = [s for s in cxr_set if s.task == "grounded_report" and s.language == "en"]
    assert len(reports) == len(rows)
    for sample in reports:
        mask = load_mask(cxr.parent / rows[_stem(sample)]["mask"])
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        assert n == 2
        parsed = parse_regions(sample.answer, sample.width, sample.height)
        assert [p for p, _ in parsed] == ["right lung", "left lung"] == task_phrases(sample)
        (right,), (left,) = (boxes for _, boxes in parsed)
        # PA film: the patient's right lung lies on the image's left.
        assert (right[0] + right[2]) / 2 < sample.width / 2 < (left[0] + left[2]) / 2
        truth = sorted((mask_to_box(labels == i) for i in (1, 2)), key=lambda b: b[0])
        assert _close(right, truth[0]) and _close(left, truth[1])
        assert sample.answer.split(": ", 1)[1].startswith(CLASS_NAMES["synthcxr"]["en"][sample.meta["label"]])
    by_phrase = Counter(s.meta["phrase"] for s in cxr_set if s.task in ("text_to_region", "region_to_text"))
    assert by_phrase == {p: 2 * len(rows) for p in ("right lung", "left lung", "右肺", "左肺")}
    for sample in (s for s in cxr_set if s.task == "region_to_text"):
        assert sample.answer == sample.meta["phrase"]


@pytest.mark.parametrize("which", ["derm_set", "cxr_set"])
def test_yes_no_balanced_and_consistent(which: str, request: pytest.FixtureRequest) -> None:
    samples = request.getfixturevalue(which)
    for lang in ("en", "zh"):
        vqa = [s for s in samples if s.task == "vqa" and s.language == lang]
        counts = Counter(s.answer for s in vqa)
        assert set(counts) == set(YES_NO[lang])
        assert abs(counts[YES_NO[lang][0]] - counts[YES_NO[lang][1]]) <= 1
        for s in vqa:
            assert s.meta["expected"] == (s.meta["candidate"] == s.meta["label"])
            assert s.answer == YES_NO[lang][0 if s.meta["expected"] else 1]
    en = [s.meta["candidate"] for s in samples if s.task == "vqa" and s.language == "en"]
    zh = [s.meta["candidate"] for s in samples if s.task == "vqa" and s.language == "zh"]
    assert en == zh  # both languages ask the same questions


@pytest.mark.parametrize("which", ["derm_set", "cxr_set"])
def test_prompts_per_language_and_recognised(which: str, request: pytest.FixtureRequest) -> None:
    samples = request.getfixturevalue(which)
    assert {s.task for s in samples} == set(TASKS)
    for s in samples:
        question = s.conversation.turns[-1].text
        found = match_prompt(question)
        assert found is not None and (found.task, found.language) == (s.task, s.language), question
        has_cjk = any("\u4e00" <= c <= "\u9fff" for c in question)
        assert has_cjk == (s.language == "zh")
        assert isinstance(s.conversation.turns[-1].parts[0], ImagePart)
    classify = next(s for s in samples if s.task == "classify" and s.language == "zh")
    assert match_prompt(classify.conversation.turns[-1].text).fields["classes"] == "、".join(  # type: ignore[union-attr]
        classify.meta["classes"]
    )
    assert classify.answer in classify.meta["classes"]


def test_output_reads_back_with_relative_images(cxr: Path, cxr_set: list[VQASample], tmp_path: Path) -> None:
    out = make_region_vqa(cxr, tmp_path / "a.jsonl", split=None)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert all(r["image"].startswith("images/") and r["width"] == r["height"] == 64 for r in records)
    assert all("task" not in r for r in records)  # every template gives its task back by inference
    assert all(s.image.is_file() for s in cxr_set)  # type: ignore[union-attr]
    assert cxr_set[0].conversation.images()[0].bytes()[:4] == b"\x89PNG"


def test_deterministic_for_a_seed(derm: Path, tmp_path: Path) -> None:
    a = make_region_vqa(derm, tmp_path / "a.jsonl", split=None, seed=3)
    b = make_region_vqa(derm, tmp_path / "b.jsonl", split=None, seed=3)
    c = make_region_vqa(derm, tmp_path / "c.jsonl", split=None, seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_split_tasks_languages_and_limit(derm: Path, tmp_path: Path) -> None:
    table = pd.read_csv(derm)
    samples = _build(derm, tmp_path / "t.jsonl", split="test")
    assert {_stem(s) for s in samples} == {Path(p).stem for p in table.loc[table["split"] == "test", "image"]}
    small = _build(derm, tmp_path / "s.jsonl", tasks=("classify", "vqa"), languages=("zh",), limit=3)
    assert len(small) == 6 and {s.task for s in small} == {"classify", "vqa"}
    assert {s.language for s in small} == {"zh"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tasks": ("detect",)}, "tasks"),
        ({"languages": ("fr",)}, "languages"),
        ({"limit": 0}, "limit"),
        ({"split": "holdout"}, "split='holdout'"),
    ],
)
def test_bad_arguments(derm: Path, tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_region_vqa(derm, tmp_path / "x.jsonl", **kwargs)


def test_unknown_manifest_and_broken_lung_mask(cxr: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    pd.DataFrame({"image": ["a.png"], "split": ["test"], "label": ["x"], "mask": ["m.png"]}).to_csv(other)
    with pytest.raises(ConfigError, match="not a SynthDerm or SynthCXR"):
        make_region_vqa(other, tmp_path / "x.jsonl")
    copy = Path(shutil.copytree(cxr.parent, tmp_path / "cxr"))
    table = pd.read_csv(copy / "manifest.csv")
    one_blob = np.zeros((64, 64), np.uint8)
    one_blob[10:50, 10:50] = 255
    Image.fromarray(one_blob).save(copy / table["mask"][1])
    (copy / table["mask"][3]).unlink()
    with pytest.raises(DataError) as info:
        make_region_vqa(copy / "manifest.csv", tmp_path / "y.jsonl", split=None)
    message = str(info.value)
    assert "2 problem(s)" in message
    assert f"row 2 ({table['image'][1]}): lung mask has 1 lung-sized" in message
    assert f"row 4 ({table['image'][3]})" in message


def test_match_prompt_and_task_phrases_on_foreign_text() -> None:
    assert match_prompt("What is this?") is None
    question = PROMPTS["en"]["text_to_region"].format(phrase="mole", image_kind="clinical photograph")
    found = match_prompt(question)
    assert found is not None and found.fields == {"phrase": "mole", "image_kind": "clinical photograph"}
    sample = VQASample("q", Conversation.user(question), "a", "text_to_region")
    assert task_phrases(sample) == ["mole"]
    none = VQASample("n", Conversation.user("What is <ref>this</ref><box>[[1, 2, 3, 4]]</box>?"), "x", "vqa")
    assert task_phrase(none) is None


@pytest.mark.shared_data
def test_task_phrases_of_the_medrega_demo() -> None:
    samples = read_medrega(shared_path("medrega_demo", "data_file.jsonl"))
    assert task_phrases(samples[7]) == []  # "<ref>this</ref>" is the asked-about box, not a phrase
    assert task_phrases(samples[8]) == ["carotid vessel wall"]
    assert task_phrases(samples[9]) == ["right lung", "left lung"]
    assert task_phrases(samples[10]) == ["胰腺癌"]
