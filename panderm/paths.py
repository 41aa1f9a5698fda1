"""Where the toolkit finds its Hydra configs and resolves paths safely."""

from __future__ import annotations

import os
from pathlib import Path

from panderm.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]


# A command whose overrides would clash with another command's config groups has its own tree: for `probe`
# and `segment`, `encoder=<checkpoint>` is a plain value, while `pretrain`'s `encoder=vit_base` picks a
# group; for `vqa`, `data=<file.jsonl>` is a plain value (its generated default takes `synth=<data config>`);
# `icl` has its own `backend` group (the offline baselines). Shared groups (data/, trainer/) are symlinked in.
OWN_CONFIG_TREES = {
    "probe": "probe_command",
    "segment": "segment_command",
    "vqa": "vqa_command",
    "icl": "icl_command",
    "bench": "bench_command",
}


def config_dir(command: str | None = None) -> Path:
    """The Hydra config tree of `command` (default: the shared one): `$PANDERM_CONFIG_DIR` if set, else the
    repository's top-level `configs/`, or its subfolder for commands listed in `OWN_CONFIG_TREES`."""
    root = Path(os.environ.get("PANDERM_CONFIG_DIR", REPO_ROOT / "configs")).resolve()
    return root / OWN_CONFIG_TREES[command] if command in OWN_CONFIG_TREES else root


def resolve_under(
    root: Path,
    relative: str | os.PathLike[str],
    *,
    allow_outside: bool = False,
    option: str = "data.allow_outside_root=true",
) -> Path:
    """Join `relative` to `root` and refuse the result if it escapes `root`.

    The check is lexical (normpath, not realpath) so that symlinked data folders inside the root keep working,
    while `../` tricks and absolute paths elsewhere are refused with a `DataError` naming the path and the
    opt-in `option` as the user would type it (the command-line override of the caller's config).
    """
    root = Path(os.path.abspath(root))
    candidate = Path(os.path.normpath(root / relative))
    if not allow_outside and not candidate.is_relative_to(root):
        raise DataError(
            f"path {str(relative)!r} escapes the data root {root}; move the file under the root, or set "
            f"{option} to read files outside it"
        )
    return candidate
