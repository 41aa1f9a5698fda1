"""The `panderm` console command.

Training/evaluation subcommands are Hydra apps (`panderm demo seed=1 data.n_patients=40`); analysis
subcommands take plain arguments (`panderm data validate manifest.csv --root images/`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from panderm import __version__
from panderm.errors import PandermError

COMMAND_ENV = "PANDERM_HYDRA_COMMAND"
HYDRA_COMMANDS: dict[str, tuple[str, str]] = {
    # name (= primary config in configs/): (task "module:function" called as task(cfg, run_dir), help text)
    "demo": (
        "panderm.demo:run_demo",
        "the main job: generate the embedded data and write a report of every stage",
    ),
    "pretrain": ("panderm.pretrain.run:run_pretrain", "self-supervised pretraining of an encoder"),
    # named, not imported: `panderm` never imports the `probes` package (it builds on panderm)
    "probe": ("probes.run:run_probe", "evaluate a frozen encoder (or a features .npz) with one probe"),
    "segment": (
        "probes.segmentation.run:run_segment",
        "train and evaluate a segmentation head on an encoder",
    ),
    "bench": (
        "probes.bench.run:run_bench",
        "compare encoders across a suite of tasks: resumable cells, leaderboard with paired tests",
    ),
    "vqa": (
        "panderm.mllm.run:run_vqa",
        "region-aware medical VQA with an MLLM backend (hf, openai, expert): cached, resumable, scored",
    ),
    "icl": (
        "panderm.mllm.icl.run:run_icl",
        "in-context-learning experiments (permutations, recency, noise; `panderm icl score FILE...` scores)",
    ),
}
ENCODING_HELP = "text encoding of a CSV manifest (default utf-8; e.g. latin-1, cp1252)"
DRY_RUN_COMMANDS = ("vqa", "icl")  # `panderm vqa --dry-run` is `panderm vqa dry_run=true`


def _hydra_overrides(command: str, args: Sequence[str]) -> list[str]:
    """`args` as Hydra overrides: ``--dry-run`` of a `DRY_RUN_COMMANDS` command becomes ``dry_run=true``."""
    if command not in DRY_RUN_COMMANDS:
        return list(args)
    return ["dry_run=true" if arg == "--dry-run" else arg for arg in args]


def _run_hydra(config_name: str, overrides: Sequence[str]) -> int:
    """Run a Hydra command with `overrides` (Hydra's own flags such as --help work); returns the exit code."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from panderm.config import register_configs, validate_config
    from panderm.paths import config_dir
    from panderm.runs import load_task

    register_configs()
    status = {"code": 0}

    @hydra.main(config_path=str(config_dir(config_name)), config_name=config_name, version_base="1.3")
    def app(cfg) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            # Hydra has checked keys and types against the schema; this checks ranges (batch_size=0, lr<0)
            validate_config(cfg, command=config_name)
            # imported once the config is valid: a misspelt key, a bad value or --help need not load Lightning
            task = load_task(HYDRA_COMMANDS[config_name][0])
            task(cfg, run_dir)
            print(f"outputs: {run_dir}")
        except PandermError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status["code"] = 1

    # Lightning's DDP launcher re-runs sys.argv[0] with the Hydra overrides only; the environment tells
    # those child processes which command they belong to (see main()).
    os.environ[COMMAND_ENV] = config_name
    argv, sys.argv = sys.argv, [sys.argv[0], *overrides]
    try:
        app()
    finally:
        sys.argv = argv
    return status["code"]


def _data_validate(args: argparse.Namespace) -> int:
    from panderm.data.manifest import read_manifest
    from panderm.data.overview import split_table

    classes = args.classes.split(",") if args.classes else None
    manifest = read_manifest(
        args.manifest,
        args.root,
        classes=classes,
        deep=args.deep,
        allow_outside_root=args.allow_outside_root,
        encoding=args.encoding,
        mask_threshold=args.mask_threshold,
    )
    counts = ", ".join(f"{r.split} {r.images}" for r in split_table(manifest).itertuples())
    print(f"{args.manifest}: OK, {len(manifest)} images ({counts}); classes: {list(manifest.classes or [])}")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    if args.kind == "synthderm":
        from panderm.data.synthetic.synthderm import generate_synthderm as generate
    else:
        from panderm.data.synthetic.synthcxr import generate_synthcxr as generate
    path = generate(args.out, n_patients=args.n_patients, image_size=args.image_size, seed=args.seed)
    print(path)
    return 0


def _data_overview(args: argparse.Namespace) -> int:
    from panderm.data.manifest import read_manifest
    from panderm.data.overview import add_overview
    from panderm.report import Report

    manifest = read_manifest(args.manifest, args.root, encoding=args.encoding)
    out = Path(args.out)
    report = Report(f"Data overview: {args.manifest}")
    add_overview(report, manifest, Path(args.manifest).stem, out / "figures", n_samples=args.n_samples)
    md, html = report.write(out)
    print(f"report: {md} (HTML: {html})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from panderm.pretrain.export import export_checkpoint

    print(export_checkpoint(args.source, args.out, timm_dir=args.timm_dir))
    if args.timm_dir:
        print(
            f"timm folder: {args.timm_dir} (timm.create_model('local-dir:{args.timm_dir}', pretrained=True))"
        )
    return 0


def _shard(args: argparse.Namespace) -> int:
    from panderm.data.manifest import read_manifest
    from panderm.data.shards import write_shards

    classes = args.classes.split(",") if args.classes else None
    manifest = read_manifest(args.manifest, args.root, classes=classes, encoding=args.encoding)
    shards = write_shards(manifest, args.out, max_count=args.max_count)
    print(f"{len(shards)} shard(s) under {args.out}")
    return 0


def _icl_score(argv: Sequence[str]) -> int:
    """`panderm icl score FILE... [--strict]`: one JSON object per result file, each on its own line."""
    import json

    from panderm.mllm.icl.scoring import score_command

    parser = argparse.ArgumentParser(
        prog="panderm icl score",
        description="Exact-match (or, for MCQA files, is_correct) accuracy of ICL result CSVs in SMMILE's "
        "layout or panderm's; prints {file, n, correct, accuracy} per file.",
    )
    parser.add_argument("files", nargs="+", help="result CSV/JSONL files")
    parser.add_argument("--strict", action="store_true", help="compare raw strings (stripped) instead")
    args = parser.parse_args(argv)
    try:
        for result in score_command(args.files, strict=args.strict):
            print(json.dumps(result))
    except PandermError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _readers(args: argparse.Namespace) -> int:
    """`panderm readers mrmc|report`: handled by the readers package, named rather than imported."""
    from panderm.runs import load_task

    return load_task(f"readers.commands:{args.readers_command}_command")(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panderm",
        description="Medical vision foundation models: data, pretraining, probes, MLLM VQA/ICL, readers.",
        epilog="Hydra subcommands take key=value overrides; `panderm <command> --help` shows each config.",
    )
    parser.add_argument("--version", action="version", version=f"panderm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, text) in HYDRA_COMMANDS.items():  # listed for --help; main() hands them to Hydra
        sub = commands.add_parser(name, help=f"{text} (Hydra: key=value overrides)", add_help=False)
        sub.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides, e.g. seed=1")

    data = commands.add_parser("data", help="check, generate and describe data sets")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    validate = data_commands.add_parser(
        "validate", help="check a manifest and list every problem (exit 1 if any)"
    )
    validate.add_argument("manifest", help="manifest CSV or Parquet")
    validate.add_argument("--root", help="folder the image paths are relative to (default: the manifest's)")
    validate.add_argument("--classes", help="comma-separated class names (default: inferred from the labels)")
    validate.add_argument(
        "--deep",
        action="store_true",
        help="decode every image and mask (truncated files, mask size and values)",
    )
    validate.add_argument("--allow-outside-root", action="store_true", help="permit paths outside the root")
    validate.add_argument("--encoding", help=ENCODING_HELP)
    validate.add_argument(
        "--mask-threshold",
        type=int,
        choices=range(256),
        metavar="0-255",
        help="binarise masks that are not binary on purpose: foreground = value > threshold",
    )
    validate.set_defaults(handler=_data_validate)

    synth = data_commands.add_parser("synth", help="generate a synthetic data set (images, masks, manifest)")
    synth.add_argument("kind", choices=["synthderm", "synthcxr"])
    synth.add_argument("out", help="output folder")
    synth.add_argument("--n-patients", type=int, default=120)
    synth.add_argument("--image-size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_data_synth)

    overview = data_commands.add_parser("overview", help="write a report of counts and sample images")
    overview.add_argument("manifest")
    overview.add_argument("--root")
    overview.add_argument("--out", default="outputs/overview", help="report folder")
    overview.add_argument("--n-samples", type=int, default=16)
    overview.add_argument("--encoding", help=ENCODING_HELP)
    overview.set_defaults(handler=_data_overview)

    export = commands.add_parser(
        "export", help="export the encoder of a pretraining run as safetensors + JSON"
    )
    export.add_argument("source", help="pretraining run folder or a Lightning .ckpt in its checkpoints/")
    export.add_argument("out", help="output path (writes OUT.safetensors and OUT.json)")
    export.add_argument(
        "--timm-dir",
        default=None,
        help="also write this folder (config.json + model.safetensors) for timm 'local-dir:DIR'",
    )
    export.set_defaults(handler=_export)

    shard = commands.add_parser("shard", help="write WebDataset shards (one set per split) from a manifest")
    shard.add_argument("manifest")
    shard.add_argument("out", help="output folder (OUT/<split>/shard-000000.tar ... + index.json)")
    shard.add_argument("--root", help="folder the image paths are relative to (default: the manifest's)")
    shard.add_argument("--classes", help="comma-separated class names (default: inferred from the labels)")
    shard.add_argument("--max-count", type=int, default=10000, help="samples per shard")
    shard.add_argument("--encoding", help=ENCODING_HELP)
    shard.set_defaults(handler=_shard)

    readers = commands.add_parser("readers", help="reader-study analysis (MRMC, with vs without AI)")
    readers_commands = readers.add_subparsers(dest="readers_command", metavar="ACTION", required=True)
    mrmc = readers_commands.add_parser(
        "mrmc", help="Obuchowski-Rockette MRMC analysis (rrrc, frrc, rrfc); prints one JSON object"
    )
    report = readers_commands.add_parser(
        "report", help="write tables and figures of a reader study to a folder"
    )
    for sub in (mrmc, report):
        sub.add_argument(
            "file", help="reader study: long CSV/Parquet (reader, case, condition, truth, ...) or .lrc"
        )
        sub.add_argument("--fom", default="auc", choices=["auc", "sensitivity", "specificity", "accuracy"])
        sub.add_argument("--cov", default="jackknife", choices=["jackknife", "delong", "bootstrap"])
        sub.add_argument("--threshold", type=float, help="rating >= threshold is positive (binary FOMs)")
        sub.add_argument("--positive", default="1", help="the positive class of truth/response (default 1)")
        sub.add_argument(
            "--condition-column", help="column holding the condition (default condition/treatment)"
        )
        sub.add_argument("--conditions", help="comma-separated conditions to compare, in order (default all)")
        sub.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (--cov bootstrap)")
        sub.add_argument("--seed", type=int, default=0)
    report.add_argument("--out", default="outputs/readers", help="report folder")
    report.add_argument("--before", help="the unaided condition (default: the first)")
    report.add_argument("--after", help="the aided condition (default: the second)")
    mrmc.set_defaults(handler=_readers)
    report.set_defaults(handler=_readers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 1 bad input, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:2] == ["icl", "score"]:  # the one plain-argument action of a Hydra command
        return _icl_score(argv[2:])
    if argv and argv[0] in HYDRA_COMMANDS:  # Hydra parses its own arguments, --help included
        return _run_hydra(argv[0], _hydra_overrides(argv[0], argv[1:]))
    relaunched = os.environ.get(COMMAND_ENV)
    if relaunched in HYDRA_COMMANDS and all("=" in arg for arg in argv):  # a DDP child process
        return _run_hydra(relaunched, argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args)
    except PandermError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
