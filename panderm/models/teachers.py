"""Frozen teachers that produce pretraining targets: an open_clip vision tower and an EMA copy of the student.

Both are always in eval mode (their `train()` is a no-op that keeps ``training=False``) and never receive
gradients. `OpenClipTeacher` keeps its CLIP tower outside the module tree (see the class docstring), so
its weights never enter the student's checkpoints or optimiser; `EMATeacher` is a normal (frozen) submodule,
so its weights are saved with the checkpoint and a resumed run continues from the same teacher.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panderm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from panderm.errors import ConfigError
from panderm.models.encoder import Encoder

log = logging.getLogger(__name__)

TargetSource = Literal["block", "ffn"]
TARGET_SOURCES = ("block", "ffn")
TargetNorm = Literal["layer", "instance"]
TARGET_NORMS = ("layer", "instance")


def _autocast_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class OpenClipTeacher(nn.Module):
    """Frozen open_clip vision tower giving token targets, (B, 1 + N_t, D_t), CLS first.

    The tokens are the CLIP tower's last-block outputs after its final LayerNorm (``ln_post``), for the
    class token and every patch, **before** the image projection (D_t = the tower's width, e.g. 768 for
    ViT-B-16); with ``project=True`` all tokens are also multiplied by ``visual.proj`` (D_t = the joint
    embedding dim, e.g. 512, and the CLS token then equals CLIP's image embedding for 'tok'-pooled models).

    Images arrive normalised with the student's mean/std; they are mapped back to [0, 1] pixels and
    re-normalised with CLIP's mean/std (from the model's ``preprocess_cfg``), and resized (bicubic) to the
    tower's image size when they differ.

    `weights` is a local checkpoint file (None = random init, for tests); nothing is downloaded ("hf-hub:"
    names are refused; "local-dir:" names load config and weights from a folder). `model_kwargs` go to
    ``open_clip.create_model`` (config overrides such as a custom ``vision_cfg``).

    The tower is deliberately not a registered submodule: its (large) weights stay out of `parameters()`,
    `state_dict()`, optimisers and DDP/FSDP wrapping of whatever module holds the teacher; `_apply` is
    overridden so `.to()`, `.cuda()` and `.half()` still move it. Raises `ConfigError` for a missing weights
    file, an unknown model or a tower that is not open_clip's own VisionTransformer.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        weights: str | Path | None = None,
        image_size: int | None = None,
        student_mean: Sequence[float] = IMAGENET_MEAN,
        student_std: Sequence[float] = IMAGENET_STD,
        *,
        project: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import open_clip  # deferred: importing open_clip costs ~1 s and only this class needs it

        if model_name.startswith("hf-hub:"):
            raise ConfigError(
                f"teacher model_name={model_name!r} would download from the Hugging Face Hub; download it "
                "once and use 'local-dir:/path/to/folder' or a built-in name with weights=/path/to/file"
            )
        if weights is not None and not Path(weights).is_file():
            raise ConfigError(
                f"teacher weights {str(weights)!r} is not a file; download the open_clip checkpoint for "
                f"{model_name!r} and pass its local path (weights are never downloaded here)"
            )
        try:
            model = open_clip.create_model(
                model_name,
                # an absolute path can never be mistaken for one of open_clip's download tags
                pretrained=str(Path(weights).resolve()) if weights is not None else None,
                force_image_size=image_size,
                pretrained_image=False,
                pretrained_text=False,
                **(model_kwargs or {}),
            )
        except RuntimeError as err:
            raise ConfigError(f"cannot build open_clip teacher {model_name!r}: {err}") from err
        visual = model.visual
        if not isinstance(visual, open_clip.transformer.VisionTransformer):
            raise ConfigError(
                f"teacher {model_name!r} has a {type(visual).__name__} image tower; only open_clip "
                "VisionTransformer towers (ViT-*) give patch tokens here"
            )
        if weights is None:
            log.warning(
                "open_clip teacher %r has random weights (weights=None): its targets are noise", model_name
            )
        del model  # drop the text tower
        visual.requires_grad_(False)
        visual.eval()
        # object.__setattr__ bypasses nn.Module's registration of submodules (see the class docstring)
        object.__setattr__(self, "_visual", visual)
        self.model_name = model_name
        self.project = project
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        clip_mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        clip_std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        # x_clip = (x_student * s_std + s_mean - c_mean) / c_std = x_student * scale + shift
        s_mean, s_std = torch.tensor(student_mean), torch.tensor(student_std)
        c_mean, c_std = torch.tensor(clip_mean), torch.tensor(clip_std)
        self.register_buffer("scale", (s_std / c_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((s_mean - c_mean) / c_std).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    @property
    def visual(self) -> nn.Module:
        """The frozen open_clip VisionTransformer."""
        return self._visual

    @property
    def embed_dim(self) -> int:
        """D_t: the tower's width, or its projection dim with ``project=True``."""
        return self._visual.proj.shape[1] if self.project else self._visual.proj.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self._visual.image_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self._visual.grid_size)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> OpenClipTeacher:
        self._visual._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> OpenClipTeacher:
        """No-op: the teacher always stays in eval mode (trainers call `train()` on every submodule)."""
        return super().train(False)

    def renormalize(self, images: Tensor) -> Tensor:
        """Map student-normalised images (B, 3, H, W) to CLIP's normalisation, in fp32."""
        return images.float() * self.scale + self.shift

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Teacher tokens (B, 1 + N_t, D_t) in fp32 for student-normalised images (B, 3, H, W)."""
        visual = self._visual
        visual.eval()  # in case someone reached the tower directly
        if visual.conv1.weight.device != images.device:
            # a strategy that moves only registered modules (e.g. FSDP) leaves the hidden tower behind
            self.to(images.device)
        x = self.renormalize(images)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False)
        dtype = _autocast_dtype() if x.is_cuda else torch.bfloat16
        with torch.autocast("cuda", dtype=dtype, enabled=x.is_cuda):
            if not x.is_cuda:
                x = x.to(visual.conv1.weight.dtype)
            out = visual.forward_intermediates(
                x,
                indices=[len(visual.transformer.resblocks) - 1],
                normalize_intermediates=True,  # applies ln_post to the last block's output
                output_fmt="NLC",
                output_extra_tokens=True,
                intermediates_only=True,
            )
            tokens = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
            if self.project:
                tokens = tokens @ visual.proj
        return tokens.float()

    def tokens_for_grid(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        """Teacher tokens on the student's patch grid: (B, 1 + gh*gw, D_t).

        When the teacher's grid differs from `grid` (gh, gw), its patch-token map is resampled bilinearly
        (align_corners=False); the CLS token is kept as is.
        """
        tokens = self(images)
        grid = tuple(grid)
        if grid == self.grid_size:
            return tokens
        b, _, d = tokens.shape
        th, tw = self.grid_size
        patches = tokens[:, 1:].transpose(1, 2).reshape(b, d, th, tw)
        patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
        return torch.cat([tokens[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)


def momentum_schedule(step: int, total: int, base: float = 0.996, final: float = 1.0) -> float:
    """EMA momentum rising from `base` (step 0) to `final` (step `total`) along a half cosine.

    ``m = final - (final - base) * (1 + cos(pi * step / total)) / 2``, with `step` clipped to [0, total].
    An unknown or non-positive `total` gives the constant `base`.
    """
    if not total or total <= 0 or not math.isfinite(total):
        return base
    t = min(max(step, 0), total) / total
    return final - (final - base) * (1.0 + math.cos(math.pi * t)) / 2.0


class EMATeacher(nn.Module):
    """Frozen exponential-moving-average copy of a student `Encoder`, giving data2vec-style targets.

    Target recipe (`forward`): run the teacher on the *unmasked* image, take the pre-norm outputs h_i of the
    selected blocks (by default the last k), normalise each token of each h_i over channels with
    ``F.layer_norm`` without affine parameters (eps 1e-6), and average over the blocks:
    ``target = mean_i layer_norm(h_i)``, shape (B, 1 + N, D), CLS first.
    """

    def __init__(self, student: Encoder) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(student)
        self.encoder.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> EMATeacher:
        """No-op: the teacher always stays in eval mode (no dropout/drop-path in targets)."""
        return super().train(False)

    @torch.no_grad()
    def copy_from(self, student: Encoder) -> None:
        """Reset the teacher to the student's current weights (e.g. after loading pretrained weights)."""
        self.encoder.load_state_dict(student.state_dict())

    @torch.no_grad()
    def update(self, student: Encoder, momentum: float) -> None:
        """In place: ``t = momentum * t + (1 - momentum) * s`` for every parameter; buffers are copied."""
        ema_update(self.encoder, student, momentum)

    @torch.no_grad()
    def forward(
        self,
        images: Tensor,
        layers: int | Sequence[int] = 1,
        *,
        source: TargetSource = "block",
        norm: TargetNorm = "layer",
        final_norm: bool = False,
    ) -> Tensor:
        """Targets (B, 1 + N, D) in fp32, averaged over the chosen blocks' outputs.

        `layers` is k (the last k blocks) or explicit 0-based block indices (negative count from the end).
        `source` "block" takes each block's output (the residual stream, data2vec 1), "ffn" the output of its
        MLP before the residual add (data2vec 2.0: less dominated by the input's projection). `norm` "layer"
        normalises each token over channels, "instance" each channel over the tokens of an image (data2vec
        2.0), both without affine parameters; `final_norm` layer-normalises the average once more.
        """
        depth = self.encoder.depth
        if isinstance(layers, int):
            if not 1 <= layers <= depth:
                raise ConfigError(
                    f"top-k layers={layers} must be in [1, {depth}] for a {depth}-block encoder"
                )
            indices = list(range(depth - layers, depth))
        else:
            indices = sorted({i % depth for i in layers})
        if source not in TARGET_SOURCES or norm not in TARGET_NORMS:
            raise ConfigError(
                f"target source={source!r} / norm={norm!r}: expected one of {TARGET_SOURCES} / {TARGET_NORMS}"
            )
        if source == "block":
            _, outputs = self.encoder.tokens(images, return_layers=indices)
        else:
            outputs = []
            blocks = self.encoder.vit.blocks
            hooks = [
                blocks[i].mlp.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for i in indices
            ]
            try:
                self.encoder.tokens(images)
            finally:
                for hook in hooks:
                    hook.remove()
        if norm == "layer":
            normed = [F.layer_norm(h.float(), h.shape[-1:], eps=1e-6) for h in outputs]
        else:
            normed = [F.instance_norm(h.float().transpose(1, 2), eps=1e-6).transpose(1, 2) for h in outputs]
        target = torch.stack(normed).mean(0)
        return F.layer_norm(target, target.shape[-1:], eps=1e-6) if final_norm else target


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: ``t = momentum * t + (1 - momentum) * s`` for every parameter of `teacher`, from the
    parameter of the same name in `student`; buffers are copied. Raises `ConfigError` when names differ."""
    teacher_params = dict(teacher.named_parameters())
    student_params = dict(student.named_parameters())
    if teacher_params.keys() != student_params.keys():
        diff = sorted(teacher_params.keys() ^ student_params.keys())
        raise ConfigError(f"EMA teacher and student differ in parameters: {diff[:5]}")
    names = list(teacher_params)
    t = [teacher_params[n] for n in names]
    s = [student_params[n].detach().to(teacher_params[n].dtype) for n in names]
    # one fused kernel per op over all tensors instead of one launch per parameter
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)
    student_buffers = dict(student.named_buffers())
    for name, buffer in teacher.named_buffers():
        buffer.copy_(student_buffers[name])
