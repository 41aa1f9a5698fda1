"""The segmentation LightningModule: MONAI `DiceCELoss` on a `SegmentationModel` (frozen or fine-tuned
encoder), AdamW with layer-wise lr decay over the encoder and warmup-cosine per step, validation Dice."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric

from panderm.models.seg_heads import SegmentationModel
from panderm.pretrain.objectives import check_finite
from panderm.pretrain.optim import build_optimizer, param_groups
from panderm.pretrain.runlog import EpochMeanModule


class SegmentationTask(EpochMeanModule):
    """Trains `model` on batches of `image` (B, 3, S, S) and `mask` (B, S, S) class indices.

    The loss is Dice + cross-entropy over the softmax (MONAI `DiceCELoss`, in fp32); validation logs
    `val/dice`, the mean over images of the foreground Dice of the argmax (an image with an empty true mask
    scores 1 when the prediction is empty too, else 0). A frozen encoder gets no optimiser group; in
    fine-tuning its layer l of depth d trains at lr · layer_decay^(d + 1 - l). `on_nonfinite` is "raise"
    (stop, naming the step) or "skip" (drop the batch).
    """

    def __init__(
        self,
        model: SegmentationModel,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        layer_decay: float | None = 0.75,
        warmup_steps: int = 10,
        betas: tuple[float, float] = (0.9, 0.999),
        on_nonfinite: str = "raise",
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.val_dice = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
        self.settings = dict(lr=lr, weight_decay=weight_decay, layer_decay=layer_decay)
        self.warmup_steps, self.betas, self.on_nonfinite = warmup_steps, betas, on_nonfinite

    def _logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """The model's logits; from the batch's precomputed encoder `maps` (B, blocks, D, h, w) if given."""
        if "maps" in batch:
            return self.model.decode(list(batch["maps"].unbind(1)), batch["image"])
        return self.model(batch["image"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if "image" not in batch:  # every image of the batch was unreadable and skipped
            return None
        logits = self._logits(batch)
        loss = self.loss(logits.float(), batch["mask"][:, None].long())
        if not check_finite(loss, self.global_step, policy=self.on_nonfinite):
            return None  # Lightning skips backward for a None loss
        self.log_train("loss", loss, len(logits), prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "image" not in batch:
            return
        logits = self._logits(batch)
        classes = logits.shape[1]
        pred = F.one_hot(logits.argmax(1), classes).permute(0, 3, 1, 2)
        truth = F.one_hot(batch["mask"].long(), classes).permute(0, 3, 1, 2)
        self.val_dice(pred, truth)

    def on_validation_epoch_end(self) -> None:
        if self.val_dice.get_buffer() is not None:
            self.log("val/dice", self.val_dice.aggregate().item(), prog_bar=True, sync_dist=True)
        self.val_dice.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        heads = [(f"head.{n}", p) for n, p in self.model.head.named_parameters()]
        groups = param_groups(self.model.encoder, heads, **self.settings)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        optimizer, schedule = build_optimizer(
            groups, total_steps=total, warmup_steps=self.warmup_steps, betas=self.betas
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
