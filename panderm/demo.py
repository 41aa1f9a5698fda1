"""`panderm demo`: the main job. Generates the embedded default data and reports every stage.

Each stage is a function `(ctx) -> None` that adds a section to the report and its figures to
`figures/`; `STAGES` names them in order ("module:function", so stages of the packages built on panderm,
such as probes, run without panderm importing them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from panderm.config import PretrainConfig
from panderm.data.manifest import Manifest
from panderm.data.overview import add_overview, loading_check
from panderm.data.sources import SKIPPED_IMAGES, load_data, make_dataset
from panderm.data.transforms import eval_transform
from panderm.pretrain.run import run_pretrain
from panderm.report import Report
from panderm.runs import load_task, start_run, write_metrics

log = logging.getLogger(__name__)


def random_encoder_spec(image_size: int, depth: int | None) -> str:
    """The demo's ViT-tiny/8 (`depth` blocks; None: the architecture's 12) at random init, as a probe encoder
    spec (`random:vit_tiny/8@<size>[,depth=N]`)."""
    return f"random:vit_tiny/8@{image_size}" + (f",depth={depth}" if depth else "")


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

    @property
    def random_encoder(self) -> str:
        """The demo encoder's architecture at random init, as a probe encoder spec."""
        return random_encoder_spec(self.cfg.image_size, self.cfg.pretrain.depth)

    def generated_data(self) -> DictConfig:
        """A copy of the dermatology data config pointing at the images the data stage generated."""
        data = self.cfg.data.copy()
        data.out_dir = str(self.data[data.name].root)
        return data


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


def pretrain_stage(ctx: DemoContext) -> None:
    """Pretrain the default encoder (`panderm pretrain` defaults) on the demo's dermatology data; report the
    loss curve and the online probe. The run folder is `<demo run>/pretrain/`."""
    stage = ctx.cfg.pretrain
    if not stage.enabled:
        return
    cfg = OmegaConf.structured(PretrainConfig)
    cfg.seed, cfg.image_size, cfg.batch_size = ctx.cfg.seed, ctx.cfg.image_size, stage.batch_size
    cfg.data = ctx.generated_data()
    cfg.encoder.image_size, cfg.encoder.depth = ctx.cfg.image_size, stage.depth
    cfg.objective.options = OmegaConf.merge(cfg.objective.options, stage.objective_options)
    cfg.trainer.max_epochs, cfg.trainer.progress_bar = stage.max_epochs, stage.progress_bar
    run_dir = ctx.run_dir / "pretrain"
    metrics = run_pretrain(cfg, run_dir)
    ctx.metrics["pretrain"] = metrics
    ctx.report.heading("Pretraining")
    vit = f"ViT {cfg.encoder.arch}/{cfg.encoder.patch_size}"
    vit += f" ({cfg.encoder.depth} blocks)" if cfg.encoder.depth else ""
    ctx.report.text(
        f"`{cfg.objective.name}` on `{cfg.data.name}`, {vit} at {cfg.image_size} px"
        + (f" ({OmegaConf.to_container(cfg.objective.options)})" if cfg.objective.options else "")
        + ", "
        f"{metrics['global_step']} steps of {cfg.batch_size} images. Run folder: "
        "`pretrain/` (checkpoints, logs, the exported `encoder.safetensors`)."
    )
    curve = run_dir / "figures" / "pretrain_loss.png"
    if curve.is_file():
        ctx.report.figure(
            curve, "pretraining loss and online linear-probe balanced accuracy", relative_to=ctx.run_dir
        )
    shown = {
        k: v for k, v in metrics.items() if k.endswith("_epoch") or k.startswith("val/") or k == "global_step"
    }
    ctx.report.table(pd.DataFrame([shown]), "Final pretraining metrics")


STAGES: list[tuple[str, str]] = [
    ("data", "panderm.demo:data_stage"),
    ("pretrain", "panderm.demo:pretrain_stage"),
    ("probe", "probes.demo_stage:probe_stage"),
    ("longitudinal", "probes.demo_stage:longitudinal_stage"),
    ("segment", "probes.segmentation.demo_stage:segment_stage"),
    ("vqa", "panderm.mllm.demo_stage:vqa_stage"),
    ("icl", "panderm.mllm.icl.demo_stage:icl_stage"),
    ("readers", "readers.demo_stage:readers_stage"),
]


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
        load_task(stage)(ctx)
        timings[name] = round(time.perf_counter() - start, 2)
    ctx.metrics["seconds_per_stage"] = timings
    report.heading("Timings")
    report.text(", ".join(f"{name}: {sec:.1f} s" for name, sec in timings.items()))
    write_metrics(run_dir, ctx.metrics)
    report.write(run_dir)
    return run_dir
