"""`panderm vqa` end to end: expert runs scored from their own predictions, resume from the cache after a
kill (openai backend against the local server, in a subprocess), and bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from panderm.cli import main
from panderm.config import register_configs
from panderm.data.synthetic.synthderm import generate_synthderm
from panderm.errors import ConfigError, ManifestError
from panderm.mllm.region_vqa import make_region_vqa
from panderm.mllm.run import run_vqa
from panderm.paths import config_dir
from tests.mllm.helpers import constant_classifier, everywhere_segmenter, kill_when_held


def vqa_config(*overrides: str):
    register_configs()
    with initialize_config_dir(str(config_dir("vqa")), version_base="1.3"):
        return compose("vqa", overrides=["progress=false", *overrides])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vqa")
    manifest = generate_synthderm(folder / "synthderm", n_patients=12, image_size=48, seed=0)
    return {
        "manifest": manifest,
        "set": make_region_vqa(manifest, folder / "set.jsonl", seed=0),
        "classifier": constant_classifier(folder / "clf"),
        "segmenter": everywhere_segmenter(folder / "seg"),
    }


def test_expert_run_scores_its_own_predictions_and_a_rerun_is_all_cache(synth, tmp_path):
    overrides = [
        f"synth.out_dir={tmp_path / 'data'}",
        "synth.n_patients=12",
        "synth.image_size=48",
        f"backend.options.classifier={synth['classifier']}",
        f"backend.options.segmenter={synth['segmenter']}",
    ]
    metrics = run_vqa(vqa_config(*overrides), tmp_path / "run")
    for name in ("predictions.jsonl", "predictions.csv", "metrics.json", "report.md", "figures/boxes.png"):
        assert (tmp_path / "run" / name).is_file(), name
    rows = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert metrics["n"] == len(rows) and metrics["n_failed"] == 0 and set(rows["status"]) == {"ok"}
    assert set(rows["task"]) == {"vqa", "region_to_text", "text_to_region", "grounded_report", "classify"}
    # the constant classifier says melanoma: classification accuracy is the share of melanoma golds
    classify = rows[rows["task"] == "classify"]
    melanoma = classify["gold"].isin(["melanoma", "黑色素瘤"])
    assert metrics["tasks"]["classify"]["accuracy"] == pytest.approx(melanoma.mean())
    assert (classify["response"] == classify["language"].map({"en": "melanoma", "zh": "黑色素瘤"})).all()
    # whole-image boxes: IoU = lesion box area / image area, recomputed from the gold boxes
    t2r = rows[rows["task"] == "text_to_region"]
    assert metrics["tasks"]["text_to_region"]["single_box"]["mean_iou"] == pytest.approx(t2r["iou"].mean())
    assert (t2r["iou"] > 0).all() and (t2r["iou"] < 1).all()
    closed = rows[rows["task"] == "vqa"]
    expected = closed["extracted"] == closed["gold"].map({"yes": "yes", "no": "no", "是": "yes", "否": "no"})
    assert metrics["tasks"]["vqa"]["closed_accuracy"] == pytest.approx(expected.mean())
    lines = (tmp_path / "run" / "responses.jsonl").read_text().count("\n")
    again = run_vqa(vqa_config(*overrides), tmp_path / "run")
    assert again["n_cached"] == again["n"] and again["tasks"] == metrics["tasks"]
    assert (tmp_path / "run" / "responses.jsonl").read_text().count("\n") == lines


def test_task_and_language_selection(synth, tmp_path):
    common = [
        f"data={synth['set']}",
        f"image_root={synth['manifest'].parent}",
        f"backend.options.classifier={synth['classifier']}",
    ]
    metrics = run_vqa(vqa_config(*common, "task=classify", "languages=[zh]"), tmp_path / "zh")
    rows = pd.read_csv(tmp_path / "zh" / "predictions.csv")
    assert set(rows["task"]) == {"classify"} and set(rows["language"]) == {"zh"}
    assert list(metrics["tasks"]) == ["classify"]
    with pytest.raises(ConfigError, match="task='segment'"):
        run_vqa(vqa_config(*common, "task=segment"), tmp_path / "bad")
    with pytest.raises(ConfigError, match="force_task=true needs"):
        run_vqa(vqa_config(*common, "force_task=true"), tmp_path / "bad")
    with pytest.raises(ConfigError, match=r"region_style=.paligema. is not one of medrega, .*, auto"):
        run_vqa(vqa_config(*common, "region_style=paligema"), tmp_path / "style")
    assert not (tmp_path / "style" / "responses.jsonl").exists()  # refused before any call


def test_missing_images_are_listed_before_any_call(synth, tmp_path):
    data = tmp_path / "set.jsonl"
    lines = synth["set"].read_text().splitlines()[:3]
    data.write_text("\n".join(lines) + "\n")  # image paths are relative to the file: none exist here
    with pytest.raises(ManifestError) as err:
        run_vqa(
            vqa_config(f"data={data}", f"backend.options.classifier={synth['classifier']}"), tmp_path / "r"
        )
    assert len(err.value.problems) == 3 and "image not found" in str(err.value)
    assert not (tmp_path / "r" / "responses.jsonl").exists()


@pytest.mark.slow
def test_a_killed_run_resumes_without_repeating_calls(synth, chat_server, tmp_path):
    n, answered_before_kill = 10, 4
    args = [
        "vqa",
        "backend=openai",
        "backend.model=served-model",
        f"backend.options.base_url={chat_server.base_url}",
        "backend.options.api_key_env=null",
        "backend.batch_size=1",
        f"data={synth['set']}",
        f"image_root={synth['manifest'].parent}",
        f"limit={n}",
        "progress=false",
    ]
    run = tmp_path / "run"
    chat_server.hold_after(answered_before_kill)
    kill_when_held(args, run, chat_server, tmp_path)
    cached = [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]
    assert len(cached) == answered_before_kill and {c["status"] for c in cached} == {"ok"}
    first_bodies = chat_server.bodies()  # the answered calls plus the one held when killed
    assert len(first_bodies) == answered_before_kill + 1
    chat_server.hold_after(None)
    assert main([*args, f"hydra.run.dir={run}"]) == 0
    resumed = chat_server.bodies()[len(first_bodies) :]
    assert len(resumed) == n - answered_before_kill  # nothing answered before the kill is asked again
    answered = [json.dumps(b, sort_keys=True) for b in first_bodies[:answered_before_kill]]
    assert not {json.dumps(b, sort_keys=True) for b in resumed} & set(answered)
    assert main([*args, f"hydra.run.dir={tmp_path / 'fresh'}"]) == 0  # an uninterrupted run
    resumed_rows = pd.read_csv(run / "predictions.csv")
    fresh_rows = pd.read_csv(tmp_path / "fresh" / "predictions.csv")
    assert resumed_rows[["id", "response"]].equals(fresh_rows[["id", "response"]])
    assert (
        json.loads((run / "metrics.json").read_text())["tasks"]
        == json.loads((tmp_path / "fresh" / "metrics.json").read_text())["tasks"]
    )


def test_hf_backend_through_the_command(synth, tmp_path):
    from panderm.mllm.tiny import build_tiny_qwen2_vl

    model = build_tiny_qwen2_vl(tmp_path / "tiny")
    common = [f"data={synth['set']}", f"image_root={synth['manifest'].parent}", "limit=6"]
    metrics = run_vqa(
        vqa_config(*common, "backend=hf", f"backend.model={model}", "generation.max_new_tokens=8"),
        tmp_path / "r",
    )
    rows = pd.read_csv(tmp_path / "r" / "predictions.csv")
    assert metrics["n"] == 6 and metrics["n_failed"] == 0 and rows["response"].notna().all()
    assert metrics["model"] == str(model) and metrics["backend"] == "hf"
