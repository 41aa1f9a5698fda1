"""Albumentations pipelines: evaluation (PanDerm parity), SSL multi-view training, and segmentation.

Every pipeline takes the image size as a parameter and returns a callable with albumentations' keyword
interface (`t(image=..., mask=..., bboxes=..., box_labels=...)` -> dict); tensors come out CHW float32.
Segmentation pipelines move masks and boxes (pascal_voc pixels) together with the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BOX_PARAMS = dict(format="pascal_voc", label_fields=["box_labels"], clip=True, min_visibility=0.1)


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[A.BasicTransform]:
    return [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]


def _crop_and_flip(image_size: int, scale: tuple[float, float]) -> list[A.BasicTransform]:
    """Random resized crop to a square plus horizontal and vertical flips (lesions have no orientation)."""
    return [
        A.RandomResizedCrop(size=(image_size, image_size), scale=scale, interpolation=cv2.INTER_CUBIC),
        A.HorizontalFlip(),
        A.VerticalFlip(),
    ]


def eval_transform(
    image_size: int = 224,
    *,
    resize_ratio: float = 256 / 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """PanDerm-parity evaluation: shorter side to round(size·256/224) (bicubic), centre crop, normalise.

    With the defaults this is Resize(256) + CenterCrop(224) + ImageNet mean/std, as in PanDerm's probes.
    """
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=round(image_size * resize_ratio), interpolation=cv2.INTER_CUBIC),
            A.CenterCrop(image_size, image_size),
            *_finish(mean, std),
        ]
    )


def train_transform(
    image_size: int = 224,
    *,
    scale: tuple[float, float] = (0.35, 1.0),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Supervised training / fine-tuning: random resized crop, flips, rotation, mild colour jitter."""
    return A.Compose(
        [
            *_crop_and_flip(image_size, scale),
            A.RandomRotate90(),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.8),
            *_finish(mean, std),
        ]
    )


# Colour for skin: brightness/contrast vary strongly (exposure and skin tone are nuisances the encoder should
# ignore; an encoder trained without this learnt little beyond them), saturation mildly, hue barely (redness
# and blue-grey structures are diagnostic, a large hue shift turns a vascular lesion into a blue naevus).
SKIN_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.02)


def ssl_view_transform(
    image_size: int = 224,
    *,
    scale: tuple[float, float] = (0.25, 1.0),
    blur_p: float = 0.5,
    solarize_p: float = 0.0,
    grey_p: float = 0.1,
    jitter: dict[str, float] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """One self-supervised view (BYOL/DINO-style): crop, flips, colour jitter (`SKIN_JITTER` by default),
    grey, blur (sigma scaled with the image size), solarise."""
    max_sigma = max(0.5, 2.0 * image_size / 224)
    return A.Compose(
        [
            *_crop_and_flip(image_size, scale),
            A.RandomRotate90(),
            A.ColorJitter(**(jitter or SKIN_JITTER), p=0.8),
            A.ToGray(p=grey_p),
            A.GaussianBlur(sigma_limit=(0.1, max_sigma), p=blur_p),
            A.Solarize(threshold_range=(0.5, 0.5), p=solarize_p),
            *_finish(mean, std),
        ]
    )


class MultiView:
    """Apply several independent view pipelines to one image; the sample gets `views` (a list of tensors)
    and, as `image`, the first view (so code reading one augmented image, e.g. an online probe, still can)."""

    def __init__(self, views: Sequence[A.Compose]) -> None:
        self.views = list(views)

    def __call__(self, **data: Any) -> dict[str, Any]:
        views = [view(image=data["image"])["image"] for view in self.views]
        return {"views": views, "image": views[0]}


def ssl_two_views(image_size: int = 224, **kwargs: Any) -> MultiView:
    """The standard asymmetric pair of SSL views (second view: less blur, some solarisation)."""
    return multi_crop(image_size, **kwargs)


def multi_crop(
    image_size: int = 224,
    *,
    global_crops: int = 2,
    local_crops: int = 0,
    local_size: int | None = None,
    global_scale: tuple[float, float] = (0.25, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.25),
    solarize_p: float = 0.2,
    **kwargs: Any,
) -> MultiView:
    """DINO's multi-crop: `global_crops` views at `image_size` (the first always blurred, the second rarely
    and sometimes solarised when `solarize_p`, further ones as the second) then `local_crops` small views at
    `local_size` (default image_size // 2) from `local_scale` of the image. `kwargs` go to every view."""
    if global_crops < 1 or local_crops < 0:
        raise ValueError(
            f"multi_crop needs global_crops >= 1 and local_crops >= 0, got {global_crops}, {local_crops}"
        )
    views = [
        ssl_view_transform(
            image_size,
            scale=global_scale,
            blur_p=1.0 if i == 0 else 0.1,
            solarize_p=0.0 if i == 0 else solarize_p,
            **kwargs,
        )
        for i in range(global_crops)
    ]
    small = local_size or image_size // 2
    views += [ssl_view_transform(small, scale=local_scale, blur_p=0.5, **kwargs) for _ in range(local_crops)]
    return MultiView(views)


def segmentation_train_transform(
    image_size: int = 224,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Segmentation training: geometric changes applied to image, mask and boxes alike, then colour."""
    return A.Compose(
        [
            *_crop_and_flip(image_size, (0.5, 1.0)),
            A.Affine(rotate=(-30, 30), scale=(0.9, 1.1), p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
            *_finish(mean, std),
        ],
        bbox_params=A.BboxParams(**BOX_PARAMS),
    )


def segmentation_eval_transform(
    image_size: int = 224,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Segmentation evaluation: resize the whole image (and mask, nearest; boxes scaled) to a square."""
    return A.Compose(
        [A.Resize(image_size, image_size, interpolation=cv2.INTER_CUBIC), *_finish(mean, std)],
        bbox_params=A.BboxParams(**BOX_PARAMS),
    )


def model_input_transform(
    image_size: int | None,
    *,
    scale: float = 1.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """The image part of prediction: resize the whole image to `image_size` (a square), or with
    `image_size=None` keep its size times `scale` (for sliding windows); then normalise."""
    if image_size is not None:
        resize: list[A.BasicTransform] = [A.Resize(image_size, image_size, interpolation=cv2.INTER_CUBIC)]
    elif scale != 1.0:
        resize = [A.RandomScale(scale_limit=(scale - 1, scale - 1), interpolation=cv2.INTER_CUBIC, p=1.0)]
    else:
        resize = []
    return A.Compose([*resize, A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()])


def takes_boxes(transform: Any) -> bool:
    """Whether a pipeline wants `bboxes`/`box_labels` passed (an albumentations Compose with bbox_params)."""
    return isinstance(transform, A.Compose) and "bboxes" in getattr(transform, "processors", {})


def seed_transform(transform: Any, seed: int) -> None:
    """Make the next call of a pipeline reproducible: albumentations draws from its own generators, so each
    Compose (each view of a MultiView) is re-seeded; anything else is left alone."""
    composes = transform.views if isinstance(transform, MultiView) else [transform]
    for offset, compose in enumerate(composes):
        if hasattr(compose, "set_random_seed"):
            compose.set_random_seed(seed + offset)
