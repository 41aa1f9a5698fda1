"""Region-aware VQA sets (MedRegA JSONL) built from a SynthDerm or SynthCXR manifest with masks.

Boxes come from the masks: SynthDerm gives one "lesion" box per image; a SynthCXR lung mask gives one box per
lung (its two largest 8-connected components; specks under 5% of the mask are left out). The films are PA
views, so the patient's right lung is the component on the image's left. Every language has its own prompt
templates (`PROMPTS`, filled with `str.format`); `match_prompt` recognises them in a question, and each
sample's `meta` carries what the question is about (``phrase``, ``box``, ``regions``, ``classes``,
``label``, ``candidate``, ``expected``).
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from panderm.data.images import image_size, load_mask, mask_to_box
from panderm.data.manifest import read_table
from panderm.data.synthetic import synthcxr, synthderm
from panderm.errors import ConfigError, DataError, ImageLoadError, ManifestError
from panderm.mllm.conversation import Conversation, ImagePart
from panderm.mllm.medrega import write_medrega
from panderm.mllm.regions import format_regions
from panderm.mllm.samples import TASKS, VQASample

__all__ = [
    "CLASS_NAMES",
    "COLOR_NAMES",
    "FINDINGS",
    "IMAGE_KINDS",
    "LANGUAGES",
    "PHRASES",
    "PROMPTS",
    "REPORT_ANSWER",
    "TARGET_KINDS",
    "VQA_NAMES",
    "YES_NO",
    "PromptMatch",
    "make_region_vqa",
    "match_prompt",
    "question_phrases",
    "task_phrase",
    "task_phrases",
]

LANGUAGES: tuple[str, ...] = ("en", "zh")

_BOX_FORMAT = {
    "en": "integers from 0 to 999 relative to the image width and height",
    "zh": "坐标为0到999的整数，按图像的宽和高缩放",
}
PROMPTS: dict[str, dict[str, str]] = {
    "en": {
        "text_to_region": (
            "Locate <ref>{phrase}</ref> in this {image_kind}. Answer with its bounding box in the form "
            "<ref>{phrase}</ref><box>[[x1, y1, x2, y2]]</box>, the coordinates being "
            + _BOX_FORMAT["en"]
            + "."
        ),
        "region_to_text": (
            "What is inside the region {region} of this {image_kind}? The box is [x1, y1, x2, y2] with "
            + _BOX_FORMAT["en"]
            + ". Answer with the {target_kind} only."
        ),
        "grounded_report": (
            "Locate and describe {targets} in this {image_kind}. Write each region as "
            "<ref>name</ref><box>[[x1, y1, x2, y2]]</box> (" + _BOX_FORMAT["en"] + "), then a colon and a "
            "short description."
        ),
        "classify": (
            "Which diagnosis fits this {image_kind} best? The possible diagnoses are: {classes}. "
            "Answer with one of them."
        ),
        "vqa": "Does this {image_kind} show {candidate}? Answer yes or no.",
    },
    "zh": {
        "text_to_region": (
            "请在这张{image_kind}中定位<ref>{phrase}</ref>，"
            "并按<ref>{phrase}</ref><box>[[x1, y1, x2, y2]]</box>的格式给出边界框，"
            + _BOX_FORMAT["zh"]
            + "。"
        ),
        "region_to_text": (
            "这张{image_kind}中区域{region}内是什么？边界框为[x1, y1, x2, y2]，"
            + _BOX_FORMAT["zh"]
            + "。请只回答{target_kind}。"
        ),
        "grounded_report": (
            "请定位并描述这张{image_kind}中的{targets}。"
            "每个区域写成<ref>名称</ref><box>[[x1, y1, x2, y2]]</box>（"
            + _BOX_FORMAT["zh"]
            + "），后接冒号和简短描述。"
        ),
        "classify": "这张{image_kind}最符合哪一种诊断？可能的诊断有：{classes}。请只回答其中一个。",
        "vqa": "这张{image_kind}显示的是{candidate}吗？请回答“是”或“否”。",
    },
}
"""Question templates by language and task (our wording). Fields: ``image_kind``, ``phrase`` (a region
name), ``region`` (the box in MedRegA text), ``target_kind``, ``targets`` (``<ref>`` tags of the regions),
``classes`` (the data set's class names), ``candidate`` (a class name with its article)."""

REPORT_ANSWER: dict[str, str] = {"en": "{regions}: {finding}.", "zh": "{regions}：{finding}。"}
"""Grounded-report answer: the regions in MedRegA text, then the finding (see `FINDINGS`)."""
YES_NO: dict[str, tuple[str, str]] = {"en": ("yes", "no"), "zh": ("是", "否")}
_LIST_SEPARATOR = {"en": ", ", "zh": "、"}
_TARGET_SEPARATOR = {"en": " and ", "zh": "和"}

IMAGE_KINDS: dict[str, dict[str, str]] = {
    "en": {
        "dermoscopy": "dermoscopy image",
        "clinical": "clinical photograph",
        "tbp": "total-body photography tile",
        "xray": "chest X-ray",
    },
    "zh": {"dermoscopy": "皮肤镜图像", "clinical": "临床照片", "tbp": "全身摄影图块", "xray": "胸部X光片"},
}
PHRASES: dict[str, dict[str, str]] = {
    "lesion": {"en": "lesion", "zh": "病灶"},
    "right_lung": {"en": "right lung", "zh": "右肺"},
    "left_lung": {"en": "left lung", "zh": "左肺"},
}
"""Region names by key and language."""
TARGET_KINDS: dict[str, dict[str, str]] = {
    "synthderm": {"en": "lesion type", "zh": "病变类型"},
    "synthcxr": {"en": "anatomical structure", "zh": "解剖结构名称"},
}
CLASS_NAMES: dict[str, dict[str, dict[str, str]]] = {
    "synthderm": {
        "en": {
            "nevus": "nevus",
            "melanoma": "melanoma",
            "seborrheic_keratosis": "seborrheic keratosis",
            "bcc": "basal cell carcinoma",
        },
        "zh": {
            "nevus": "痣",
            "melanoma": "黑色素瘤",
            "seborrheic_keratosis": "脂溢性角化病",
            "bcc": "基底细胞癌",
        },
    },
    "synthcxr": {
        "en": {
            "normal": "normal",
            "pneumonia": "pneumonia",
            "cardiomegaly": "cardiomegaly",
            "effusion": "pleural effusion",
        },
        "zh": {"normal": "正常", "pneumonia": "肺炎", "cardiomegaly": "心脏增大", "effusion": "胸腔积液"},
    },
}
"""Display names of each data set's labels by language (classify options and answers, derm region answers)."""
VQA_NAMES: dict[str, dict[str, dict[str, str]]] = {
    "synthderm": {
        "en": {
            "nevus": "a nevus",
            "melanoma": "a melanoma",
            "seborrheic_keratosis": "a seborrheic keratosis",
            "bcc": "a basal cell carcinoma",
        },
        "zh": CLASS_NAMES["synthderm"]["zh"],
    },
    "synthcxr": {
        "en": {
            "normal": "a normal chest",
            "pneumonia": "pneumonia",
            "cardiomegaly": "cardiomegaly",
            "effusion": "a pleural effusion",
        },
        "zh": {"normal": "正常胸片", "pneumonia": "肺炎", "cardiomegaly": "心脏增大", "effusion": "胸腔积液"},
    },
}
"""The ``candidate`` of yes/no questions (with an article in English)."""
COLOR_NAMES: dict[str, dict[str, str]] = {
    "en": {c: c.replace("_", " ") for c in synthderm.COLORS},
    "zh": {
        "light_brown": "浅棕色",
        "dark_brown": "深棕色",
        "black": "黑色",
        "blue_grey": "蓝灰色",
        "red": "红色",
        "white": "白色",
    },
}
_SIDES = {
    "en": {"right": "the right lung", "left": "the left lung", "both": "both lungs", "": "the lungs"},
    "zh": {"right": "右肺", "left": "左肺", "both": "双肺", "": "肺部"},
}
FINDINGS: dict[str, dict[str, dict[str, str]]] = {
    "synthderm": {
        "en": {"with_colors": "{name}; colours: {colors}", "plain": "{name}"},
        "zh": {"with_colors": "{name}；颜色：{colors}", "plain": "{name}"},
    },
    "synthcxr": {
        "en": {
            "normal": "{name}, no focal opacity or effusion",
            "pneumonia": "{name}, an opacity in {side}",
            "cardiomegaly": "{name}, the heart is enlarged",
            "effusion": "{name} at the base of {side}",
        },
        "zh": {
            "normal": "{name}，未见局灶性实变或积液",
            "pneumonia": "{name}，{side}可见片状实变影",
            "cardiomegaly": "{name}，心影增大",
            "effusion": "{name}，{side}底部密度增高",
        },
    },
}
"""Grounded-report findings: SynthDerm by whether the manifest lists colours, SynthCXR by label."""


@dataclass(frozen=True)
class PromptMatch:
    """A question recognised as one of `PROMPTS`: its task, language and the template fields' values."""

    task: str
    language: str
    fields: dict[str, str]


def _template_regex(template: str) -> re.Pattern[str]:
    pattern, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern.append(re.escape(literal))
        if name is None:
            continue
        pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
        seen.add(name)
    return re.compile("".join(pattern), re.DOTALL)


_PROMPT_REGEX = {
    (lang, task): _template_regex(template)
    for lang, tasks in PROMPTS.items()
    for task, template in tasks.items()
}


def match_prompt(question: str) -> PromptMatch | None:
    """The template of `PROMPTS` that `question` (the text of a user turn) was made from, or None."""
    text = question.strip()
    for (language, task), regex in _PROMPT_REGEX.items():
        found = regex.fullmatch(text)
        if found:
            return PromptMatch(task, language, found.groupdict())
    return None


_REF = re.compile(r"<ref>(.*?)</ref>", re.DOTALL)
_PLACEHOLDER_REFS = {"object", "this", "name", "名称", "病种", "物体"}


def task_phrases(sample: VQASample) -> list[str]:
    """The region names a sample asks about: meta ``regions``/``phrase`` when present, else the ``<ref>``
    phrases of the question (placeholders such as "object" or "this" skipped, each phrase once)."""
    regions = sample.meta.get("regions")
    if isinstance(regions, list) and regions:
        return [str(r[0]) for r in regions]
    if isinstance(sample.meta.get("phrase"), str):
        return [sample.meta["phrase"]]
    return question_phrases(sample.conversation.turns[-1].text)


def question_phrases(question: str) -> list[str]:
    """The ``<ref>`` phrases of a question, each once, without placeholders such as "object" or "this"."""
    refs = [r.strip() for r in _REF.findall(question)]
    return list(dict.fromkeys(r for r in refs if r and r.lower() not in _PLACEHOLDER_REFS))


def task_phrase(sample: VQASample) -> str | None:
    """The first of `task_phrases(sample)`, or None when it has none."""
    phrases = task_phrases(sample)
    return phrases[0] if phrases else None


# ------------------------------------------------------------------------------------------------ building
@dataclass(frozen=True)
class _Image:
    """One manifest row ready for questions: where it is, its size and its named boxes (pixels)."""

    row: pd.Series
    path: Path
    stem: str
    width: int
    height: int
    regions: tuple[tuple[str, tuple[int, int, int, int]], ...]  # (phrase key, box)


def dataset_of(table: pd.DataFrame, manifest: Path) -> str:
    """ "synthderm" or "synthcxr", from the manifest's columns; ConfigError for any other manifest."""
    if "lesion_id" in table.columns:
        return "synthderm"
    if "finding_side" in table.columns or "ctr" in table.columns:
        return "synthcxr"
    raise ConfigError(
        f"{manifest}: not a SynthDerm or SynthCXR manifest (no 'lesion_id' or 'finding_side' column)"
    )


def _regions(mask: np.ndarray, dataset: str) -> tuple[list[tuple[str, tuple[int, int, int, int]]], str]:
    """Named boxes of a mask, or an empty list and the reason."""
    if dataset == "synthderm":
        box = mask_to_box(mask)
        return ([("lesion", box)], "") if box else ([], "empty lesion mask")
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))  # 8-connected: corner pixels stay
    sizes = np.bincount(labels.ravel())[1:]
    big = [i + 1 for i in np.argsort(-sizes, kind="stable")[:2] if sizes[i] >= 0.05 * sizes.sum()]
    if n < 2 or len(big) < 2:
        return [], f"lung mask has {len(big)} lung-sized connected component(s), expected two"
    boxes = [mask_to_box(labels == i) for i in big]
    # PA view: the component on the image's left is the patient's right lung.
    boxes.sort(key=lambda b: (b[0] + b[2]) / 2)  # type: ignore[index]
    return [("right_lung", boxes[0]), ("left_lung", boxes[1])], ""  # type: ignore[list-item]


