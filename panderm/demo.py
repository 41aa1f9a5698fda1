"""`panderm demo`: the main job. Generates the embedded default data and reports every stage.

Each stage is a function `(ctx) -> None` that adds a section to the report and its figures to
`figures/`; later capabilities append their stage to `STAGES`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from panderm.data.manifest import Manifest
from panderm.data.overview import add_overview, loading_check
from panderm.data.sources import SKIPPED_IMAGES, load_data, make_dataset
from panderm.data.transforms import eval_transform
from panderm.report import Report
from panderm.runs import start_run, write_metrics

log = logging.getLogger(__name__)


@dataclass
class DemoContext:
    """What stages share: the config, the run folder, the report, metrics, and the data sets built so far."""

    cfg: DictConfig
    run_dir: Path
    report: Report
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Manifest] = field(default_factory=dict)

    @property
    def figures(self) -> Path:
        return self.run_dir / "figures"


def data_stage(ctx: DemoContext) -> None:
    """Generate SynthDerm and SynthCXR, describe them (counts, sample grids with masks and boxes) and decode
    every image once through the evaluation pipeline (bad images follow `data.on_bad_image`)."""
    for data_cfg in (ctx.cfg.data, ctx.cfg.radiology):
        manifest = load_data(data_cfg, ctx.run_dir)
        ctx.data[data_cfg.name] = manifest
        metrics = add_overview(
            ctx.report,
            manifest,
            data_cfg.name,
            ctx.figures,
            n_samples=ctx.cfg.overview.n_samples,
            columns=list(ctx.cfg.overview.columns),
            seed=ctx.cfg.seed,
            on_bad_image=data_cfg.on_bad_image,
        )
        dataset = make_dataset(manifest, data_cfg, ctx.run_dir, eval_transform(ctx.cfg.image_size))
        check = loading_check(dataset)
        skipped = f"; {check['skipped']} skipped, listed in `{SKIPPED_IMAGES}`" if check["skipped"] else ""
        ctx.report.text(
            f"Loading check: {check['loaded']} images decoded through the {ctx.cfg.image_size}-px evaluation "
            f"pipeline at {check['images_per_s']:.0f} images/s{skipped}."
        )
        ctx.metrics.setdefault("data", {})[data_cfg.name] = {**metrics, "loading": check}


STAGES: list[tuple[str, Callable[[DemoContext], None]]] = [("data", data_stage)]


def run_demo(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Run every stage into `run_dir`; writes config.yaml, metrics.json, report.md/html, figures/."""
    run_dir = start_run(cfg, run_dir)
    report = Report("panderm demo")
    report.text(
        f"The end-to-end tour of panderm on `{cfg.data.name}` and `{cfg.radiology.name}` (the embedded "
        f"synthetic data unless overridden). Seed {cfg.seed}, image size {cfg.image_size} px; the resolved "
        "configuration is in `config.yaml`."
    )
    ctx = DemoContext(cfg, run_dir, report)
    timings = {}
    for name, stage in STAGES:
        start = time.perf_counter()
        log.info("demo stage %s", name)
        stage(ctx)
        timings[name] = round(time.perf_counter() - start, 2)
    ctx.metrics["seconds_per_stage"] = timings
    report.heading("Timings")
    report.text(", ".join(f"{name}: {sec:.1f} s" for name, sec in timings.items()))
    write_metrics(run_dir, ctx.metrics)
    report.write(run_dir)
    return run_dir
