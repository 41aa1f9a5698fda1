"""The demo's ICL stage on a tiny SynthDerm set (the random baseline only, no encoder): floor and ceiling of
the generated problems in the report, recomputed from the problems file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from omegaconf import OmegaConf

from panderm.data.synthetic.synthderm import generate_synthderm
from panderm.mllm.icl.analysis import expected_accuracy
from panderm.mllm.icl.demo_stage import icl_stage
from panderm.mllm.icl.problems import load_problems
from panderm.report import Report


def test_icl_stage_reports_floor_and_ceiling(tmp_path: Path) -> None:
    manifest = generate_synthderm(tmp_path / "data", n_patients=16, image_size=32, seed=0)
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "data": {"source": "synthderm", "name": "synthderm"},
            "icl": {"enabled": True, "baselines": ["random"], "n_problems": 4},
        }
    )
    ctx = SimpleNamespace(
        cfg=cfg,
        run_dir=tmp_path / "run",
        data={"synthderm": SimpleNamespace(source=str(manifest))},
        report=Report("demo"),
        metrics={},
    )
    icl_stage(ctx)
    problems = load_problems(tmp_path / "run" / "icl" / "problems.jsonl", allow_outside_root=True).problems
    expected = expected_accuracy(problems)
    assert expected["n_problems"] == 4 and 0 < expected["random"] <= expected["oracle"] <= 100
    text = ctx.report.markdown()
    assert f"scores {expected['random']}% on average" in text
    assert f"answer scores {expected['oracle']}%" in text
    assert set(ctx.metrics["icl"]) == {"random/smmile_pp"} and "accuracy per problem %" in text
