"""`panderm readers mrmc FILE` and `panderm readers report FILE` (the panderm CLI names these functions)."""

from __future__ import annotations

import argparse
import json

from readers.report import json_safe
from readers.schema import ReaderStudy, load_study


def _label(text: str) -> object:
    """A command-line class label: an int when it reads as one, else the string."""
    try:
        return int(text)
    except ValueError:
        return text


def _conditions(args: argparse.Namespace, study: ReaderStudy) -> list | None:
    if not args.conditions:
        return None
    known = {str(c): c for c in study.conditions}
    return [known.get(c.strip(), c.strip()) for c in args.conditions.split(",")]


def mrmc_options(args: argparse.Namespace, study: ReaderStudy) -> dict:
    """The keyword arguments of `readers.mrmc.mrmc` that the command line sets."""
    return {
        "fom": args.fom,
        "cov": args.cov,
        "threshold": args.threshold,
        "positive": _label(args.positive),
        "conditions": _conditions(args, study),
        "n_boot": args.n_boot,
        "seed": args.seed,
    }


def mrmc_command(args: argparse.Namespace) -> int:
    from readers.mrmc import mrmc

    study = load_study(args.file, condition_column=args.condition_column)
    print(json.dumps(json_safe(mrmc(study, **mrmc_options(args, study)))))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from readers.report import write_report

    study = load_study(args.file, condition_column=args.condition_column)
    md, _ = write_report(study, args.out, before=args.before, after=args.after, **mrmc_options(args, study))
    print(f"report: {md}")
    return 0
