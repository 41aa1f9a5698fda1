"""Every supported VLM family, as a tiny random model built from its transformers config class, batched.

For each family: the adapter comes from the model's own config (the folder's name says nothing); batched
replies equal the replies each conversation gets alone, on conversations with different numbers of images
and turns; and `panderm vqa` and `panderm icl` run end to end with batch_size=4, every batch going through
in one call (no failure, no retry, no fallback to single requests).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from panderm.cli import main
from panderm.data.synthetic.synthderm import generate_synthderm
from panderm.mllm.backends.base import GenerationSettings
from panderm.mllm.backends.hf import HFBackend
from panderm.mllm.conversation import Conversation, ImagePart
from panderm.mllm.region_vqa import make_region_vqa
from panderm.mllm.tiny import FAMILIES, build_tiny

# the adapter `adapter=auto` must pick from each family's config.json
ADAPTERS = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "qwen3_vl": "qwen2_vl",
    "llava": "llava",
    "llava_next": "llava",
    "llava_onevision": "llava",
    "internvl": "internvl",
    "idefics3": "smolvlm",
    "smolvlm": "smolvlm",
    "gemma3": "gemma3",
    "paligemma": "paligemma",
    "mllama": "mllama",
}
# which per-image caches of the hf backend serve the family: (preprocessing, vision encoder); the others
# take the processor's or encoder's own call (same replies, no reuse across prompts)
VISION_CACHE = {
    "qwen2_vl": (True, True),
    "qwen2_5_vl": (True, True),
    "qwen3_vl": (True, False),  # its encoder also returns deepstack features, which the cache does not split
    "llava": (True, True),
    "llava_next": (False, False),
    "llava_onevision": (False, False),
    "internvl": (False, True),
    "idefics3": (False, False),
    "smolvlm": (False, False),
    "gemma3": (False, True),
    "paligemma": (True, True),
    "mllama": (False, False),
}
SETTINGS = GenerationSettings(max_new_tokens=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`tiny(family)`: the folder of the family's tiny model, built once per module, under a neutral name."""
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(family, root / f"checkpoint-{len(built)}")
        return built[family]

    return get


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A SynthDerm set, its region-VQA JSONL and an ICL problems file (images of 48 px)."""
    folder = tmp_path_factory.mktemp("family_data")
    manifest = generate_synthderm(folder / "synthderm", n_patients=8, image_size=48, seed=0)
    vqa = make_region_vqa(manifest, folder / "vqa.jsonl", seed=0)
    base = folder / "base"
    icl = ["icl", "backend=majority", "synth.n_patients=8", "synth.image_size=48", "n_problems=4"]
    assert main([*icl, "progress=false", "n_boot=50", f"hydra.run.dir={base}"]) == 0
    images = sorted(manifest.parent.rglob("*.png"))[:4]
    return {"manifest": manifest, "vqa": vqa, "problems": base / "problems.jsonl", "images": images}


class BatchRecorder:
    """Wraps HFBackend._generate_batch: the size of every batch call and every exception it raised."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.errors: list[str] = []
        original = HFBackend._generate_batch

        def recorded(backend: HFBackend, conversations):
            self.sizes.append(len(conversations))
            try:
                return original(backend, conversations)
            except Exception as exc:
                self.errors.append(str(exc))
                raise

        monkeypatch.setattr(HFBackend, "_generate_batch", recorded)


def conversations(images: list[Path]) -> list[Conversation]:
    """Four conversations with 1, 2, 1 and 3 images, one of them with an in-context demonstration turn."""
    a, b, c, d = (ImagePart(path=p) for p in images)
    return [
        Conversation.user(a, "What is the most likely diagnosis?"),
        Conversation.user(b, c, "Compare the two lesions. Which is malignant?"),
        Conversation.user(d, "Is this lesion benign or malignant?"),
        Conversation.user(a, "Diagnosis?")
        .assistant("nevus")
        .user(b, "Diagnosis?")
        .assistant("melanoma")
        .user(c, "Diagnosis?"),
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_replies_equal_single_replies(family, tiny, data, monkeypatch):
    backend = HFBackend(str(tiny(family)), settings=SETTINGS, batch_size=4)
    assert backend.adapter.name == ADAPTERS[family]
    rendered = [backend.render(c) for c in conversations(data["images"])]
    recorder = BatchRecorder(monkeypatch)
    batched = backend.generate(rendered)
    stats = backend.vision_stats()  # 7 images in the prompts, 4 distinct
    preprocessed, encoded = VISION_CACHE[family]
    assert stats["images_seen"] == 7
    assert (stats["images_preprocessed"] == 4) is preprocessed and stats["images_preprocessed"] >= 4
    assert (stats["images_encoded"] == 4) is encoded and stats["images_encoded"] >= 4
    backend.batch_size = 1
    single = backend.generate(rendered)
    # Mllama pads image slots, so its batches hold prompts of one image count (here 1, 1 | 2 | 3)
    assert recorder.errors == [] and recorder.sizes == ([2, 1, 1] if family == "mllama" else [4]) + [1] * 4
    assert batched == single
    assert all(isinstance(reply, str) for reply in batched)
    assert len(set(single)) > 1  # replies depend on the prompt: the test would notice a constant reply


@pytest.mark.parametrize("family", FAMILIES)
def test_vqa_and_icl_commands_batch_every_family(family, tiny, data, monkeypatch, caplog, tmp_path):
    model = tiny(family)
    backend = ["backend=hf", f"backend.model={model}", "backend.batch_size=4", "generation.max_new_tokens=5"]
    recorder = BatchRecorder(monkeypatch)
    vqa = [f"data={data['vqa']}", f"image_root={data['manifest'].parent}", "limit=8", "progress=false"]
    assert main(["vqa", *backend, *vqa, f"hydra.run.dir={tmp_path / 'vqa'}"]) == 0
    metrics = json.loads((tmp_path / "vqa" / "metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["n_failed"] == 0
    icl = [f"problems={data['problems']}", "strategy=original", "progress=false", "n_boot=50"]
    assert main(["icl", *backend, *icl, f"hydra.run.dir={tmp_path / 'icl'}"]) == 0
    rows = pd.read_csv(tmp_path / "icl" / "results.csv", keep_default_na=False)
    assert set(rows["status"]) == {"ok"}
    assert recorder.errors == [] and max(recorder.sizes) == 4 and 1 not in recorder.sizes[:2]
    assert not [r for r in caplog.records if "one at a time" in r.getMessage() or "retry" in r.getMessage()]
