"""`panderm vqa`: load region-VQA samples, ask a backend through the response cache, score, report.

Outputs in the run folder: `responses.jsonl` (the cache, unless `cache=` points elsewhere),
`predictions.jsonl` and `predictions.csv` (one row per sample: gold, raw reply, extracted answer, status),
`metrics.json`, `figures/boxes.png` (predicted vs true boxes) and `report.md`/`.html`; with `dry_run=true`
(`panderm vqa --dry-run`) only `dry_run.jsonl` and `dry_run.json` (`panderm.mllm.dry_run`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from panderm.data.images import load_image
from panderm.data.sources import load_data
from panderm.errors import ConfigError, ManifestError
from panderm.mllm.backends import Backend, GenerationSettings, build_backend
from panderm.mllm.medrega import read_medrega
from panderm.mllm.region_vqa import make_region_vqa
from panderm.mllm.regions import parse_regions
from panderm.mllm.requests import run_and_close
from panderm.mllm.samples import TASKS, VQASample
from panderm.mllm.scoring import check_region_style, headline, score_run, write_predictions
from panderm.report import Report
from panderm.runs import start_run, write_metrics

log = logging.getLogger(__name__)
CACHE = "responses.jsonl"


def load_samples(cfg: DictConfig, run_dir: Path) -> list[VQASample]:
    """The samples `cfg` selects: from `cfg.data` (MedRegA JSONL) or the generated default set."""
    if cfg.task != "all" and cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r} is not one of all, {', '.join(TASKS)}")
    check_region_style(cfg.region_style)  # before any model call, not when the replies are scored
    if cfg.force_task and cfg.task == "all":
        raise ConfigError("force_task=true needs task=<one task>")
    if cfg.data:
        path, root = Path(cfg.data), cfg.image_root
    else:
        manifest = load_data(cfg.synth, run_dir)
        path = make_region_vqa(manifest.source, run_dir / "region_vqa.jsonl", seed=cfg.seed)
        root = Path(manifest.source).parent  # the set's image paths are relative to the manifest's folder
    samples = read_medrega(
        path,
        image_root=root,
        task=cfg.task if cfg.force_task else None,
        allow_outside_root=cfg.allow_outside_root,
    )
    samples = [
        s for s in samples if (cfg.task == "all" or s.task == cfg.task) and s.language in cfg.languages
    ]
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    missing = [f"{s.id}: {s.image}" for s in samples if s.image is not None and not s.image.is_file()]
    if missing:
        raise ManifestError(
            f"{path} (images under {root or path.parent})", [f"image not found: {m}" for m in missing]
        )
    if not samples:
        raise ConfigError(f"{path}: no samples left for task={cfg.task} and languages={list(cfg.languages)}")
    return samples


def backend_from_config(cfg: DictConfig, *, offline: bool = False) -> Backend:
    """The configured backend (`cfg.backend`, `cfg.generation`); `offline` as in `configured_backend`."""
    b = cfg.backend
    task = cfg.task if b.name == "expert" and cfg.get("force_task") else None
    return configured_backend(b.name, b, cfg.generation, task=task, offline=offline)


def configured_backend(
    name: str, b: DictConfig, generation: DictConfig, *, task: str | None = None, offline: bool = False
) -> Backend:
    """Backend `name` from a backend config node (`model`, `adapter`, `batch_size`, `options`) and decoding
    settings; an option the backend does not take is a ConfigError. `offline`: built for a dry run, loading
    no weights and contacting nothing (`panderm.mllm.dry_run.offline_backend`)."""
    if offline:
        from panderm.mllm.dry_run import offline_backend as build
    else:
        build = build_backend
    options: dict[str, Any] = OmegaConf.to_container(b.options, resolve=True)  # type: ignore[assignment]
    if task is not None:
        options["task"] = task
    if b.model is not None:
        options["model"] = b.model
    settings = GenerationSettings(**OmegaConf.to_container(generation, resolve=True))  # type: ignore[arg-type]
    try:
        return build(name, settings=settings, adapter=b.adapter, batch_size=b.batch_size, **options)
    except TypeError as exc:  # an option the backend does not take, or a missing model
        raise ConfigError(f"backend={name}: {exc}; check backend.model and backend.options") from exc


def run_vqa(cfg: DictConfig, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run `panderm vqa` into `run_dir`; returns what metrics.json holds."""
    run_dir = start_run(cfg, run_dir)
    samples = load_samples(cfg, run_dir)
    cache_path = Path(cfg.cache) if cfg.cache else run_dir / CACHE
    if cfg.dry_run:
        from panderm.mllm.dry_run import dry_run

        requests = [(s.id, s.conversation) for s in samples]
        offline = backend_from_config(cfg, offline=True)
        return dry_run(offline, requests, cache_path, run_dir, tokenizer=cfg.dry_run_tokenizer)
    backend = backend_from_config(cfg)
    results = run_and_close(
        backend,
        [s.conversation for s in samples],
        cache_path,
        retries=cfg.retries,
        backoff=cfg.backoff,
        progress=cfg.progress,
        max_failed_fraction=cfg.max_failed_fraction,
    )
    metrics, rows = score_run(samples, results, region_style=cfg.region_style)
    metrics.update(
        backend=backend.name,
        model=backend.model,
        cache=str(cache_path),
        n_cached=sum(r.cached for r in results),
        headline=headline(metrics),
    )
    write_predictions(run_dir, rows)
    write_metrics(run_dir, metrics)
    _report(cfg, run_dir, samples, rows, metrics)
    log.info("vqa: %d samples, %d failed; results in %s", len(samples), metrics["n_failed"], run_dir)
    return metrics


