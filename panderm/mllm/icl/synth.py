"""ICL problems generated from a SynthDerm or SynthCXR manifest (the embedded default data).

Each problem asks the diagnosis of one query image (from `query_split`) after 2-5 demonstrations drawn from
`demo_split`, of the query's modality when the manifest has that column (SMMILE's demos share the query's
image type). Demo labels are designed so that the baselines measure something:

- with probability `relevant_rate` the query's class is present (relevant demos, at random positions), as
  often as needed to be no rarer than any distractor class: once while there are enough other classes for
  the distractors to be distinct (so majority falls to its tie rule), twice when they must repeat (5 demos
  of 4 classes), never outnumbered, so no demo count makes majority 0% by construction;
- the distractors deal the other classes without replacement (a fresh shuffle per round), so their counts
  differ by at most one and no distractor class dominates.

Seeded (`random.Random(seed)`) and deterministic. Answers are the display names of the classes. Written in
SMMILE's row format, so `load_problems` reads it like any benchmark file.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from panderm.data.manifest import read_table
from panderm.errors import ConfigError
from panderm.mllm.region_vqa import CLASS_NAMES, dataset_of

QUESTIONS = {
    "synthderm": "What is the most likely diagnosis of this skin lesion?",
    "synthcxr": "What is the main finding in this chest X-ray?",
}
METADATA = {"synthderm": ("dermatology", "dermoscopy"), "synthcxr": ("radiology", "x-ray")}


def _demo_labels(rng: random.Random, classes: list, query: object, n: int, relevant_rate: float) -> list:
    """`n` demo labels: the query's class (if in `classes`) with probability `relevant_rate`, r times for the
    least r no distractor count exceeds; distractors dealt from shuffled rounds of the other classes."""
    others = [label for label in classes if label != query]
    relevant = 0
    if n and query in classes and rng.random() < relevant_rate:
        relevant = 1
        while -(-(n - relevant) // len(others)) > relevant:  # ceil: the largest distractor count
            relevant += 1
    distractors: list = []
    while len(distractors) < n - relevant:
        distractors += rng.sample(others, len(others))
    labels = distractors[: n - relevant]
    for position in sorted(rng.sample(range(n), relevant)):
        labels.insert(position, query)
    return labels


def make_icl_problems(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    n_problems: int = 24,
    n_demos: Sequence[int] = (2, 3, 4, 5),
    relevant_rate: float = 0.75,
    query_split: str = "test",
    demo_split: str = "train",
    seed: int = 0,
) -> Path:
    """Write `n_problems` problems (demo counts cycling through `n_demos`) as JSONL at `out`; return `out`.
    Image paths are relative to `out`'s folder. Deterministic for a seed."""
    manifest, out = Path(manifest), Path(out)
    if n_problems < 1 or not n_demos or min(n_demos) < 0:
        raise ConfigError(
            f"make_icl_problems: n_problems={n_problems} and n_demos={list(n_demos)} must be positive"
        )
    table = read_table(manifest)
    dataset = dataset_of(table, manifest)
    names = CLASS_NAMES[dataset]["en"]
    # demos share the query's acquisition (dermoscopy/clinical) when the manifest says it, as in SMMILE
    table = table.assign(_group=table["modality"] if "modality" in table.columns else "")
    pools = {
        split: {
            key: dict(tuple(rows.groupby("label")))
            for key, rows in table[table["split"] == split].groupby("_group")
        }
        for split in (query_split, demo_split)
    }
    if not pools[query_split] or not pools[demo_split] or any(len(v) < 2 for v in pools[demo_split].values()):
        raise ConfigError(
            f"{manifest}: needs rows in split {query_split!r} and two classes in split {demo_split!r}"
        )
    rng = random.Random(seed)
    queries = table[(table["split"] == query_split) & table["_group"].isin(list(pools[demo_split]))]
    queries = queries.sample(frac=1.0, random_state=seed).to_dict("records")
    speciality, modality = METADATA[dataset]
    root = manifest.parent
    rows = []
    for k in range(n_problems):
        query = queries[k % len(queries)]
        n = n_demos[k % len(n_demos)]
        pool = pools[demo_split][query["_group"]]
        labels = _demo_labels(rng, list(pool), query["label"], n, relevant_rate)
        demos = [pool[label].iloc[rng.randrange(len(pool[label]))] for label in labels]
        pid = f"{dataset}-{k:04d}"
        for order, rec in enumerate([*demos, query], 1):
            rows.append(
                {
                    "problem_id": pid,
                    "order": order,
                    "question": QUESTIONS[dataset],
                    "answer": names[rec["label"]],
                    "image": os.path.relpath(root / rec["image"], out.parent),
                    "speciality": speciality,
                    "modality": query["_group"] or modality,
                    "answer_format": "diagnosis",
                }
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_json(out, orient="records", lines=True, force_ascii=False)
    return out
