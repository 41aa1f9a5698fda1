"""`build_strategy`: FSDP wrapped (optionally checkpointed) per timm ViT block; other strategies unchanged."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch.strategies import FSDPStrategy
from timm.models.vision_transformer import Block
from torch.distributed.fsdp import ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from panderm.config import TrainerConfig, register_configs
from panderm.errors import ConfigError
from panderm.models.encoder import create_encoder
from panderm.paths import config_dir
from panderm.pretrain.strategy import build_strategy


def trainer_config(*overrides: str):
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("pretrain", overrides=list(overrides)).trainer


def wrapped_modules(policy: ModuleWrapPolicy, root) -> set:
    """The modules `policy` makes their own FSDP unit (or checkpoints) in `root`, as torch's FSDP asks it."""
    return set(policy._run_policy(root, ignored_modules=set(), root_kwargs={}))


def test_fsdp_preset_wraps_each_block_without_checkpointing():
    cfg = trainer_config("trainer=fsdp")
    assert cfg.strategy == "fsdp" and cfg.sharding_strategy == "FULL_SHARD"
    assert cfg.activation_checkpointing is False
    strategy = build_strategy(cfg)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {Block}
    assert strategy.sharding_strategy is ShardingStrategy.FULL_SHARD
    assert strategy._activation_checkpointing_kwargs == {}

    encoder = create_encoder("vit_tiny", 16, 32, depth=3)
    assert wrapped_modules(policy, encoder) == set(encoder.vit.blocks)


def test_activation_checkpointing_and_sharding_switches():
    cfg = trainer_config(
        "trainer=fsdp", "trainer.activation_checkpointing=true", "trainer.sharding_strategy=shard_grad_op"
    )
    strategy = build_strategy(cfg)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}
    checkpointing = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert isinstance(checkpointing, ModuleWrapPolicy) and checkpointing._module_classes == {Block}
    assert strategy.sharding_strategy is ShardingStrategy.SHARD_GRAD_OP

    encoder = create_encoder("vit_tiny", 16, 32, depth=2)
    assert wrapped_modules(checkpointing, encoder) == set(encoder.vit.blocks)


@pytest.mark.parametrize(
    "name", ["auto", "ddp", "ddp_find_unused_parameters_true", "deepspeed", "single_device"]
)
def test_other_strategies_pass_through_as_strings(name):
    assert build_strategy(TrainerConfig(strategy=name)) == name


@pytest.mark.parametrize("preset", ["cpu", "gpu", "ddp"])
def test_other_presets_keep_their_strategy_string(preset):
    cfg = trainer_config(f"trainer={preset}")
    assert isinstance(cfg.strategy, str) and build_strategy(cfg) == cfg.strategy


def test_bad_values_raise_config_errors_naming_the_field():
    with pytest.raises(ConfigError, match=r"trainer\.sharding_strategy='FULL_SHRAD'.*FULL_SHARD"):
        build_strategy(TrainerConfig(strategy="fsdp", sharding_strategy="FULL_SHRAD"))
    # switches that would be ignored outside fsdp are errors, reported together
    with pytest.raises(ConfigError, match="2 problem") as error:
        build_strategy(
            TrainerConfig(strategy="ddp", activation_checkpointing=True, sharding_strategy="NO_SHARD")
        )
    assert "trainer.activation_checkpointing" in str(error.value)
    assert "trainer.sharding_strategy='NO_SHARD'" in str(error.value)
