"""The Lightning strategy for `cfg.trainer`: FSDP sharded per transformer block, other strategies as named.

`trainer.strategy=fsdp` as a plain string would make Lightning wrap the whole encoder as one FSDP unit, so
every parameter is gathered at once and peak memory is no lower than DDP's. Here each timm ViT `Block` (the
encoder's and the MAE/CAE predictor's) becomes its own unit, and `trainer.activation_checkpointing=true` also
recomputes each block's activations in the backward pass instead of storing them.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from timm.models.vision_transformer import Block

from panderm.config import TrainerConfig
from panderm.errors import ConfigError

FSDP = "fsdp"
SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
"""The `torch.distributed.fsdp.ShardingStrategy` names Lightning's FSDPStrategy accepts."""

DEFAULT_SHARDING = "FULL_SHARD"


def build_strategy(trainer_cfg: TrainerConfig | DictConfig) -> Any:
    """The `strategy=` argument of `L.Trainer` for `trainer_cfg` (a `TrainerConfig` or `cfg.trainer`).

    For `strategy: fsdp` this is a `lightning.pytorch.strategies.FSDPStrategy` that wraps each timm `Block` as
    one FSDP unit, shards with `sharding_strategy` (FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD; case
    ignored) and, when `activation_checkpointing` is true, checkpoints each `Block`. Every other strategy is
    returned unchanged as its string, for Lightning to resolve. Use `activation_checkpointing` or
    `encoder.grad_checkpointing`, not both: with both, each block is recomputed twice.

    Raises ConfigError, listing every problem, when `sharding_strategy` is not one of the names above, or when
    `activation_checkpointing` or a non-default `sharding_strategy` is set for a strategy other than fsdp
    (they would be silently ignored).
    """
    strategy = trainer_cfg.strategy
    activation_checkpointing = bool(trainer_cfg.activation_checkpointing)
    sharding = str(trainer_cfg.sharding_strategy)
    is_fsdp = isinstance(strategy, str) and strategy.lower() == FSDP

    problems = []
    if sharding.upper() not in SHARDING_STRATEGIES:
        problems.append(
            f"trainer.sharding_strategy={sharding!r} is not one of {list(SHARDING_STRATEGIES)}; "
            "pick one of them (FULL_SHARD shards parameters, gradients and optimiser state)"
        )
    elif not is_fsdp and sharding.upper() != DEFAULT_SHARDING:
        problems.append(
            f"trainer.sharding_strategy={sharding!r} applies only to trainer.strategy=fsdp "
            f"(got {strategy!r}); use trainer=fsdp or leave it at {DEFAULT_SHARDING}"
        )
    if activation_checkpointing and not is_fsdp:
        problems.append(
            "trainer.activation_checkpointing=true applies only to trainer.strategy=fsdp "
            f"(got {strategy!r}); use trainer=fsdp, or encoder.grad_checkpointing=true for other strategies"
        )
    if problems:
        raise ConfigError("\n  ".join([f"trainer: {len(problems)} problem(s)", *problems]))

    if not is_fsdp:
        return strategy

    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(
        # A set of module classes becomes torch's ModuleWrapPolicy: one FSDP unit per Block, the rest (patch
        # embedding, tokens, norms, heads) in the root unit.
        auto_wrap_policy={Block},
        activation_checkpointing_policy={Block} if activation_checkpointing else None,
        sharding_strategy=sharding.upper(),
    )