def _load_images(table: pd.DataFrame, root: Path, dataset: str, manifest: Path) -> list[_Image]:
    images, problems = [], []
    for index, row in table.iterrows():
        where = f"row {int(index) + 1} ({row['image']})"  # type: ignore[call-overload]
        path = root / str(row["image"])
        try:
            width, height = image_size(path)
            mask = load_mask(root / str(row["mask"]), (height, width))
        except ImageLoadError as exc:
            problems.append(f"{where}: {exc.reason}")
            continue
        regions, why = _regions(mask, dataset)
        if not regions:
            problems.append(f"{where}: {why}")
            continue
        images.append(_Image(row, path, Path(str(row["image"])).stem, width, height, tuple(regions)))
    if problems:
        raise ManifestError(str(manifest), problems)
    return images


def _region_text(regions: Sequence[tuple[str, Sequence[int]]], image: _Image) -> str:
    return ", ".join(
        format_regions([(phrase, [list(box)])], image.width, image.height) for phrase, box in regions
    )


def _finding(image: _Image, dataset: str, lang: str) -> str:
    row, label = image.row, str(image.row["label"])
    name = CLASS_NAMES[dataset][lang][label]
    if dataset == "synthderm":
        colors = str(row.get("colors", "") or "")
        known = [COLOR_NAMES[lang][c] for c in colors.split(";") if c in COLOR_NAMES[lang]]
        if known:
            return FINDINGS[dataset][lang]["with_colors"].format(
                name=name, colors=_LIST_SEPARATOR[lang].join(known)
            )
        return FINDINGS[dataset][lang]["plain"].format(name=name)
    side = row.get("finding_side")
    side = side if isinstance(side, str) and side in _SIDES[lang] else ""
    return FINDINGS[dataset][lang][label].format(name=name, side=_SIDES[lang][side])


