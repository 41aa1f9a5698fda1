"""`panderm icl` end to end: baselines on generated SynthDerm problems, MCQA, recency/noise with kNN-ICL, the
hf backend, `panderm icl score`, kill-and-resume (openai backend against the local server) and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from panderm.cli import main
from panderm.config import register_configs
from panderm.errors import ConfigError, DataError
from panderm.mllm.icl.analysis import expected_accuracy
from panderm.mllm.icl.problems import load_problems
from panderm.mllm.icl.run import run_icl
from panderm.mllm.icl.scoring import smmile_normalise
from panderm.models.checkpoints import save_encoder
from panderm.models.encoder import create_encoder
from panderm.paths import config_dir
from tests.conftest import shared_path
from tests.mllm.helpers import kill_when_held


def icl_config(*overrides: str):
    register_configs()
    with initialize_config_dir(str(config_dir("icl")), version_base="1.3"):
        return compose("icl", overrides=["progress=false", "n_boot=200", *overrides])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("icl")
    torch.manual_seed(0)
    encoder = save_encoder(
        create_encoder("vit_tiny", patch_size=8, image_size=32, depth=1), folder / "encoder"
    )
    # the generated data goes under base/, so the problems file's images lie under its folder
    data = ["synth.n_patients=16", "synth.image_size=32", "n_problems=8"]
    run_icl(icl_config(*data, "strategy=original"), folder / "base")  # writes problems.jsonl
    return {"folder": folder, "encoder": encoder, "problems": folder / "base" / "problems.jsonl"}


def majority(answers: list[str]) -> str:
    """Independent majority with the documented tie rule (first in the prompt)."""
    keys = [smmile_normalise(a) for a in answers]
    best = max(keys.count(k) for k in keys)
    return answers[next(i for i, k in enumerate(keys) if keys.count(k) == best)]


def test_smmile_pp_with_the_majority_baseline(setup, tmp_path):
    run = tmp_path / "run"
    metrics = run_icl(icl_config(f"problems={setup['problems']}", "strategy=smmile_pp"), run)
    problems = load_problems(setup["problems"]).problems
    counts = {2: 2, 3: 6, 4: 24, 5: 24}
    rows = pd.read_csv(run / "results.csv", keep_default_na=False)
    assert metrics["prompts"] == len(rows) == sum(counts[len(p.demos)] for p in problems)
    assert list(rows.columns[:5]) == [
        "problem_id",
        "final_question",
        "true_answer",
        "generated_answer",
        "full_response",
    ]
    assert rows["problem_id"].str.match(r".+_perm_\d+$").all() and set(rows["status"]) == {"ok"}
    # perm_1 of every problem is the original order: the majority of its demos, recomputed here
    first = rows[rows["variant"] == "perm_1"].set_index("base_problem_id")
    for p in problems:
        assert first.loc[p.problem_id, "generated_answer"] == majority([d.answer for d in p.demos])
    correct = (
        rows["generated_answer"].map(smmile_normalise) == rows["true_answer"].map(smmile_normalise)
    ).sum()
    assert metrics["score"]["correct"] == correct and metrics["score"]["n"] == len(rows)
    assert metrics["score"]["accuracy"] == round(100 * correct / len(rows), 2)
    per_problem = pd.read_csv(run / "per_problem.csv")
    assert len(per_problem) == len(problems)
    assert metrics["expected"] == expected_accuracy(problems)  # floor and ceiling beside the results
    assert f"(oracle) scores {metrics['expected']['oracle']}%" in (run / "report.md").read_text()
    for name in ("report.md", "metrics.json", "responses.jsonl", "figures/permutation_spread.png"):
        assert (run / name).is_file(), name
    again = run_icl(icl_config(f"problems={setup['problems']}", "strategy=smmile_pp"), run)
    assert again["n_cached"] == again["prompts"] and again["score"] == metrics["score"]


def test_score_command_reads_our_results(setup, tmp_path, capsys):
    run_icl(icl_config(f"problems={setup['problems']}", "strategy=original"), tmp_path / "r")
    assert main(["icl", "score", str(tmp_path / "r" / "results.csv")]) == 0
    printed = json.loads(capsys.readouterr().out.strip())
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert {k: printed[k] for k in ("n", "correct", "accuracy")} == {
        k: metrics["score"][k] for k in ("n", "correct", "accuracy")
    }


@pytest.mark.shared_data
def test_score_command_on_smmile_files(capsys):
    names = ("result_qwen32B_ICL_open.csv", "result_random_ICL.csv")
    files = [shared_path("smmile_results", name) for name in names]
    assert main(["icl", "score", *map(str, files)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["n"], r["correct"], r["accuracy"]) for r in lines] == [(111, 35, 31.53), (111, 26, 23.42)]
    assert main(["icl", "score", "missing.csv"]) == 1


def test_mcqa_mode(setup, tmp_path):
    metrics = run_icl(
        icl_config(f"problems={setup['problems']}", "strategy=original", "mode=mcqa"), tmp_path / "m"
    )
    rows = pd.read_csv(tmp_path / "m" / "results.csv", keep_default_na=False)
    assert set(rows["extraction"]) == {"text"}  # the baseline replies with an option's text
    assert (rows["is_correct"] == (rows["selected_option"] == rows["correct_option"])).all()
    assert (rows["is_correct"] == (rows["generated_answer"] == rows["true_answer"])).all()
    assert metrics["score"]["metric"] == "is_correct"
    assert (
        metrics["score"]["correct"] == rows["is_correct"].sum() and metrics["score"]["extraction_failed"] == 0
    )
    assert "MCQA: no option could be read from 0 replies" in (tmp_path / "m" / "report.md").read_text()


def test_knn_icl_is_order_free_and_noise_runs(setup, tmp_path):
    knn = ["backend=knn_icl", f"encoder={setup['encoder']}", f"problems={setup['problems']}"]
    metrics = run_icl(icl_config(*knn, "strategy=smmile_pp"), tmp_path / "p")
    problems = load_problems(setup["problems"]).problems
    # the nearest demo does not depend on the order: one prompt per problem, in the first SMMILE++ order
    assert metrics["one_order_per_problem"] and metrics["prompts"] == len(problems)
    rows = pd.read_csv(tmp_path / "p" / "results.csv", keep_default_na=False)
    assert rows["base_problem_id"].tolist() == [p.problem_id for p in problems]
    assert "asked in one order only" in (tmp_path / "p" / "report.md").read_text()
    majority = run_icl(icl_config(f"problems={setup['problems']}", "strategy=smmile_pp"), tmp_path / "m")
    assert not majority["one_order_per_problem"] and majority["prompts"] > len(problems)
    first_orders = pd.read_csv(tmp_path / "m" / "results.csv", keep_default_na=False)
    first_orders = first_orders.drop_duplicates("base_problem_id")["problem_id"].tolist()
    assert rows["problem_id"].tolist() == first_orders
    recency = run_icl(icl_config(*knn, "strategy=recency"), tmp_path / "r")
    assert recency["prompts"] <= len(problems) and recency["summary"].get("recency") is None
    noise = run_icl(icl_config(*knn, "strategy=noise"), tmp_path / "n")
    rows = pd.read_csv(tmp_path / "n" / "results.csv", keep_default_na=False)
    assert {"clean", "noise_add_first", "noise_replace_last"} <= set(rows["variant"])
    assert (tmp_path / "n" / "figures" / "noise_effect.png").is_file()
    assert metrics["backend"] == "knn_icl" and noise["prompts"] == len(rows)


def test_llm_judge_through_the_command(setup, chat_server, monkeypatch, tmp_path):
    """A judge saying yes exactly when the generated answer equals the reference agrees with exact match."""
    from tests.mllm import chat_server as server_module

    def reply_for(body):
        text = body["messages"][-1]["content"]
        text = text if isinstance(text, str) else "\n".join(p.get("text", "") for p in text)
        fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        return "yes" if fields["Reference answer"] == fields["Generated answer"] else "no"

    monkeypatch.setattr(server_module, "reply_for", reply_for)
    judge = [
        "judge.backend=openai",
        "judge.model=judge-llm",
        f"+judge.options.base_url={chat_server.base_url}",
    ]
    judge.append("+judge.options.api_key_env=null")
    metrics = run_icl(
        icl_config(f"problems={setup['problems']}", "strategy=smmile_pp", *judge), tmp_path / "j"
    )
    rows = pd.read_csv(tmp_path / "j" / "results.csv", keep_default_na=False)
    unique = rows[["final_question", "true_answer", "generated_answer"]].drop_duplicates()
    assert set(rows["judge_status"]) == {"ok"} and len(chat_server.bodies()) == len(unique)  # asked once each
    assert metrics["judge"]["n"] == len(rows) and metrics["judge"]["unparseable"] == 0
    assert metrics["judge"]["correct"] == metrics["score"]["correct"]
    assert {b["temperature"] for b in chat_server.bodies()} == {0.0}
    assert "LLM judge `judge-llm`: accuracy" in (tmp_path / "j" / "report.md").read_text()


def test_zero_shot_with_the_hf_backend(setup, tmp_path):
    from panderm.mllm.tiny import build_tiny_qwen2_vl

    model = build_tiny_qwen2_vl(tmp_path / "tiny")
    overrides = [
        f"problems={setup['problems']}",
        "backend=hf",
        f"backend.model={model}",
        "generation.max_new_tokens=6",
    ]
    metrics = run_icl(icl_config(*overrides, "strategy=zero_shot", "limit=3"), tmp_path / "z")
    rows = pd.read_csv(tmp_path / "z" / "results.csv", keep_default_na=False)
    assert metrics["prompts"] == 3 and set(rows["n_demos"]) == {0} and set(rows["status"]) == {"ok"}


def test_bad_input(setup, tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv"):
        run_icl(icl_config("problems=nope.csv"), tmp_path / "a")
    with pytest.raises(ConfigError, match="mode"):
        run_icl(icl_config(f"problems={setup['problems']}", "mode=closed"), tmp_path / "b")
    with pytest.raises(ConfigError, match="strategy"):
        run_icl(icl_config(f"problems={setup['problems']}", "strategy=shuffle"), tmp_path / "c")
    assert main(["icl", f"problems={tmp_path / 'nope.csv'}", f"hydra.run.dir={tmp_path / 'd'}"]) == 1


@pytest.mark.slow
def test_a_killed_run_resumes_without_repeating_calls(setup, chat_server, tmp_path):
    answered_before_kill = 5
    args = [
        "icl",
        "backend=openai",
        "backend.model=served-model",
        f"backend.options.base_url={chat_server.base_url}",
        "backend.options.api_key_env=null",
        "backend.batch_size=1",
        f"problems={setup['problems']}",
        "strategy=smmile_pp",
        "limit=2",
        "progress=false",
    ]
    n = sum({2: 2, 3: 6}[len(p.demos)] for p in load_problems(setup["problems"]).problems[:2])
    run = tmp_path / "run"
    chat_server.hold_after(answered_before_kill)
    kill_when_held(args, run, chat_server, tmp_path)
    cached = (run / "responses.jsonl").read_text().splitlines()
    assert len(cached) == answered_before_kill
    first = chat_server.bodies()
    chat_server.hold_after(None)
    assert main([*args, f"hydra.run.dir={run}"]) == 0
    resumed = chat_server.bodies()[len(first) :]
    assert len(resumed) == n - answered_before_kill
    answered = {json.dumps(b, sort_keys=True) for b in first[:answered_before_kill]}
    assert not {json.dumps(b, sort_keys=True) for b in resumed} & answered
    assert main([*args, f"hydra.run.dir={tmp_path / 'fresh'}"]) == 0
    columns = ["problem_id", "full_response"]
    resumed_rows = pd.read_csv(run / "results.csv", keep_default_na=False)[columns]
    assert resumed_rows.equals(
        pd.read_csv(tmp_path / "fresh" / "results.csv", keep_default_na=False)[columns]
    )
