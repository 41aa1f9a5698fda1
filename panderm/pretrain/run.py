"""`panderm pretrain`: build data, encoder, method and trainer from the config, fit (resuming from the run
folder's last checkpoint), export the encoder, and write the loss curve, metrics and report."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from panderm.config import DataSource, EncoderConfig, TeacherConfig
from panderm.data.manifest import Manifest
from panderm.data.sources import load_data
from panderm.data.transforms import MultiView
from panderm.errors import ConfigError
from panderm.io import atomic_write
from panderm.models.checkpoints import load_encoder, load_torch_file, save_encoder
from panderm.models.encoder import Encoder, create_encoder
from panderm.models.masking import MaskGenerator
from panderm.pretrain.datamodule import PretrainDataModule, ShardPretrainDataModule
from panderm.pretrain.methods import build_method
from panderm.pretrain.module import PretrainModule
from panderm.pretrain.monitors import SSLMonitor
from panderm.pretrain.runlog import LogPosition, RunLog
from panderm.pretrain.strategy import build_strategy
from panderm.report import Report
from panderm.runs import start_run, write_metrics

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
SIGTERM_EXIT = 128 + 15  # the shell's status for a process ended by SIGTERM
LAST = "last.ckpt"


def build_encoder(cfg: EncoderConfig | DictConfig) -> Encoder:
    """A fresh encoder from the config, or one loaded from `cfg.weights` (a panderm encoder export)."""
    if cfg.weights:
        return load_encoder(cfg.weights).train()
    encoder = create_encoder(
        cfg.arch,
        cfg.patch_size,
        cfg.image_size,
        depth=cfg.depth,
        init_values=cfg.init_values,
        pos_embed=cfg.pos_embed,
        drop_path_rate=cfg.drop_path_rate,
    )
    encoder.set_grad_checkpointing(cfg.grad_checkpointing)
    return encoder


def build_teacher(cfg: TeacherConfig | DictConfig, encoder: Encoder) -> torch.nn.Module | None:
    """The frozen open_clip teacher (re-normalising from the student's mean/std), or None for kind=none."""
    if cfg.kind == "none":
        return None
    if cfg.kind != "openclip":
        raise ConfigError(f"teacher.kind={cfg.kind!r} is not 'none' or 'openclip'")
    from panderm.models.teachers import OpenClipTeacher

    return OpenClipTeacher(
        cfg.model_name,
        weights=cfg.weights,
        image_size=cfg.image_size or encoder.spec.image_size,
        student_mean=encoder.spec.mean,
        student_std=encoder.spec.std,
    )


def build_trainer(cfg: DictConfig, run_dir: Path, extra_callbacks: Sequence[Any] = ()) -> L.Trainer:
    """A Lightning Trainer from `cfg.trainer`: step checkpoints (+ last.ckpt), the CSV log kept across
    resumes (`RunLog`), progress bar, and `extra_callbacks`."""
    t = cfg.trainer
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINTS,
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_last=True,
        save_top_k=1,
        # On SIGTERM (or a crash) Lightning stops after the current batch; this writes last.ckpt right there.
        save_on_exception=True,
    )
    callbacks: list[Any] = [checkpoint, LogPosition(), *extra_callbacks]
    if t.progress_bar:
        callbacks.append(RichProgressBar())
    loggers: list[Any] = [RunLog(run_dir)]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    except ModuleNotFoundError:  # tensorboard is optional
        pass
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(t),
        precision=t.precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=cfg.optim.clip_grad,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=t.progress_bar,
        default_root_dir=run_dir,
        use_distributed_sampler=False,  # EpochSampler / ShardStream split the data across ranks themselves
    )


