"""`panderm readers mrmc` prints one strict-JSON object; bad input exits 1 with the file named."""

from __future__ import annotations

import json

import pytest

from panderm.cli import main
from tests.conftest import shared_path


def run_json(capsys, *argv: str) -> dict:
    assert main(["readers", "mrmc", *argv]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


@pytest.mark.shared_data
def test_mrmc_command_on_van_dyke(capsys):
    out = run_json(capsys, str(shared_path("reader_vandyke", "vandyke_long.csv")))
    assert set(out["fom"]) == {"0", "1"} and len(out["fom"]["0"]) == 5
    assert (out["n_readers"], out["n_cases"], out["n_negative"], out["n_positive"]) == (5, 114, 69, 45)
    # Van Dyke et al. (1993): the textbook OR result (Hillis 2007; MRMCaov's and RJafroc's documentation):
    # AUCs 0.897 / 0.941, F(1, 15.26) = 4.46, p = 0.0517, difference CI (-0.0880, 0.0004)
    assert out["condition_means"] == pytest.approx({"0": 0.8970370, "1": 0.9408374}, abs=5e-8)
    rrrc = out["rrrc"]
    assert (round(rrrc["value"], 2), round(rrrc["df2"], 2), round(rrrc["p"], 4)) == (4.46, 15.26, 0.0517)
    assert [round(v, 4) for v in rrrc["differences"][0]["ci95"]] == [-0.088, 0.0004]
    for analysis in ("rrrc", "frrc", "rrfc"):
        assert {"statistic", "value", "df1", "df2", "p", "differences"} <= set(out[analysis])
        assert out[analysis]["differences"][0]["conditions"] == [0, 1]  # labels keep their type
    assert out["dbm"]["rrrc"]["value"] == pytest.approx(rrrc["value"])


@pytest.mark.shared_data
def test_mrmc_command_options(capsys):
    path = str(shared_path("reader_franken", "franken_long.csv"))
    sens = run_json(capsys, path, "--fom", "sensitivity", "--threshold", "3", "--conditions", "1,0")
    assert sens["fom_name"] == "sensitivity" and list(sens["condition_means"]) == ["1", "0"]
    assert 0 < sens["condition_means"]["0"] < 1
    boot = run_json(capsys, path, "--cov", "bootstrap", "--n-boot", "200", "--seed", "3")
    assert boot["n_boot"] == 200 and boot["covariance"] == "bootstrap" and "dbm" not in boot
    assert run_json(capsys, path, "--cov", "bootstrap", "--n-boot", "200", "--seed", "3") == boot


def test_mrmc_command_errors(capsys, tmp_path):
    assert main(["readers", "mrmc", str(tmp_path / "none.csv")]) == 1
    assert "none.csv: reader-study file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("reader,case,condition,rating\nA,1,x,2\n")
    assert main(["readers", "mrmc", str(bad)]) == 1
    assert "bad.csv: 1 problem(s)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["readers", "mrmc", str(bad), "--cov", "magic"])