def _report(
    cfg: DictConfig, run_dir: Path, samples: Sequence[VQASample], rows: list[dict], metrics: dict
) -> None:
    report = Report(f"Region VQA: `{metrics['model']}` ({metrics['backend']} backend)")
    source = f"`{cfg.data}`" if cfg.data else f"a region-VQA set generated from `{cfg.synth.name}`"
    failed = f"{metrics['n_failed']} calls failed" + (
        " (left out of the scores, listed below)." if metrics["n_failed"] else "."
    )
    report.text(
        f"{metrics['n']} samples from {source}; {metrics['n_cached']} replies came from the cache; {failed}"
    )
    table = pd.DataFrame([{"metric": k, "value": v} for k, v in metrics["headline"].items()])
    report.table(table, "Headline metric per task (details in metrics.json)")
    figure = plot_boxes(samples, rows, run_dir / "figures" / "boxes.png", n=cfg.shown)
    if figure is not None:
        report.figure(
            figure, "Text-to-Region: true boxes (green) and predicted boxes (red)", relative_to=run_dir
        )
    if metrics["failures"]:
        report.table(pd.DataFrame(metrics["failures"]), "Failed calls")
    report.write(run_dir)


def plot_boxes(samples: Sequence[VQASample], rows: list[dict], path: Path, *, n: int = 12) -> Path | None:
    """A grid of up to `n` images (Text-to-Region samples first, each image once) with the true (green) and
    predicted (red, dashed) boxes."""
    candidates = [
        (s, r)
        for s, r in zip(samples, rows, strict=True)
        if s.task in ("text_to_region", "grounded_report") and s.image is not None and s.width and s.height
    ]
    candidates.sort(key=lambda pair: pair[0].task != "text_to_region")  # stable: keeps the file order
    first: dict[Path, tuple[VQASample, dict]] = {}
    for sample, row in candidates:
        first.setdefault(sample.image, (sample, row))  # type: ignore[arg-type]
    shown = list(first.values())[:n]
    if not shown:
        return None
    cols = min(4, len(shown))
    fig, axes = plt.subplots(-(-len(shown) // cols), cols, figsize=(3 * cols, 3 * -(-len(shown) // cols)))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, (sample, row) in zip(np.atleast_1d(axes).ravel(), shown, strict=False):
        ax.imshow(load_image(sample.image))
        w, h = sample.width, sample.height
        for boxes, colour, style in (
            (parse_regions(sample.answer, w, h, "medrega").boxes(), "lime", "-"),
            (parse_regions(row["response"] or "", w, h, "medrega").boxes(), "red", "--"),
        ):
            for x1, y1, x2, y2 in boxes:
                ax.add_patch(
                    plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, ls=style, lw=1.5)
                )
        iou = row.get("iou")
        name = Path(sample.image).stem
        label = name if len(name) <= 24 else name[:23] + "…"
        ax.set_title(label + (f"\nIoU {iou:.2f}" if iou is not None else ""), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
