"""The in-context-learning stage of `panderm demo`: offline baselines on ICL problems generated from the
demo data. kNN-ICL answers with the pretrained encoder's nearest demo; majority and random are the usual
floors. Each runs under the SMMILE++ permutations (order sensitivity; kNN-ICL, whose answer never depends
on the order, is asked one order per problem); kNN-ICL also under the noise strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from panderm.config import ICLConfig
from panderm.mllm.icl.run import run_icl
from panderm.mllm.icl.synth import make_icl_problems


def _config(ctx: Any, problems: Path, backend: str, strategy: str, encoder: Path | None) -> Any:
    cfg = OmegaConf.structured(ICLConfig)
    cfg.seed, cfg.problems, cfg.strategy, cfg.progress = ctx.cfg.seed, str(problems), strategy, False
    cfg.allow_outside_root = True  # written by icl_stage from the demo's own data, which lies outside icl/
    cfg.backend.name = backend
    if backend == "knn_icl":
        cfg.encoder = str(encoder)
        cfg.backend.options = {"encoder": str(encoder), "device": "cpu"}
    return cfg


def icl_stage(ctx: Any) -> None:
    """Run `panderm icl` with the baselines into `<demo run>/icl/<backend>-<strategy>/` and report."""
    stage = ctx.cfg.icl
    if not stage.enabled:
        return
    ctx.report.heading("In-context learning (offline baselines)")
    if ctx.cfg.data.source not in ("synthderm", "synthcxr"):
        ctx.report.text(
            f"Skipped: ICL problems are generated from SynthDerm/SynthCXR, not `{ctx.cfg.data.name}`."
        )
        return
    encoder = ctx.run_dir / "pretrain" / "encoder.safetensors"
    baselines = [b for b in stage.baselines if b != "knn_icl" or encoder.is_file()]
    manifest = Path(ctx.data[ctx.cfg.data.name].source)
    problems = make_icl_problems(
        manifest, ctx.run_dir / "icl" / "problems.jsonl", n_problems=stage.n_problems, seed=ctx.cfg.seed
    )
    rows, runs = [], {}
    for backend in baselines:
        strategies = ["smmile_pp", "noise"] if backend == "knn_icl" else ["smmile_pp"]
        for strategy in strategies:
            run_dir = ctx.run_dir / "icl" / f"{backend}-{strategy}"
            metrics = run_icl(_config(ctx, problems, backend, strategy, encoder), run_dir)
            runs[(backend, strategy)] = (run_dir, metrics)
            summary = metrics["summary"]
            rows.append(
                {
                    "baseline": backend,
                    "strategy": strategy,
                    "prompts": metrics["prompts"],
                    "accuracy %": metrics["score"]["accuracy"],
                    "95% CI": _ci(summary),
                    "accuracy per problem %": summary.get("problem_accuracy"),
                    "mean std over orders": (summary.get("permutation_std") or {}).get("mean_std"),
                    "recency gap (last - first)": (summary.get("recency") or {}).get("gap"),
                }
            )
    ctx.metrics["icl"] = {
        f"{b}/{s}": {"accuracy": m["score"]["accuracy"], "prompts": m["prompts"]}
        for (b, s), (_, m) in runs.items()
    }
    ctx.report.text(
        f"{stage.n_problems} problems generated from the `{ctx.cfg.data.name}` test split (2-5 demos from "
        "the training split; most problems have the query's diagnosis among their demos, never outnumbered "
        "by another diagnosis), answered with no LLM. "
        "SMMILE++ asks each problem in every order of its demos (n <= 4) or 24 orders (n >= 5). kNN-ICL "
        "uses the pretrained encoder, so its answer never depends on the order: it is asked one order per "
        "problem (its other orders would only repeat the answer), and it is only as good as the encoder's "
        "neighbourhoods (compare the probe stage's kNN row); majority depends on the order through its tie "
        "rule. Accuracy per problem counts each problem once. The 95% intervals resample problems, not "
        "prompts (a problem's orders are not independent). Per-prompt results are in `icl/`."
    )
    expected = next(iter(runs.values()))[1].get("expected") if runs else None
    if expected:
        ctx.report.text(
            f"Floor and ceiling of these problems: a uniformly random one of a problem's distinct demo "
            f"answers scores {expected['random']}% on average (a random demo's answer, as the random "
            f"baseline answers: {expected['random_demo']}%); an oracle that copies the demo with the query's "
            f"answer scores {expected['oracle']}% (the share of problems that have one)."
        )
    ctx.report.table(pd.DataFrame(rows), "ICL baselines")
    for (backend, strategy), name, caption in (
        (
            ("majority", "smmile_pp"),
            "permutation_spread",
            "Majority baseline: accuracy per problem across demo orders",
        ),
        (
            ("knn_icl", "smmile_pp"),
            "relevant_position",
            "kNN-ICL: accuracy by position of the demo with the query's answer",
        ),
        (
            ("knn_icl", "noise"),
            "noise_effect",
            "kNN-ICL: accuracy with one irrelevant demo added or swapped in",
        ),
    ):
        if (backend, strategy) in runs:
            figure = runs[(backend, strategy)][0] / "figures" / f"{name}.png"
            if figure.is_file():
                ctx.report.figure(figure, caption, relative_to=ctx.run_dir)


def _ci(summary: dict[str, Any]) -> str:
    ci = summary.get("ci")
    return f"{ci[0]:.1f}-{ci[1]:.1f}" if ci else ""
