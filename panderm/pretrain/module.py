"""The pretraining LightningModule (solo-learn style): it owns the encoder, the method's heads, the
optimiser groups and schedule, and an online linear probe on detached features; each method adds its loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from panderm.models.encoder import Encoder
from panderm.pretrain.methods import Method
from panderm.pretrain.methods.base import PROBE_FEATURES
from panderm.pretrain.objectives import check_finite
from panderm.pretrain.optim import build_optimizer, param_groups, scaled_lr, warmup_length
from panderm.pretrain.runlog import EpochMeanModule


class PretrainModule(EpochMeanModule):
    """Self-supervised training of `encoder` with `method` on batches of `image` (B, 3, H, W), or `views`
    for multi-view methods (`image` is then the first view), and `token_mask` when the method masks.

    With `num_classes`, a linear probe on detached, unmasked CLS features trains alongside (its gradient
    never reaches the encoder), at the constant `probe_lr` on batch-normalised features (no affine, as in
    MAE's linear probe, so the features' drifting scale does not matter), and its balanced accuracy on the
    validation loader is logged every epoch.
    The learning rate is `lr`, or `base_lr` scaled by the global batch (`batch_size` x processes x
    accumulation) / 256; warm-up lasts `warmup_steps`, or `warmup_fraction` of the run.
    `on_nonfinite` is "raise" (stop, naming the step) or "skip" (drop the batch).
    """

    def __init__(
        self,
        encoder: Encoder,
        method: Method,
        *,
        lr: float | None = None,
        base_lr: float = 1e-3,
        batch_size: int = 64,
        weight_decay: float = 0.05,
        layer_decay: float | None = None,
        warmup_steps: int | None = None,
        warmup_fraction: float = 0.1,
        total_steps: int | None = None,
        betas: tuple[float, float] = (0.9, 0.95),
        num_classes: int | None = None,
        probe_lr: float = 1e-3,
        on_nonfinite: str = "raise",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.method = method
        # "drop" methods never use the mask token; a parameter without gradient would break DDP.
        encoder.mask_token.requires_grad_(method.mask_mode == "replace")
        self.hparams_dict = dict(lr=lr, weight_decay=weight_decay, layer_decay=layer_decay, betas=betas)
        self.base_lr, self.batch_size = base_lr, batch_size
        self.warmup_steps, self.warmup_fraction = warmup_steps, warmup_fraction
        self.total_steps = total_steps
        self.probe_lr = probe_lr
        self.on_nonfinite = on_nonfinite
        self.probe = (
            nn.Sequential(
                nn.BatchNorm1d(encoder.embed_dim, affine=False), nn.Linear(encoder.embed_dim, num_classes)
            )
            if num_classes
            else None
        )
        self.probe_accuracy = MulticlassAccuracy(num_classes, average="macro") if num_classes else None
        self._stepped = False

    def _total_steps(self) -> int:
        if not self.total_steps:  # estimated once: every step asks, and the estimate re-inspects the loop
            self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        return self.total_steps

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self._stepped = False
        if "image" not in batch:  # every image of the batch was unreadable and skipped
            return None
        images = batch["image"]
        out = self.method(
            self.encoder,
            batch.get("views", images),
            batch.get("token_mask"),
            step=self.global_step,
            total_steps=self._total_steps(),
        )
        probe_features = out.pop(PROBE_FEATURES, None)
        loss = out["loss"].float()
        self._stepped = check_finite(loss, self.global_step, policy=self.on_nonfinite)
        if not self._stepped:
            return None  # Lightning skips backward for a None loss
        for name, value in out.items():
            # per step (every log_every_n_steps) and per epoch, so short runs still get a curve
            self.log_train(name, value, len(images), prog_bar=name == "loss")
        if self.probe is not None:
            loss = loss + self._probe_step(images, batch["label"], probe_features)
        return loss

    def _probe_step(
        self, images: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None
    ) -> torch.Tensor:
        """The probe's loss on `features` (the method's detached CLS of `images`) or, without them, on the
        encoder's features of `images`, computed here without gradient."""
        labelled = labels >= 0
        if int(labelled.sum()) < 2:  # batch statistics need two samples
            return images.new_zeros(())
        if features is None:
            with torch.no_grad():
                features = self.encoder.features(images[labelled])
        else:
            features = features[labelled]
        probe_loss = F.cross_entropy(self.probe(features), labels[labelled])
        self.log("train/probe_loss", probe_loss.detach(), sync_dist=True)
        return probe_loss

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # The probe is left out of the norm: its batch-norm gradients differ between one process and DDP,
        # and it must never change how far the encoder moves.
        if gradient_clip_val:
            params = [p for m in (self.encoder, self.method) for p in m.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # After the real optimiser step (not per micro-batch, not for a skipped batch): e.g. the EMA update.
        super().optimizer_step(*args, **kwargs)
        if self._stepped:
            self.method.on_after_optimizer_step(self.encoder, self.global_step, self._total_steps())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.probe is None:
            return
        labelled = batch["label"] >= 0
        if bool(labelled.any()):
            logits = self.probe(self.encoder.features(batch["image"][labelled]))
            self.probe_accuracy.update(logits, batch["label"][labelled])

    def on_validation_epoch_end(self) -> None:
        if self.probe is not None:
            self.log("val/probe_balanced_accuracy", self.probe_accuracy.compute(), sync_dist=True)
            self.probe_accuracy.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        heads = [(f"method.{n}", p) for n, p in self.method.named_parameters()]
        settings = {k: self.hparams_dict[k] for k in ("weight_decay", "layer_decay")}
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        world = self.trainer.world_size if self._trainer is not None else 1
        lr = scaled_lr(self.base_lr, self.batch_size * world * accumulate, self.hparams_dict["lr"])
        groups = param_groups(self.encoder, heads, lr=lr, **settings)
        if self.probe is not None:
            probe = list(self.probe.parameters())
            groups.append({"params": probe, "lr": self.probe_lr, "weight_decay": 0.0, "scheduled": False})
        optimizer, schedule = build_optimizer(
            groups,
            total_steps=self._total_steps(),
            warmup_steps=warmup_length(self._total_steps(), self.warmup_steps, self.warmup_fraction),
            betas=self.hparams_dict["betas"],
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
