"""`panderm export`: the encoder of a pretraining checkpoint or run folder as safetensors + JSON, and
optionally (``--timm-dir``) as a folder plain timm loads (`panderm.models.timm_export`)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from panderm.models.checkpoints import CheckpointError, load_torch_file, load_weights, save_encoder
from panderm.models.timm_export import save_timm_folder
from panderm.pretrain.run import CHECKPOINTS, LAST, build_encoder

ENCODER_PREFIX = "encoder."


def export_checkpoint(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    timm_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Export the encoder of `source` (a run folder, or a Lightning .ckpt inside `<run>/checkpoints/`).

    The architecture comes from the run's `config.yaml`; weights are loaded strictly. With `timm_dir`, also
    writes that folder for ``timm.create_model("local-dir:<timm_dir>", pretrained=True)`` (config.json +
    model.safetensors, `save_timm_folder`). Returns the path of the written `.safetensors`. Raises
    `CheckpointError` naming the file when something is missing.
    """
    source = Path(source)
    ckpt = source / CHECKPOINTS / LAST if source.is_dir() else source
    run_dir = ckpt.parent.parent
    config_path = run_dir / "config.yaml"
    for path in (ckpt, config_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: not found (export takes a pretraining run folder or its .ckpt)")
    checkpoint = load_torch_file(ckpt)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{ckpt}: no state_dict, so not a Lightning checkpoint of a pretraining run")
    state = checkpoint["state_dict"]
    cfg = OmegaConf.load(config_path)
    encoder = build_encoder(cfg.encoder)
    weights = {k.removeprefix(ENCODER_PREFIX): v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    load_weights(encoder, weights, strict=True, source=str(ckpt))
    recipe = OmegaConf.to_container(cfg, resolve=True)
    weights = save_encoder(encoder, out, recipe={**recipe, "exported_from": str(ckpt)})
    if timm_dir is not None:
        save_timm_folder(encoder, timm_dir)
    return weights
