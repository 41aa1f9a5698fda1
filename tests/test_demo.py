"""`panderm demo` end to end, as the README runs it (default config), into a temporary run folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from panderm.data.manifest import read_manifest


@pytest.mark.slow
def test_demo_writes_report_with_figures(tmp_path):
    run_dir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "panderm.cli", "demo", f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "config.yaml").is_file()
    for name in ("synthderm", "synthcxr"):
        manifest = read_manifest(run_dir / "data" / name / "manifest.csv")
        counts = manifest.table["split"].value_counts().to_dict()
        assert metrics["data"][name]["per_split"] == counts
        assert metrics["data"][name]["images"] == len(manifest)
        assert f"## Data: {name}" in report and f"figures/{name}_samples.png" in report
        assert f'src="figures/{name}_samples.png"' in html
        grid = Image.open(run_dir / "figures" / f"{name}_samples.png")
        assert grid.size[0] > 800 and grid.size[1] > 200
        # The per-class table in the report matches the manifest.
        per_class = manifest.label_names().value_counts()
        for cls, n in per_class.items():
            assert any(line.startswith(f"| {cls} ") and f" {n} |" in line for line in report.splitlines())
    derm = pd.read_csv(run_dir / "data" / "synthderm" / "manifest.csv")
    assert set(derm["modality"]) == {"dermoscopy", "clinical", "tbp"}
    assert "Images per modality and split" in report and "Images per fitzpatrick and split" in report
