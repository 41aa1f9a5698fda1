"""`trim_log`: what a resumed run keeps of `logs/metrics.csv` (the rest of the run is covered end to end in
test_resume.py)."""

from __future__ import annotations

import pandas as pd

from panderm.pretrain.runlog import trim_log

HEADER = "epoch,step,train/loss_step,val/dice\r\n"
ROWS = ["0,0,1.5,\r\n", "0,1,1.25,\r\n", "0,1,,0.5\r\n", "1,2,1.0,\r\n", "1,3,0.75,\r\n"]


def test_trim_keeps_the_checkpointed_rows_and_the_rest_of_their_batch_byte_for_byte(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_bytes((HEADER + "".join(ROWS)).encode())
    # the checkpoint saw 2 rows at step 1; the step-1 validation row after it belongs to the same batch
    assert trim_log(path, 2, step=1) == 3
    assert path.read_bytes() == (HEADER + "".join(ROWS[:3])).encode()  # Lightning's CRLF line ends kept
    assert pd.read_csv(path)["step"].tolist() == [0, 1, 1]


def test_trim_drops_a_half_written_last_line_and_keeps_all_without_a_count(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_bytes((HEADER + "".join(ROWS) + "2,4,0.5").encode())  # killed while writing a row
    assert trim_log(path, None) == len(ROWS)
    assert path.read_bytes() == (HEADER + "".join(ROWS)).encode()
    assert trim_log(path, 10, step=3) == len(ROWS)  # fewer rows than the checkpoint saw: all kept
    assert trim_log(path, 0) == 0 and path.read_bytes() == HEADER.encode()
