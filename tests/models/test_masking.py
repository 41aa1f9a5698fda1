"""Masks: exact counts, determinism, spatial clustering of block masks, edge cases and bad arguments."""

from __future__ import annotations

import pytest
import torch

from panderm.errors import ConfigError
from panderm.models import masking
from panderm.models.masking import MaskGenerator, block_mask, random_mask

RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
GRIDS = [(4, 4), (8, 8), (14, 14), (3, 5)]


def neighbour_stats(mask: torch.Tensor, grid: tuple[int, int]) -> tuple[float, float]:
    """(fraction of masked patches with a masked 4-neighbour, mean fraction of masked 4-neighbours).

    Brute force over every patch, independent of the vectorised sampler.
    """
    gh, gw = grid
    with_neighbour = masked = 0
    neighbour_fraction = 0.0
    for row in mask.view(-1, gh, gw).tolist():
        for i in range(gh):
            for j in range(gw):
                if not row[i][j]:
                    continue
                near = [(i + di, j + dj) for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))]
                near = [row[a][b] for a, b in near if 0 <= a < gh and 0 <= b < gw]
                masked += 1
                with_neighbour += any(near)
                neighbour_fraction += sum(near) / len(near)
    return with_neighbour / masked, neighbour_fraction / masked


@pytest.mark.parametrize("sampler", [random_mask, block_mask])
@pytest.mark.parametrize("grid", GRIDS)
def test_exact_counts(sampler, grid: tuple[int, int]) -> None:
    n = grid[0] * grid[1]
    for ratio in RATIOS:
        for seed in range(3):
            mask = sampler(16, grid, ratio, generator=torch.Generator().manual_seed(seed))
            assert mask.dtype == torch.bool and mask.shape == (16, n)
            assert mask.sum(1).tolist() == [round(ratio * n)] * 16, (grid, ratio, seed)


def test_rows_differ_and_cover_the_grid() -> None:
    mask = block_mask(64, (8, 8), 0.4, generator=torch.Generator().manual_seed(0))
    assert len({tuple(row.tolist()) for row in mask}) > 60
    assert bool(mask.any(0).all()), "some patch is never masked"


@pytest.mark.parametrize("sampler", [random_mask, block_mask])
def test_determinism_with_generator(sampler) -> None:
    first = sampler(8, (14, 14), 0.5, generator=torch.Generator().manual_seed(7))
    second = sampler(8, (14, 14), 0.5, generator=torch.Generator().manual_seed(7))
    other = sampler(8, (14, 14), 0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("ratio", [0.15, 0.3, 0.45])
def test_block_masks_are_clustered(ratio: float) -> None:
    grid = (14, 14)
    block = block_mask(64, grid, ratio, generator=torch.Generator().manual_seed(0))
    rand = random_mask(64, grid, ratio, generator=torch.Generator().manual_seed(0))
    block_any, block_fraction = neighbour_stats(block, grid)
    rand_any, rand_fraction = neighbour_stats(rand, grid)
    # For random masks the neighbour fraction is about `ratio`; blocks share most of their edges.
    assert rand_fraction == pytest.approx(ratio, abs=0.05)
    assert block_fraction > rand_fraction + 0.3
    assert block_any > 0.95 and block_any > rand_any + 0.1


def test_top_up_when_blocks_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    # With a single proposal round most rows fall short; the random top-up must still give exact counts.
    monkeypatch.setattr(masking, "_MAX_ROUNDS", 1)
    mask = block_mask(32, (14, 14), 0.6, generator=torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [round(0.6 * 196)] * 32


@pytest.mark.parametrize("sampler", [random_mask, block_mask])
def test_ratio_edges(sampler) -> None:
    assert not sampler(3, (4, 4), 0.0).any()
    assert sampler(3, (4, 4), 1.0).all()
    assert sampler(0, (4, 4), 0.5).shape == (0, 16)
    # 0.02 * 16 rounds to 0, 0.98 * 16 to 16
    assert sampler(2, (4, 4), 0.02).sum() == 0
    assert sampler(2, (4, 4), 0.98).sum() == 32


@pytest.mark.parametrize("sampler", [random_mask, block_mask])
@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan"), "0.5"])
def test_invalid_ratio_names_the_value(sampler, ratio) -> None:
    with pytest.raises(ConfigError, match="ratio") as info:
        sampler(2, (4, 4), ratio)
    assert repr(ratio) in str(info.value)


def test_invalid_grid_and_block_arguments() -> None:
    with pytest.raises(ConfigError, match="grid"):
        random_mask(2, (0, 4), 0.5)
    with pytest.raises(ConfigError, match="grid"):
        block_mask(2, (4,), 0.5)
    with pytest.raises(ConfigError, match="min_block"):
        block_mask(2, (4, 4), 0.5, min_block=0)
    with pytest.raises(ConfigError, match="aspect"):
        block_mask(2, (4, 4), 0.5, aspect=(2.0, 0.5))


def test_mask_generator() -> None:
    gen = MaskGenerator(kind="block", ratio=0.4, grid=[8, 8])  # a config delivers a list
    assert gen.grid == (8, 8) and gen.num_masked == 26
    mask = gen(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mask, block_mask(5, (8, 8), 0.4, generator=torch.Generator().manual_seed(3)))
    rand = MaskGenerator(kind="random", ratio=0.25, grid=(4, 4))(
        2, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(rand, random_mask(2, (4, 4), 0.25, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ConfigError, match="kind='blocks'"):
        MaskGenerator(kind="blocks")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ratio=2"):
        MaskGenerator(ratio=2)


def test_masks_drive_the_encoder_drop_mode() -> None:
    from panderm.models.encoder import create_encoder

    encoder = create_encoder("vit_tiny", 8, 32, depth=1).eval()
    mask = MaskGenerator("block", 0.75, encoder.grid_size)(2, generator=torch.Generator().manual_seed(0))
    out = encoder.tokens(torch.randn(2, 3, 32, 32), mask, mode="drop")
    assert out.shape == (2, 1 + 16 - 12, 192)
