"""`expert`: an offline "MLLM" made of our own models, so every VQA experiment runs with no LLM at all.

It reads the task of each conversation (given, or inferred from the prompt like an imported MedRegA file)
and answers from the image in the last user turn:

- classify / open VQA: the class a saved `LinearClassifier` (a linear probe on an encoder) predicts;
- closed VQA ("is this lesion a melanoma?"): yes/no (是/否 for Chinese prompts): does the class named in the
  question equal the predicted class;
- region_to_text: the predicted class of the crop inside the box given in the question;
- text_to_region: the boxes of the connected components of a saved segmenter's mask, in MedRegA region text
  (the phrase of the question's ``<ref>`` tag, else `phrase`: one name or {language: name}, by default
  "lesion" / 病灶);
- grounded_report: those boxes followed by ": <predicted class>".
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from panderm.data.images import mask_to_box
from panderm.data.transforms import eval_transform, model_input_transform
from panderm.errors import BackendError, ConfigError
from panderm.mllm.answers import classify_free_text, normalise_answer
from panderm.mllm.backends.base import Backend, GenerationSettings, resolve_device
from panderm.mllm.conversation import Conversation, ImagePart, decode_rgb
from panderm.mllm.medrega import infer_language, infer_task
from panderm.mllm.region_vqa import CLASS_NAMES, VQA_NAMES, question_phrases
from panderm.mllm.regions import format_regions, parse_regions
from panderm.mllm.samples import TASKS
from panderm.models.checkpoints import read_checkpoint_metadata
from panderm.models.classifier import CLASSIFIER_FORMAT, CLASSIFIER_FORMAT_VERSION, load_classifier
from panderm.models.seg_heads import load_segmenter, read_segmenter_metadata
from panderm.models.seg_outputs import logits_to_masks

DEFAULT_PHRASE = {"en": "lesion", "zh": "病灶"}
NEEDS = {  # task -> the saved models it needs
    "classify": ("classifier",),
    "vqa": ("classifier",),
    "region_to_text": ("classifier",),
    "text_to_region": ("segmenter",),
    "grounded_report": ("segmenter", "classifier"),
}


class ExpertBackend(Backend):
    """Answers from `classifier` (saved by a linear probe) and/or `segmenter` (saved by `panderm segment`).

    `task` is one of `TASKS` or "auto" (inferred per conversation from its prompt). Masks are split into
    connected components; components smaller than `min_area_fraction` of the image are dropped and at most
    `max_boxes` (largest first) are reported. Each model's output is remembered for the last `memo_images`
    images, so the several questions asked about one image run each model once. `model` defaults to a name
    holding the weights' hashes, so the response cache never mixes two different experts. Answers name
    classes by `answer_names` ({language: {label: text}}); by default by the display names of the embedded
    data sets when the classifier's labels are theirs (so "bcc" is answered as "basal cell carcinoma" or
    基底细胞癌), else by the labels.
    """

    name = "expert"

    def __init__(
        self,
        model: str | None = None,
        *,
        classifier: str | Path | None = None,
        segmenter: str | Path | None = None,
        task: str = "auto",
        phrase: str | dict[str, str] | None = None,
        min_area_fraction: float = 0.002,
        max_boxes: int = 5,
        answer_names: dict[str, dict[str, str]] | None = None,
        device: str = "auto",
        settings: GenerationSettings | None = None,
        adapter: str = "as_given",
        batch_size: int = 16,
        memo_images: int = 256,
    ) -> None:
        if classifier is None and segmenter is None:
            raise ConfigError(
                "the expert backend needs classifier=<saved probe> and/or segmenter=<saved head>"
            )
        if task != "auto" and task not in TASKS:
            raise ConfigError(f"expert backend: task={task!r} is not one of auto, {', '.join(TASKS)}")
        if task != "auto":
            missing = [
                m for m in NEEDS[task] if {"classifier": classifier, "segmenter": segmenter}[m] is None
            ]
            if missing:
                raise ConfigError(f"expert backend: task {task} needs {' and '.join(missing)}=<path>")
        hashes = []
        if classifier is not None:
            meta = read_checkpoint_metadata(
                classifier,
                fmt=CLASSIFIER_FORMAT,
                version=CLASSIFIER_FORMAT_VERSION,
                kind="classifier",
                hint="saved by `panderm probe` with a linear probe?",
            )
            hashes.append(f"classifier={meta['weights_sha256'][:12]}")
        if segmenter is not None:
            hashes.append(f"segmenter={read_segmenter_metadata(segmenter)['weights_sha256'][:12]}")
        super().__init__(
            model or f"expert({', '.join(hashes)})", settings=settings, adapter=adapter, batch_size=batch_size
        )
        self.device = resolve_device(device)
        self.classifier = (
            None if classifier is None else load_classifier(classifier, map_location=self.device)
        )
        self.segmenter = None if segmenter is None else load_segmenter(segmenter, map_location=self.device)
        self.task = task
        self.phrase = dict(DEFAULT_PHRASE) if phrase is None else phrase
        self.min_area_fraction, self.max_boxes = min_area_fraction, max_boxes
        self.answer_names, self.question_names = self._vocabulary(answer_names)
        # each model's input transform, built once (its encoder's size and normalisation)
        self._classifier_input = None if self.classifier is None else _input(self.classifier, eval_transform)
        self._segmenter_input = (
            None if self.segmenter is None else _input(self.segmenter, model_input_transform)
        )
        self._memo: OrderedDict[tuple[str, bytes], Any] = OrderedDict()
        self.memo_images = memo_images

    def _vocabulary(
        self, answer_names: dict[str, dict[str, str]] | None
    ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        """({language: {label: answer}}, {language: {how a question may name a class: label}})."""
        if self.classifier is None:
            return {}, {}
        labels = set(self.classifier.class_names)
        dataset = next((d for d, names in CLASS_NAMES.items() if labels <= set(names["en"])), None)
        answers = dict(answer_names or (CLASS_NAMES[dataset] if dataset else {}))
        asked: dict[str, dict[str, str]] = {}
        for language in {*answers, *(VQA_NAMES[dataset] if dataset else {})}:
            sources = ({k: k for k in sorted(labels)}, answers.get(language, {}))
            sources += (VQA_NAMES[dataset].get(language, {}),) if dataset else ()
            by_key: dict[str, tuple[str, str]] = {}  # one entry per normalised name (the first wins)
            for source in sources:
                for label, text in source.items():
                    by_key.setdefault(normalise_answer(text), (text, label))
            asked[language] = dict(by_key.values())
        return answers, asked

    def identity(self) -> dict[str, Any]:
        return {
            **super().identity(),
            "task": self.task,
            "phrase": self.phrase,
            "min_area_fraction": self.min_area_fraction,
            "max_boxes": self.max_boxes,
            "answer_names": self.answer_names,
        }

    # ------------------------------------------------------------------------------------------- answers

    def generate(self, conversations: Sequence[Conversation]) -> list[str]:
        return [self._answer(c) for c in conversations]

    def _answer(self, conversation: Conversation) -> str:
        turn = conversation.turns[-1]
        images = [p for p in turn.parts if isinstance(p, ImagePart)] or conversation.images()
        if not images:
            raise BackendError("expert backend: the conversation has no image to look at")
        image = np.asarray(decode_rgb(images[-1]))
        height, width = image.shape[:2]
        text = turn.text
        task = self.task if self.task != "auto" else infer_task(text)
        language = infer_language(text)
        if task == "text_to_region":
            return self._regions(image, text, language)
        if task == "grounded_report":
            return f"{self._regions(image, text, language)}: {self._say(self._classify(image), language)}"
        if task == "region_to_text":
            boxes = parse_regions(text, width, height, "medrega").boxes()
            return self._say(self._classify(_crop(image, boxes[0]) if len(boxes) else image), language)
        predicted = self._classify(image)
        if task == "vqa":
            names = self.question_names.get(language) or {c: c for c in self._classes()}
            asked = classify_free_text(text, list(names))
            if asked is not None:  # a closed question about one class
                yes = names[asked] == predicted
                return ("是" if yes else "否") if language == "zh" else ("yes" if yes else "no")
        return self._say(predicted, language)

    def _say(self, label: str, language: str) -> str:
        """How an answer names class `label` in `language`."""
        return self.answer_names.get(language, {}).get(label, label)

    def _classes(self) -> list[str]:
        return list(self._need("classifier").class_names)

    def _need(self, which: str) -> torch.nn.Module:
        model = getattr(self, which)
        if model is None:
            raise BackendError(f"expert backend: this question needs a {which} (pass {which}=<path>)")
        return model

    def _remembered(self, which: str, image: np.ndarray, compute: Callable[[], Any]) -> Any:
        """`compute()` for model `which` on `image`, or its remembered result for the same pixels."""
        key = (which, hashlib.sha256(np.ascontiguousarray(image).data).digest() + str(image.shape).encode())
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        value = self._memo[key] = compute()
        if len(self._memo) > 2 * self.memo_images:  # two models, `memo_images` images each
            self._memo.popitem(last=False)
        return value

    def _classify(self, image: np.ndarray) -> str:
        return self._remembered("classifier", image, lambda: self._run_classifier(image))

    @torch.no_grad()
    def _run_classifier(self, image: np.ndarray) -> str:
        model = self._need("classifier")
        x = self._classifier_input(image=image)["image"]
        logits = model(x[None].to(self.device))
        return model.class_names[int(logits.argmax(1))]

    @torch.no_grad()
    def _run_segmenter(self, image: np.ndarray) -> np.ndarray:
        model = self._need("segmenter")
        x = self._segmenter_input(image=image)["image"]
        return logits_to_masks(model(x[None].to(self.device)), [image.shape[:2]])[0] > 0

    def _regions(self, image: np.ndarray, text: str, language: str) -> str:
        mask = self._remembered("segmenter", image, lambda: self._run_segmenter(image))
        height, width = image.shape[:2]
        refs = question_phrases(text)
        default = self.phrase if isinstance(self.phrase, str) else self.phrase.get(language, "lesion")
        phrase = refs[0] if refs else default
        return format_regions([(phrase, self.mask_boxes(mask))], width, height, "medrega")

    def mask_boxes(self, mask: np.ndarray) -> list[list[int]]:
        """Boxes (x2/y2 exclusive) of the mask's connected components, largest first, small ones dropped."""
        labels, n = ndimage.label(mask)
        if n == 0:
            return []
        areas = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        keep = [
            i + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= self.min_area_fraction * mask.size
        ]
        return [list(mask_to_box(labels == i)) for i in keep[: self.max_boxes]]

    def close(self) -> None:
        self.classifier = self.segmenter = None
        self._memo.clear()


def _input(model: torch.nn.Module | None, make: Callable[..., Any]) -> Any:
    """`make` (an albumentations pipeline factory) at the model's encoder size and normalisation."""
    if model is None:
        return None
    spec = model.encoder.spec
    return make(spec.image_size, mean=spec.mean, std=spec.std)


def _crop(image: np.ndarray, box: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """The box (pixels) grown by `margin` of its size on each side, clipped to the image."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(int(x1 - dx), 0), max(int(y1 - dy), 0)
    right, bottom = min(int(np.ceil(x2 + dx)), width), min(int(np.ceil(y2 + dy)), height)
    if right <= left or bottom <= top:
        return image
    return image[top:bottom, left:right]
