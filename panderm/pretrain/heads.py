"""Projection heads of the multi-view methods: an MLP projector (SimCLR) and DINO's prototype head."""

from __future__ import annotations

import itertools

import torch.nn.functional as F
from torch import Tensor, nn


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Projector(nn.Module):
    """MLP ``in_dim -> hidden_dim (GELU) x (layers - 1) -> out_dim``; no batch norm, so one process and DDP
    compute the same function and a resumed run the same outputs."""

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 2048, layers: int = 3) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"a projector needs at least 1 layer, got {layers}")
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        parts: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            parts.append(nn.Linear(a, b))
            if i < layers - 1:
                parts.append(nn.GELU())
        self.mlp = nn.Sequential(*parts)
        self.apply(_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class PrototypeHead(nn.Module):
    """DINO's head: a `Projector` to a `bottleneck_dim` embedding, L2-normalised, scored against
    `num_prototypes` L2-normalised prototypes (cosine logits in [-1, 1]; the temperature of the loss sets
    their sharpness). Normalising the prototype weights is DINO's weight-normalised last layer with the norm
    fixed at 1, written as a cosine so there is no parametrisation to carry through EMA and checkpoints."""

    def __init__(
        self,
        in_dim: int,
        num_prototypes: int,
        *,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
    ) -> None:
        super().__init__()
        self.projector = Projector(in_dim, bottleneck_dim, hidden_dim=hidden_dim, layers=layers)
        self.prototypes = nn.Parameter(
            nn.init.trunc_normal_(Tensor(num_prototypes, bottleneck_dim), std=0.02)
        )

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.projector(x), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).t()
