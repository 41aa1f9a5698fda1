"""`panderm icl`: load problems, build the strategy's prompts, ask a backend through the response cache,
extract and score answers, analyse, report.

Outputs in the run folder: `responses.jsonl` (the cache, unless `cache=` points elsewhere), `results.csv`
(one row per prompt, SMMILE's columns first: `problem_id, final_question, true_answer, generated_answer,
full_response`, then ours; `panderm icl score` reads it), `per_problem.csv`, `metrics.json`, figures and
`report.md`/`.html`; with `dry_run=true` (`panderm icl --dry-run`) only `dry_run.jsonl` and `dry_run.json`
(`panderm.mllm.dry_run`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from panderm.data.sources import load_data
from panderm.errors import ConfigError
from panderm.io import write_csv
from panderm.mllm.cache import CacheResult, ResponseCache
from panderm.mllm.conversation import Conversation
from panderm.mllm.icl import analysis
from panderm.mllm.icl.embeddings import ImageEmbedder
from panderm.mllm.icl.judge import judge_accuracy, judge_rows
from panderm.mllm.icl.mcqa import MCQAOptions, build_options, extract_choice, mcqa_question
from panderm.mllm.icl.problems import ProblemSet, load_problems
from panderm.mllm.icl.prompts import icl_conversation
from panderm.mllm.icl.scoring import score_frame
from panderm.mllm.icl.strategies import (
    ORDER_ONLY,
    Similarity,
    Variant,
    make_variants,
    matches_query,
    one_order_per_problem,
)
from panderm.mllm.icl.synth import make_icl_problems
from panderm.mllm.regions import strip_regions
from panderm.mllm.requests import run_and_close
from panderm.mllm.run import configured_backend
from panderm.report import Report
from panderm.runs import start_run, write_metrics

log = logging.getLogger(__name__)
CACHE = "responses.jsonl"
MODES = ("open", "mcqa")


def problem_set(cfg: DictConfig, run_dir: Path) -> ProblemSet:
    """The problems `cfg` selects: `cfg.problems`, or a set generated from `cfg.synth`."""
    if cfg.problems:
        return load_problems(
            cfg.problems, image_root=cfg.image_root, allow_outside_root=cfg.allow_outside_root
        )
    manifest = load_data(cfg.synth, run_dir)
    path = make_icl_problems(
        manifest.source, run_dir / "problems.jsonl", n_problems=cfg.n_problems, seed=cfg.seed
    )
    # written here from the validated manifest, whose images may lie outside the run folder (synth.out_dir)
    return load_problems(path, allow_outside_root=True)


def similarity_from(encoder: str | None) -> Similarity | None:
    """Image similarity by a saved encoder (for the recency strategy's fallback), or None."""
    if not encoder:
        return None
    embedder = ImageEmbedder(encoder)
    return lambda demos, query: embedder.similarity([d.image for d in demos], query.image)


def prompt(variant: Variant, mode: str, mcqa_seed: int) -> tuple[Conversation, MCQAOptions | None]:
    """The variant's conversation and, in MCQA mode, its options (demos stay open-ended)."""
    query = variant.problem.query
    if mode == "open":
        return icl_conversation(variant.demos, query), None
    options = build_options([d.answer for d in variant.demos], query.answer, key=variant.id, seed=mcqa_seed)
    return icl_conversation(variant.demos, query, question=mcqa_question(query.question, options)), options


def result_row(variant: Variant, result: CacheResult, options: MCQAOptions | None) -> dict[str, Any]:
    """One results.csv row (SMMILE's columns first)."""
    problem, demos = variant.problem, variant.demos
    reply = result.response if result.status == "ok" else ""
    relevant = next((i for i, d in enumerate(demos) if matches_query(d, problem.query)), None)
    row: dict[str, Any] = {
        "problem_id": variant.id,
        "final_question": problem.query.question,
        "true_answer": problem.query.answer,
        "generated_answer": strip_regions(reply or "").strip(),  # box markup is not an answer
        "full_response": reply or "",
        "base_problem_id": problem.problem_id,
        "strategy": variant.strategy,
        "variant": variant.name,
        "status": result.status,
        "error": result.error or "",
        "mode": "mcqa" if options else "open",
        "n_demos": len(demos),
        "speciality": problem.speciality,
        "modality": problem.modality,
        "answer_format": problem.answer_format,
        "first_demo_matches": bool(demos) and matches_query(demos[0], problem.query),
        "last_demo_matches": bool(demos) and matches_query(demos[-1], problem.query),
        "relevant_position": relevant,
        "relevant_by": variant.relevant_by,
        "noise_kind": variant.noise_kind,
        "noise_source": variant.noise_source,
        "noise_position": variant.noise_position,
        "cached": result.cached,
    }
    if options is not None:
        letter, method = extract_choice(reply or "", options) if result.status == "ok" else (None, "")
        row.update(
            generated_answer=options.text(letter) if letter else "",
            correct_option=options.correct,
            selected_option=letter or "",
            is_correct=letter == options.correct,
            extraction=method,
            options=" | ".join(f"{k}. {options.text(k)}" for k in options.display),
        )
    return row


def run_icl(cfg: DictConfig, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run `panderm icl` into `run_dir`; returns what metrics.json holds."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is not one of {', '.join(MODES)}")
    run_dir = start_run(cfg, run_dir)
    loaded = problem_set(cfg, run_dir)
    for pid, reason in loaded.excluded.items():
        log.warning("icl: problem %s excluded: %s", pid, reason)
    problems = list(loaded.problems[: cfg.limit] if cfg.limit is not None else loaded.problems)
    if not problems:
        raise ConfigError(f"{loaded.source}: no usable problems ({len(loaded.excluded)} excluded)")
    variants = make_variants(
        problems,
        cfg.strategy,
        seed=cfg.seed,
        permutations=cfg.permutations,
        max_orders=cfg.max_orders,
        similarity=similarity_from(cfg.encoder) if cfg.strategy == "recency" else None,
        noise_source=cfg.noise.source,
        noise_positions=list(cfg.noise.positions),
        noise_replace=cfg.noise.replace,
    )
    if not variants:
        raise ConfigError(f"strategy={cfg.strategy}: no problem of {loaded.source} yields a prompt")
    backend = configured_backend(cfg.backend.name, cfg.backend, cfg.generation, offline=cfg.dry_run)
    one_order = backend.order_invariant and cfg.strategy in ORDER_ONLY
    if one_order:  # its other orders would only repeat the reply
        variants = one_order_per_problem(variants)
    prompts = [prompt(v, cfg.mode, cfg.mcqa_seed) for v in variants]
    cache_path = Path(cfg.cache) if cfg.cache else run_dir / CACHE
    if cfg.dry_run:
        from panderm.mllm.dry_run import dry_run

        requests = [(v.id, c) for v, (c, _) in zip(variants, prompts, strict=True)]
        return dry_run(backend, requests, cache_path, run_dir, tokenizer=cfg.dry_run_tokenizer)
    results = run_and_close(
        backend,
        [c for c, _ in prompts],
        cache_path,
        retries=cfg.retries,
        backoff=cfg.backoff,
        progress=cfg.progress,
        max_failed_fraction=cfg.max_failed_fraction,
    )
    frame = pd.DataFrame(
        [result_row(v, r, o) for v, r, (_, o) in zip(variants, results, prompts, strict=True)]
    )
    metrics: dict[str, Any] = {
        "backend": backend.name,
        "model": backend.model,
        "strategy": cfg.strategy,
        "mode": cfg.mode,
        "problems": len(problems),
        "excluded": dict(loaded.excluded),
        "prompts": len(variants),
        "one_order_per_problem": one_order,
        "n_cached": int(frame["cached"].sum()),
        "cache": str(cache_path),
        "score": score_frame(frame, strict=cfg.strict),
        "summary": analysis.summary(frame, strict=cfg.strict, n_boot=cfg.n_boot, seed=cfg.seed),
        "expected": analysis.expected_accuracy(problems),
    }
    if cfg.judge.backend:
        metrics["judge"] = _judge(cfg, frame, cache_path)
    write_csv(run_dir / "results.csv", frame)
    write_csv(run_dir / "per_problem.csv", analysis.per_problem(frame, strict=cfg.strict))
    write_metrics(run_dir, metrics)
    report_icl(
        run_dir, frame, metrics, title=f"ICL: `{backend.model}` ({backend.name}), strategy {cfg.strategy}"
    )
    log.info("icl: %d prompts over %d problems; results in %s", len(variants), len(problems), run_dir)
    return metrics


def _judge(cfg: DictConfig, frame: pd.DataFrame, cache_path: Path) -> dict[str, Any]:
    """LLM-as-judge columns added to `frame` (in place; rows whose call failed are `skipped`); returns the
    judge's accuracy over the judged rows."""
    judge = configured_backend(
        cfg.judge.backend, cfg.judge, OmegaConf.merge(cfg.generation, {"temperature": 0.0})
    )
    ok = frame["status"] == "ok"
    rows = [
        {"question": q, "true_answer": t, "generated_answer": g}
        for q, t, g in frame.loc[ok, ["final_question", "true_answer", "generated_answer"]].itertuples(
            index=False
        )
    ]
    try:
        with ResponseCache(cache_path) as cache:
            judged = judge_rows(
                judge, rows, cache, retries=cfg.retries, backoff=cfg.backoff, progress=cfg.progress
            )
    finally:
        judge.close()
    frame["judge_reply"], frame["judge_correct"], frame["judge_status"] = "", None, "skipped"
    for key in ("judge_reply", "judge_correct", "judge_status"):
        frame.loc[ok, key] = pd.Series([j[key] for j in judged], index=frame.index[ok], dtype=object)
    return {"backend": judge.name, "model": judge.model, **judge_accuracy(judged)}


def report_icl(
    run_dir: Path, frame: pd.DataFrame, metrics: dict[str, Any], *, title: str, strict: bool = False
) -> Report:
    """Write the run's report (headline, stratified tables, order-sensitivity and noise plots)."""
    report = Report(title)
    score, summary = metrics["score"], metrics["summary"]
    excluded = len(metrics["excluded"])
    report.text(
        f"{metrics['prompts']} prompts over {metrics['problems']} problems ({excluded} excluded for a "
        f"missing image); {metrics['n_cached']} replies came from the cache; accuracy {score['accuracy']}% "
        f"({score['correct']}/{score['n']}, {score.get('failed', 0)} failed calls left out)."
    )
    if metrics.get("one_order_per_problem"):
        report.text(
            f"The `{metrics['backend']}` backend's replies do not depend on the order of the demos, so each "
            f"problem was asked in one order only (strategy {metrics['strategy']} would only repeat its "
            "reply): every figure counts each problem once, and order sensitivity is zero by construction."
        )
    if "expected" in metrics:
        expected = metrics["expected"]
        report.text(
            f"Floor and ceiling of these {expected['n_problems']} problems (means over problems): a "
            f"uniformly random one of the distinct demo answers scores {expected['random']}% (a random "
            f"demo's answer, as the `random` baseline: {expected['random_demo']}%); copying the demo with "
            f"the query's answer (oracle) scores {expected['oracle']}%, the share of problems with such a "
            "demo."
        )
    if "extraction_failed" in score:
        report.text(
            f"MCQA: no option could be read from {score['extraction_failed']} replies (scored wrong)."
        )
    if "judge" in metrics:
        judge = metrics["judge"]
        report.text(
            f"LLM judge `{judge['model']}`: accuracy {judge['accuracy']}% over the parsed verdicts; "
            f"{judge['unparseable']} unparseable, {judge['failed']} failed calls."
        )
    report.table(pd.DataFrame([{"metric": k, "value": v} for k, v in _flat(summary).items()]), "Summary")
    for by in (
        "n_demos",
        "first_demo_matches",
        "last_demo_matches",
        "speciality",
        "modality",
        "answer_format",
    ):
        if by in frame and frame[by].nunique(dropna=True) > 1:
            report.table(analysis.stratify(frame, by, strict=strict), f"Accuracy by {by}")
    figures = run_dir / "figures"
    for plot, caption in (
        (
            analysis.plot_relevant_position,
            "Accuracy by position of the relevant demo (same answer as the query)",
        ),
        (analysis.plot_permutation_spread, "Per-problem accuracy across demo orders"),
        (analysis.plot_noise_effect, "Accuracy with one irrelevant demo added or swapped in"),
    ):
        path = plot(frame, figures / f"{plot.__name__.removeprefix('plot_')}.png", strict=strict)
        if path is not None:
            report.figure(path, caption, relative_to=run_dir)
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        report.table(failed[["problem_id", "error"]], "Failed calls (left out of every score)")
    report.write(run_dir)
    return report


def _flat(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif not isinstance(value, list | tuple) or len(value) <= 2:
            out[f"{prefix}{key}"] = value
    return out