def _samples_for(
    image: _Image, dataset: str, lang: str, tasks: Sequence[str], vqa_plan: tuple[str, bool]
) -> list[VQASample]:
    label = str(image.row["label"])
    classes = list(CLASS_NAMES[dataset][lang].values())
    kind = IMAGE_KINDS[lang].get(str(image.row.get("modality", "")), IMAGE_KINDS[lang]["dermoscopy"])
    base_meta: dict[str, Any] = {"dataset": dataset, "label": label, "classes": classes}
    prompts = PROMPTS[lang]
    out = []

    def add(task: str, suffix: str, question: str, answer: str, **meta: Any) -> None:
        conversation = Conversation.user(ImagePart(path=image.path), question)
        out.append(
            VQASample(
                id=f"{image.stem}-{task}{suffix}-{lang}",
                conversation=conversation,
                answer=answer,
                task=task,
                image=image.path,
                width=image.width,
                height=image.height,
                language=lang,
                meta={**base_meta, **meta},
            )
        )

    for task in tasks:
        if task in ("text_to_region", "region_to_text"):
            for key, box in image.regions:
                phrase = PHRASES[key][lang]
                suffix = "" if len(image.regions) == 1 else f"-{key}"
                region = _region_text([(phrase, box)], image)
                if task == "text_to_region":
                    question = prompts[task].format(phrase=phrase, image_kind=kind)
                    add(task, suffix, question, region, phrase=phrase, box=list(box))
                else:
                    shown = format_regions([(None, [list(box)])], image.width, image.height)
                    question = prompts[task].format(
                        region=shown, image_kind=kind, target_kind=TARGET_KINDS[dataset][lang]
                    )
                    answer = CLASS_NAMES[dataset][lang][label] if dataset == "synthderm" else phrase
                    add(task, suffix, question, answer, phrase=phrase, box=list(box))
        elif task == "grounded_report":
            named = [(PHRASES[key][lang], box) for key, box in image.regions]
            targets = _TARGET_SEPARATOR[lang].join(f"<ref>{phrase}</ref>" for phrase, _ in named)
            question = prompts[task].format(targets=targets, image_kind=kind)
            answer = REPORT_ANSWER[lang].format(
                regions=_region_text(named, image), finding=_finding(image, dataset, lang)
            )
            add(task, "", question, answer, regions=[[phrase, list(box)] for phrase, box in named])
        elif task == "classify":
            question = prompts[task].format(image_kind=kind, classes=_LIST_SEPARATOR[lang].join(classes))
            add(task, "", question, CLASS_NAMES[dataset][lang][label])
        else:  # vqa
            candidate, yes = vqa_plan
            question = prompts[task].format(image_kind=kind, candidate=VQA_NAMES[dataset][lang][candidate])
            add(task, "", question, YES_NO[lang][0 if yes else 1], candidate=candidate, expected=yes)
    return out