def resume_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The run folder's `checkpoints/last.ckpt`, read safely (tensors mapped, not loaded), or None when the
    run starts afresh. Raises `CheckpointError` naming the file, and what to do, when it cannot be read with
    `torch.load(weights_only=True)`: it would run code, or it is damaged."""
    last = run_dir / CHECKPOINTS / LAST
    if not last.is_file():
        return None
    return load_torch_file(
        last,
        mmap=True,
        advice=(
            "panderm writes only tensors and plain values into its checkpoints, so this one was not "
            "written by panderm or is damaged; delete it to start the run over, or use a new folder "
            "(hydra.run.dir=...)"
        ),
    )


def fit_resumable(
    trainer: L.Trainer, module: L.LightningModule, data: L.LightningDataModule, run_dir: Path
) -> None:
    """`trainer.fit`, resuming from `<run_dir>/checkpoints/last.ckpt` when it exists (checked first by
    `resume_checkpoint`, then loaded with weights_only) and keeping `logs/metrics.csv` up to that checkpoint.
    On SIGTERM (after last.ckpt is written at the current batch) exits with status 143 so schedulers see an
    unfinished job."""
    last = run_dir / CHECKPOINTS / LAST
    checkpoint = resume_checkpoint(run_dir)
    if checkpoint is not None:
        log.info("resuming from %s", last)
    for logger in trainer.loggers:
        if isinstance(logger, RunLog):
            logger.resume_from(checkpoint)
    try:
        trainer.fit(
            module,
            datamodule=data,
            ckpt_path=str(last) if checkpoint is not None else None,
            weights_only=True,
        )
    except SIGTERMException:
        log.warning(
            "stopped by SIGTERM at step %d; run again with hydra.run.dir=%s to resume",
            trainer.global_step,
            run_dir,
        )
        raise SystemExit(SIGTERM_EXIT) from None


def build_datamodule(
    cfg: DictConfig,
    run_dir: Path,
    masks: MaskGenerator,
    manifest: Manifest | None,
    *,
    views: MultiView | None = None,
    num_masks: int = 1,
) -> PretrainDataModule | ShardPretrainDataModule:
    """The manifest's DataModule, or for `data.source=shards` the one streaming the shards at `data.path`;
    `views` and `num_masks` are the method's (`Method.view_transform`, `Method.num_masks`)."""
    common: dict[str, Any] = dict(
        views=views,
        num_masks=num_masks,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        train_splits=list(cfg.train_splits),
        val_split="val" if cfg.online_probe else None,
        balance_modalities=cfg.balance_modalities,
        on_bad_image=cfg.data.on_bad_image,
        seed=cfg.seed,
    )
    if manifest is not None:
        return PretrainDataModule(manifest, run_dir, masks, **common)
    if OmegaConf.is_missing(cfg.data, "path") or not cfg.data.path:
        raise ConfigError(
            "data.path is required for data.source=shards: the folder OUT that `panderm shard MANIFEST OUT` "
            "wrote"
        )
    return ShardPretrainDataModule(cfg.data.path, run_dir, masks, **common)


def _curve(
    ax: Any, frame: pd.DataFrame, column: str, style: str, label: str, color: str | None = None
) -> bool:
    if column not in frame:
        return False
    points = frame.dropna(subset=[column])
    if points.empty:
        return False
    ax.plot(points["step"], points[column], style, label=label, color=color)
    return True


