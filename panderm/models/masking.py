"""Patch masks for masked-image modelling: uniform random and BEiT-style block-wise.

Masks are (B, N) bool tensors over the patch grid in raster order (row-major, N = gh * gw), True = masked,
with exactly ``round(ratio * N)`` True per row, because the encoder's ``mode="drop"`` needs the same number
of visible patches in every row. Written here (not taken from a library) because timm and torchvision ship
no block-wise mask generator; the block sampler is vectorised over the batch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from panderm.errors import ConfigError

MaskKind = Literal["block", "random"]
MASK_KINDS = ("block", "random")
_MAX_ROUNDS = 200  # proposal rounds before the block sampler tops up at random (rarely reached)


def _check_grid(grid: Sequence[int]) -> tuple[int, int]:
    if len(grid) != 2 or not all(isinstance(g, numbers.Integral) and g > 0 for g in grid):
        raise ConfigError(f"mask grid={tuple(grid)!r} must be two positive integers (rows, cols)")
    return int(grid[0]), int(grid[1])


def num_masked(grid: Sequence[int], ratio: float) -> int:
    """round(ratio * N) for the grid; raises `ConfigError` naming the value unless 0 <= ratio <= 1."""
    gh, gw = _check_grid(grid)
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"mask ratio={ratio!r} must be a number in [0, 1]")
    return round(float(ratio) * gh * gw)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=_gen_device(generator))


def _finish(mask: torch.Tensor, device: str | torch.device | None) -> torch.Tensor:
    return mask.to(device if device is not None else "cpu")


def _exact(mask: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """Keep exactly `count` True per row: drop surplus masked patches, or add unmasked ones, at random.

    `mask` lives on the generator's device.
    """
    # Masked patches outrank unmasked ones; the random part breaks ties within each group.
    priority = _rand(tuple(mask.shape), generator) + 2.0 * mask.float()
    keep = priority.topk(count, dim=1).indices
    return torch.zeros_like(mask).scatter_(1, keep, True)


def random_mask(
    batch: int,
    grid: Sequence[int],
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Uniformly random mask (batch, gh * gw) bool with exactly ``round(ratio * N)`` True per row.

    Raises `ConfigError` for a ratio outside [0, 1] or a bad grid.
    """
    count = num_masked(grid, ratio)
    n = grid[0] * grid[1]
    mask = torch.zeros(batch, n, dtype=torch.bool, device=_gen_device(generator))
    if count and batch:
        mask = _exact(mask, count, generator)
    return _finish(mask, device)


def block_mask(
    batch: int,
    grid: Sequence[int],
    ratio: float,
    *,
    min_block: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """BEiT-style block-wise mask (batch, gh * gw) bool with exactly ``round(ratio * N)`` True per row.

    Each round proposes one rectangle per row: area uniform in [min_block, patches still to mask], aspect
    ratio log-uniform in `aspect`, position uniform; a row accepts it when it adds at least one and at most
    the remaining number of masked patches. Rows that stall are topped up (and, defensively, trimmed) at
    random. Raises `ConfigError` for a ratio outside [0, 1], a bad grid, `min_block` < 1 or a bad `aspect`.
    """
    count = num_masked(grid, ratio)
    gh, gw = _check_grid(grid)
    if not isinstance(min_block, int) or min_block < 1:
        raise ConfigError(f"mask min_block={min_block!r} must be a positive integer (patches)")
    lo_aspect, hi_aspect = (float(a) for a in aspect)
    if not 0 < lo_aspect <= hi_aspect:
        raise ConfigError(f"mask aspect={tuple(aspect)!r} must be (low, high) with 0 < low <= high")
    n = gh * gw
    if count in (0, n) or batch == 0:
        return _finish(torch.full((batch, n), count == n, dtype=torch.bool), device)

    gen_device = _gen_device(generator)
    rows = torch.arange(gh, device=gen_device).view(1, gh, 1)
    cols = torch.arange(gw, device=gen_device).view(1, 1, gw)
    mask = torch.zeros(batch, gh, gw, dtype=torch.bool, device=gen_device)
    log_lo, log_hi = math.log(lo_aspect), math.log(hi_aspect)
    for _ in range(_MAX_ROUNDS):
        remaining = count - mask.sum((1, 2))
        active = remaining > 0
        if not bool(active.any()):
            break
        u = _rand((4, batch), generator)
        # Below min_block patches left, the lower bound follows the remainder so small gaps can still close.
        low = remaining.clamp(max=min_block).clamp(min=1).float()
        area = low + u[0] * (remaining.float() - low).clamp(min=0)
        ratio_hw = torch.exp(log_lo + u[1] * (log_hi - log_lo))
        h = torch.sqrt(area * ratio_hw).round().clamp(1, gh).long()
        w = torch.sqrt(area / ratio_hw).round().clamp(1, gw).long()
        top = (u[2] * (gh - h + 1)).floor().long().view(-1, 1, 1)
        left = (u[3] * (gw - w + 1)).floor().long().view(-1, 1, 1)
        rect = (
            (rows >= top)
            & (rows < top + h.view(-1, 1, 1))
            & (cols >= left)
            & (cols < left + w.view(-1, 1, 1))
        )
        added = (rect & ~mask).sum((1, 2))
        accept = active & (added > 0) & (added <= remaining)
        mask |= rect & accept.view(-1, 1, 1)
    mask = mask.view(batch, n)
    if bool((mask.sum(1) != count).any()):
        mask = _exact(mask, count, generator)
    return _finish(mask, device)


@dataclass
class MaskGenerator:
    """Callable mask factory built from config: ``MaskGenerator("block", 0.4, (14, 14))(batch)``.

    `kind` is "block" (BEiT-style, `min_block` and `aspect` apply) or "random". Raises `ConfigError` for an
    unknown kind, a ratio outside [0, 1] or a bad grid when constructed.
    """

    kind: MaskKind = "block"
    ratio: float = 0.4
    grid: tuple[int, int] = (14, 14)
    min_block: int = 4
    aspect: tuple[float, float] = (0.3, 1 / 0.3)

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ConfigError(f"mask kind={self.kind!r} is not one of {MASK_KINDS}")
        self.grid = _check_grid(tuple(self.grid))  # configs deliver lists
        self.aspect = tuple(self.aspect)
        num_masked(self.grid, self.ratio)

    @property
    def num_masked(self) -> int:
        """Masked patches per image."""
        return num_masked(self.grid, self.ratio)

    def __call__(
        self,
        batch: int,
        *,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """A (batch, gh * gw) bool mask, True = masked."""
        if self.kind == "random":
            return random_mask(batch, self.grid, self.ratio, generator=generator, device=device)
        return block_mask(
            batch,
            self.grid,
            self.ratio,
            min_block=self.min_block,
            aspect=self.aspect,
            generator=generator,
            device=device,
        )