def make_region_vqa(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    split: str | None = "test",
    tasks: Sequence[str] = TASKS,
    languages: Sequence[str] = LANGUAGES,
    seed: int = 0,
    limit: int | None = None,
) -> Path:
    """Write a region-VQA set in MedRegA JSONL at `out` from a SynthDerm or SynthCXR manifest; return `out`.

    Uses the rows of `split` (None: all), the first `limit` images of them when given. Per image and language:
    text_to_region and region_to_text for each region, one grounded_report over all regions, one classify
    question listing the data set's classes and one yes/no vqa question, whose answers are balanced between
    yes and no over the images (a "no" asks about another class, both drawn with `seed`; every language asks
    the same). Image paths are written relative to the manifest's folder (read the set back with
    ``read_medrega(out, image_root=manifest_folder)``). Deterministic for a seed. Raises `ConfigError` for
    bad arguments or an unknown manifest and `DataError` listing every unusable row (unreadable image or
    mask, empty mask, a lung mask without two lungs).
    """
    manifest = Path(manifest)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"tasks {unknown or list(tasks)} must be a non-empty subset of {', '.join(TASKS)}")
    bad_languages = [lang for lang in languages if lang not in LANGUAGES]
    if bad_languages or not languages:
        raise ConfigError(
            f"languages {bad_languages or list(languages)} must be a non-empty subset of en, zh"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    table = read_table(manifest)
    missing = [c for c in ("image", "split", "label", "mask") if c not in table.columns]
    if missing:
        raise ConfigError(f"{manifest}: missing column(s) {', '.join(missing)}")
    dataset = dataset_of(table, manifest)
    classes = synthderm.CLASSES if dataset == "synthderm" else synthcxr.CLASSES
    if split is not None:
        if split not in set(table["split"]):
            raise ConfigError(
                f"{manifest}: no rows with split={split!r} (have {sorted(set(table['split']))})"
            )
        table = table[table["split"] == split]
    table = table[table["mask"].notna() & (table["mask"].astype(str).str.strip() != "")]
    unknown_labels = sorted(set(table["label"].astype(str)) - set(classes))
    if unknown_labels:
        raise DataError(f"{manifest}: label(s) {unknown_labels} are not {dataset} classes {list(classes)}")
    if limit is not None:
        table = table.iloc[:limit]
    if table.empty:
        raise DataError(f"{manifest}: no rows with a mask in split={split!r}")
    images = _load_images(table, manifest.parent, dataset, manifest)

    rng = np.random.default_rng(seed)
    yes_flags = rng.permutation([True] * math.ceil(len(images) / 2) + [False] * (len(images) // 2))
    plans = []
    for image, yes in zip(images, yes_flags, strict=True):
        label = str(image.row["label"])
        others = [c for c in classes if c != label]
        plans.append((label, True) if yes else (others[int(rng.integers(len(others)))], False))
    samples = [
        sample
        for image, plan in zip(images, plans, strict=True)
        for lang in languages
        for sample in _samples_for(image, dataset, lang, tasks, plan)
    ]
    return write_medrega(samples, out, image_root=manifest.parent)
