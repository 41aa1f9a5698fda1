"""Signals that self-supervised training is working, computed on held-out images while it runs.

- `knn_accuracy`: leave-one-out kNN balanced accuracy among the validation images' features (cosine,
  k neighbours, exp(sim / T) votes divided by class counts); the headline "is it learning" number;
- `rankme`: the effective rank of the features (RankMe, Garrido et al. 2023), which falls when they collapse;
- `feature_std`: the mean per-dimension std of L2-normalised features (SimSiam's collapse check: 0 when
  collapsed, about 1/sqrt(D) when spread).

`SSLMonitor` caches the validation images once (evaluation transform) and logs these every N steps.
The leave-one-out kNN lives here rather than in `probes` because `panderm` never imports `probes`.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor

log = logging.getLogger(__name__)


def rankme(features: Tensor, eps: float = 1e-7) -> float:
    """Effective rank ``exp(H(p))`` of (N, D) features, p the singular values normalised to sum 1."""
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def feature_std(features: Tensor) -> float:
    """Mean over dimensions of the std (over samples) of the L2-normalised (N, D) features."""
    return float(F.normalize(features.double(), dim=1).std(dim=0).mean())


def knn_accuracy(features: Tensor, labels: Tensor, *, k: int = 20, temperature: float = 0.07) -> float:
    """Leave-one-out kNN balanced accuracy of (N, D) features with labels (N,) (rows with label < 0 are
    left out): each image's k most cosine-similar others vote with weight exp(sim / temperature), each
    class's votes divided by its count so the majority class does not win by size."""
    keep = labels >= 0
    x, y = F.normalize(features[keep].double(), dim=1), labels[keep].long()
    if len(y) < 2:
        return float("nan")
    num_classes = int(y.max()) + 1
    sims = x @ x.t()
    sims.fill_diagonal_(-float("inf"))  # leave one out
    top, idx = sims.topk(min(k, len(y) - 1), dim=1)
    weights = torch.exp((top - top[:, :1]) / temperature)
    votes = torch.zeros(len(y), num_classes, dtype=torch.float64).scatter_add_(1, y[idx], weights)
    votes /= torch.bincount(y, minlength=num_classes).clamp_min(1)
    return float(balanced_accuracy_score(y.numpy(), votes.argmax(1).numpy()))


class SSLMonitor(L.Callback):
    """Every `every_n_steps` optimiser steps (and at the end of training), encode up to `max_images` cached
    validation images with the current encoder (eval mode, no gradient) and log ``monitor/knn_bacc`` (when
    labelled), ``monitor/rankme`` and ``monitor/feature_std`` (CLS features)."""

    def __init__(self, every_n_steps: int = 50, *, max_images: int = 2000, k: int = 20) -> None:
        self.every_n_steps, self.max_images, self.k = every_n_steps, max_images, k
        self.images: Tensor | None = None
        self.labels: Tensor | None = None
        self._last_step = -1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaders = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else []
        images, labels, count = [], [], 0
        for batch in loaders if not isinstance(loaders, list) else []:
            if "image" not in batch:
                continue
            images.append(batch["image"])
            labels.append(batch["label"])
            count += len(batch["image"])
            if count >= self.max_images:
                break
        if images:
            self.images = torch.cat(images)[: self.max_images]
            self.labels = torch.cat(labels)[: self.max_images]
        else:
            log.info("no validation images: the SSL monitors are off")

    @torch.no_grad()
    def measure(self, pl_module: L.LightningModule) -> dict[str, float]:
        """The monitors' values for the current encoder (empty without cached images)."""
        if self.images is None or self.labels is None:
            return {}
        encoder = pl_module.encoder
        was_training = encoder.training
        encoder.eval()
        device = next(encoder.parameters()).device
        feats = torch.cat(
            [encoder.features(chunk.to(device)).float().cpu() for chunk in self.images.split(256)]
        )
        encoder.train(was_training)
        out = {"monitor/rankme": rankme(feats), "monitor/feature_std": feature_std(feats)}
        if bool((self.labels >= 0).any()):
            out["monitor/knn_bacc"] = knn_accuracy(feats, self.labels, k=self.k)
        return out

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        values = self.measure(pl_module)
        if values and trainer.loggers:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step)
        for name, value in values.items():
            trainer.callback_metrics[name] = torch.tensor(value)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:  # a fresh run: the encoder at initialisation (a resumed run logged it)
            self._log(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)