def plot_pretrain(run_dir: Path, path: Path) -> Path | None:
    """The training loss per step (and per epoch) from the CSV log and, beside it, the monitors that say
    whether SSL is working: kNN balanced accuracy on validation features and the online probe; the
    features' effective rank (RankMe) and the teacher's entropy (DINO/iBOT)."""
    metrics_csv = run_dir / "logs" / "metrics.csv"
    if not metrics_csv.is_file():
        return None
    frame = pd.read_csv(metrics_csv)
    if not any(c in frame for c in ("train/loss_step", "train/loss_epoch")):
        return None
    fig, (loss_ax, acc_ax, rank_ax) = plt.subplots(1, 3, figsize=(13, 3.5))
    _curve(loss_ax, frame, "train/loss_step", "-", "training loss (step)")
    _curve(loss_ax, frame, "train/loss_epoch", "o--", "training loss (epoch)")
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    loss_ax.legend(loc="upper right", fontsize=8)
    shown = _curve(acc_ax, frame, "monitor/knn_bacc", "o-", "kNN (val, leave-one-out)")
    shown |= _curve(acc_ax, frame, "val/probe_balanced_accuracy", "s--", "online linear probe (val)")
    acc_ax.set(xlabel="step", ylabel="balanced accuracy", title="does it learn?")
    if shown:
        acc_ax.legend(loc="lower right", fontsize=8)
    _curve(rank_ax, frame, "monitor/rankme", "o-", "RankMe (val features)", "tab:green")
    rank_ax.set(xlabel="step", ylabel="effective rank", title="collapse checks")
    if "train/teacher_entropy_step" in frame:
        twin = rank_ax.twinx()
        _curve(twin, frame, "train/teacher_entropy_step", "-", "teacher entropy", "tab:purple")
        twin.set_ylabel("teacher entropy (nats)", color="tab:purple")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def plot_loss(
    run_dir: Path,
    path: Path,
    secondary: tuple[str, str] = ("val/probe_balanced_accuracy", "online probe bal. acc. (val, orange)"),
) -> Path | None:
    """Training loss per step (and per epoch) from the CSV log, with a validation metric (`secondary`:
    column, axis label) on a second axis when logged."""
    metrics_csv = run_dir / "logs" / "metrics.csv"
    if not metrics_csv.is_file():
        return None
    frame = pd.read_csv(metrics_csv)
    curves = [c for c in ("train/loss_step", "train/loss_epoch") if c in frame]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for column, style in zip(curves, ("-", "o--"), strict=False):
        points = frame.dropna(subset=[column])
        ax.plot(points["step"], points[column], style, label=column.replace("train/", "training "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    column, label = secondary
    if column in frame:
        points = frame.dropna(subset=[column])
        twin = ax.twinx()
        twin.plot(points["step"], points[column], "s-", color="tab:orange")
        twin.set_ylabel(label)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def run_pretrain(cfg: DictConfig, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Pretrain into `run_dir` (resuming from its `checkpoints/last.ckpt` when present); returns metrics."""
    run_dir = start_run(cfg, run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    shards = DataSource(cfg.data.source) is DataSource.shards
    manifest = None if shards else load_data(cfg.data, run_dir)
    encoder = build_encoder(cfg.encoder)
    teacher = build_teacher(cfg.teacher, encoder)
    options = OmegaConf.to_container(cfg.objective.options, resolve=True)
    method = build_method(cfg.objective.name, encoder, **({"teacher": teacher} if teacher else {}), **options)
    masks = MaskGenerator(
        kind=cfg.objective.mask_kind, ratio=cfg.objective.mask_ratio, grid=encoder.grid_size
    )
    if cfg.trainer.compile:
        for block in encoder.vit.blocks:
            block.compile()
    data = build_datamodule(
        cfg, run_dir, masks, manifest, views=method.view_transform(cfg.image_size), num_masks=method.num_masks
    )
    module = PretrainModule(
        encoder,
        method,
        lr=cfg.optim.lr,
        base_lr=cfg.optim.base_lr,
        batch_size=cfg.batch_size,
        weight_decay=cfg.optim.weight_decay,
        layer_decay=cfg.optim.layer_decay,
        warmup_steps=cfg.optim.warmup_steps,
        warmup_fraction=cfg.optim.warmup_fraction,
        betas=tuple(cfg.optim.betas),
        num_classes=data.num_classes if cfg.online_probe else None,
        probe_lr=cfg.optim.probe_lr,
        on_nonfinite=cfg.on_nonfinite,
    )
    monitors = []
    if cfg.monitor.every_n_steps > 0:
        monitors.append(
            SSLMonitor(cfg.monitor.every_n_steps, max_images=cfg.monitor.max_images, k=cfg.monitor.k)
        )
    trainer = build_trainer(cfg, run_dir, monitors)
    fit_resumable(trainer, module, data, run_dir)
    metrics: dict[str, Any] = {
        key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1
    }
    metrics["global_step"] = trainer.global_step
    if trainer.is_global_zero:
        recipe = OmegaConf.to_container(cfg, resolve=True)
        save_encoder(encoder, run_dir / "encoder", recipe=recipe)
        curve = plot_pretrain(run_dir, run_dir / "figures" / "pretrain_loss.png")
        write_metrics(run_dir, metrics)
        report = Report("panderm pretrain")
        report.text(
            f"`{cfg.objective.name}` on `{cfg.data.name}` ({data.num_train_images} training images), "
            f"encoder {cfg.encoder.arch}/{cfg.encoder.patch_size} at {cfg.image_size} px, "
            f"{trainer.global_step} steps. "
            "The exported encoder is `encoder.safetensors` (+ `encoder.json`)."
        )
        if curve:
            report.figure(
                curve,
                "training loss, kNN/online-probe accuracy, RankMe and teacher entropy",
                relative_to=run_dir,
            )
        report.table(pd.DataFrame([metrics]), "Final metrics")
        report.write(run_dir)
    return metrics
