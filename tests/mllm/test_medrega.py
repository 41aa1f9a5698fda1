"""MedRegA JSONL: the shared demo file loads with the right tasks and round-trips; bad files list every
problem with its line; task inference on English and Chinese prompts; export of hand-built samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panderm.errors import ConfigError, DataError, ManifestError
from panderm.mllm.conversation import Conversation, ImagePart, TextPart
from panderm.mllm.medrega import MEDREGA_META, infer_language, infer_task, read_medrega, write_medrega
from panderm.mllm.regions import parse_regions
from panderm.mllm.samples import VQASample
from tests.conftest import shared_path

# Read by hand from medrega_demo/data_file.jsonl (ids 0-10, in file order).
DEMO_TASKS = [
    "vqa",  # 0 what does this image show
    "vqa",  # 1 what is present
    "vqa",  # 2 (zh) which body part
    "vqa",  # 3 (zh) imaging modality
    "grounded_report",  # 4 chest x-ray report generation, no boxes
    "grounded_report",  # 5 (zh) 诊断报告
    "classify",  # 6 OCT, possible diagnoses listed
    "region_to_text",  # 7 object recognition of a given box
    "text_to_region",  # 8 object detection: locate the carotid vessel wall
    "grounded_report",  # 9 report phrase grounding of both lungs
    "grounded_report",  # 10 (zh) 定位并描述 pancreatic cancer
]
DEMO_CHINESE = {"2", "3", "5", "10"}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n",
        encoding="utf-8",
    )
    return path


def _record(i: int = 0, question: str = "<image>\nWhat is this?", answer: str = "a nevus", **extra) -> dict:
    return {
        "id": i,
        "image": "img.png",
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        **extra,
    }


@pytest.fixture
def demo() -> Path:
    return shared_path("medrega_demo", "data_file.jsonl")


@pytest.mark.shared_data
def test_demo_tasks_languages_and_structure(demo: Path) -> None:
    samples = read_medrega(demo)
    assert [s.id for s in samples] == [str(i) for i in range(11)]
    assert [s.task for s in samples] == DEMO_TASKS
    assert {s.id for s in samples if s.language == "zh"} == DEMO_CHINESE
    assert all(s.language == "en" for s in samples if s.id not in DEMO_CHINESE)
    first = samples[0]
    assert first.image == demo.parent / "demo_data" / "images" / "demo_01.jpg"  # resolved, never read
    (turn,) = first.conversation.turns
    assert turn.role == "user" and [type(p) for p in turn.parts] == [TextPart, ImagePart, TextPart]
    assert turn.parts[1].path == first.image
    assert turn.parts[2].text.startswith("What does this image show?")  # the newline after <image> dropped
    assert first.answer == "heart" and first.width is None
    assert [(s.width, s.height) for s in samples[7:9]] == [(512, 512), (432, 432)]
    boxes = parse_regions(samples[8].answer, samples[8].width, samples[8].height).boxes()
    assert boxes.shape == (2, 4)


@pytest.mark.shared_data
def test_demo_round_trip_is_lossless(demo: Path, tmp_path: Path) -> None:
    out = write_medrega(read_medrega(demo), tmp_path / "out.jsonl", image_root=demo.parent)
    original, written = _lines(demo), _lines(out)
    assert written == original  # JSON-equal record for record, int ids stay ints
    assert [type(r["id"]) for r in written] == [int] * 11
    # Written elsewhere without the root, images stay reachable (absolute) and read back to the same files
    # once files outside the new file's folder are allowed.
    elsewhere = write_medrega(read_medrega(demo), tmp_path / "sub" / "b.jsonl")
    with pytest.raises(ManifestError, match=r"line 1: image path .* escapes the data root"):
        read_medrega(elsewhere)
    again = read_medrega(elsewhere, allow_outside_root=True)
    assert [s.image for s in again] == [s.image for s in read_medrega(demo)]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_multi_turn_history_extras_and_layout_round_trip(tmp_path: Path) -> None:
    records = [
        {
            "id": "a1",
            "image": "sub/x.png",
            "width": 10,
            "height": 20,
            "source": {"dataset": "demo", "n": 3},
            "conversations": [
                {"from": "human", "value": "Look: <image>Describe it."},  # no newline after the placeholder
                {"from": "gpt", "value": "A lesion."},
                {"from": "human", "value": "Is it benign?"},
                {"from": "gpt", "value": "yes"},
            ],
        },
        _record(7, question="What is this?"),  # no placeholder: the image leads the first turn
        _record(8, question="Is this lesion a melanoma?", task="classify", language="en"),
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", records)
    multi, implicit, forced = read_medrega(path)
    assert [t.role for t in multi.conversation.turns] == ["user", "assistant", "user"]
    assert multi.conversation.turns[0].parts[1] == ImagePart(path=tmp_path / "sub" / "x.png")
    assert multi.answer == "yes" and multi.meta["source"] == {"dataset": "demo", "n": 3}
    assert multi.meta[MEDREGA_META]["id"] == "a1"
    assert isinstance(implicit.conversation.turns[0].parts[0], ImagePart)
    assert forced.task == "classify"  # the record's own task field wins over inference
    out = write_medrega([multi, implicit, forced], tmp_path / "o.jsonl")
    assert _lines(out) == records


def test_task_argument_and_image_root(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [_record(0)])
    (sample,) = read_medrega(path, image_root=tmp_path / "imgs", task="classify")
    assert sample.task == "classify" and sample.image == tmp_path / "imgs" / "img.png"
    with pytest.raises(ConfigError, match="task='detect'"):
        read_medrega(path, task="detect")


def test_bad_file_lists_every_problem_with_its_line(tmp_path: Path) -> None:
    good = _record(0)
    lines = [
        good,  # 1
        '{"id": 1, "image": "a.png", "conversations": [',  # 2 invalid JSON
        {"image": "a.png", "conversations": good["conversations"]},  # 3 no id
        {"id": 3, "conversations": good["conversations"]},  # 4 no image
        {"id": 4, "image": "a.png"},  # 5 no conversations
        _record(5)
        | {"conversations": [{"from": "system", "value": "x"}, {"from": "gpt", "value": "y"}]},  # 6
        _record(6) | {"conversations": [{"from": "human", "value": "<image>\nq"}]},  # 7 no gpt turn
        _record(7)
        | {
            "conversations": [  # 8 two human turns in a row
                {"from": "human", "value": "<image>\nq"},
                {"from": "human", "value": "q2"},
                {"from": "gpt", "value": "a"},
            ]
        },
        _record(8, width=0, height="64"),  # 9 bad sizes
        _record(9, question="<image>\nPlease locate <ref>lesion</ref>.", answer="<ref>lesion</ref>"),  # 10
        [1, 2],  # 11 not an object
        "",  # 12 blank lines are skipped
        _record(12, question="<image>\nDescribe <image>."),  # 13 two placeholders
    ]
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as info:
        read_medrega(path)
    message = str(info.value)
    assert str(path) in message.splitlines()[0]
    expected = [
        "line 2: invalid JSON",
        "line 3: missing 'id'",
        "line 4: missing 'image'",
        "line 5: missing 'conversations'",
        "line 6: turn 1: 'from' must be 'human' or 'gpt', got 'system'",
        "line 7: no 'gpt' turn",
        "line 8: turn 2: expected 'gpt'",
        "line 9: 'width' must be a positive integer, got 0",
        "line 9: 'height' must be a positive integer, got '64'",
        "line 10: task text_to_region needs 'width' and 'height'",
        "line 10: answer: a text_to_region answer needs at least one <box>",
        "line 11: expected a JSON object, got list",
        "line 13: '<image>' appears 2 times",
    ]
    for snippet in expected:
        assert snippet in message, snippet
    assert "line 1:" not in message and "line 12:" not in message
    assert len(info.value.problems) == len(expected)  # type: ignore[attr-defined]


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_medrega(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no records"):
        read_medrega(tmp_path / "empty.jsonl")


@pytest.mark.parametrize(
    ("question", "task"),
    [
        ("What organ is shown?", "vqa"),
        ("What is <ref>this</ref><box>[[1, 2, 30, 40]]</box>?", "region_to_text"),
        ("Please locate <ref>liver</ref> in this CT.", "text_to_region"),
        ("Please locate the region and describe the condition of <ref>left lung</ref>", "grounded_report"),
        ("Your task is report generation. Write the findings.", "grounded_report"),
        ("The possible diagnoses are:\nnormal\ndrusen\nWhich one?", "classify"),
        ("请定位<ref>肝脏</ref>", "text_to_region"),
        ("请定位并描述<ref>结节</ref>", "grounded_report"),
        ("请生成诊断报告。", "grounded_report"),
        ("请给出诊断：正常、肺炎", "classify"),
        ("这张图片的成像方式是什么?", "vqa"),
        ("What is the location of the mass?", "vqa"),
    ],
)
def test_infer_task(question: str, task: str) -> None:
    assert infer_task(question) == task


def test_infer_language() -> None:
    assert infer_language("what is this?") == "en"
    assert infer_language("这是什么？") == "zh"


def test_write_hand_built_samples(tmp_path: Path) -> None:
    image = tmp_path / "data" / "a.png"
    conv = Conversation.system("Be brief.").user(ImagePart(path=image), "Is this a melanoma?")
    sample = VQASample("s1", conv, "no", "vqa", image=image, meta={"label": "nevus"})
    out = write_medrega([sample], tmp_path / "set.jsonl")
    (record,) = _lines(out)
    assert record == {
        "id": "s1",
        "image": "data/a.png",
        "conversations": [
            {"from": "human", "value": "Be brief.\n<image>\nIs this a melanoma?"},
            {"from": "gpt", "value": "no"},
        ],
        "label": "nevus",
    }
    # A task or language the prompt would not give back is written as a field.
    odd = VQASample(
        "s2", Conversation.user(ImagePart(path=image), "Name it."), "x", "classify", language="zh"
    )
    (record,) = _lines(write_medrega([odd], tmp_path / "odd.jsonl"))
    assert record["task"] == "classify" and record["language"] == "zh"
    (back,) = read_medrega(tmp_path / "odd.jsonl")
    assert (back.task, back.language, back.image) == ("classify", "zh", image)


@pytest.mark.parametrize(
    ("sample", "match"),
    [
        (VQASample("m", Conversation.user(ImagePart(data=b"x"), "q"), "a", "vqa"), "image files"),
        (VQASample("n", Conversation.user("q"), "a", "vqa"), "exactly one image"),
        (
            VQASample(
                "c", Conversation.user(ImagePart(path=Path("a.png")), "q"), "a", "vqa", meta={"image": 1}
            ),
            "clashes",
        ),
        (
            VQASample(
                "j", Conversation.user(ImagePart(path=Path("a.png")), "q"), "a", "vqa", meta={"x": {1, 2}}
            ),
            "JSON",
        ),
    ],
)
def test_write_rejects_what_medrega_cannot_hold(sample: VQASample, match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        write_medrega([sample], tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def test_line_separators_inside_text_round_trip(tmp_path: Path) -> None:
    """U+2028/U+2029/U+0085 are line breaks to str.splitlines but only text inside a JSON string."""
    record = _record(1, question="Is it\u2028benign\u0085or\u2029not?")
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    (sample,) = read_medrega(path)
    out = write_medrega([sample], tmp_path / "o.jsonl")
    assert "\u2028" not in out.read_text(encoding="utf-8")  # escaped: any JSONL reader splits it right
    assert _lines(out) == [record]
