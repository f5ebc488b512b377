"""The main job (`make demo`) end to end, on tiny data: runs, mining, table, report."""

import csv
import os
import subprocess
import sys

from train_utils import ROOT


def test_demo_trains_mines_and_writes_the_table_and_report(tmp_path):
    env = {**os.environ, "XLA_FLAGS": ""}  # the runs are single-device subprocesses
    run = subprocess.run(
        [sys.executable, "-m", "itm_jax.cli.demo", f"--workdir={tmp_path}", "--smoke",
         "--losses=sh,mh,aoq"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Progress of every run reaches the terminal, tagged with its run.
    for tag in ("[sh]", "[mh]", "[aoq]", "[mh/mining]"):
        assert tag in run.stdout, tag
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["loss"] for r in rows] == ["untrained", "sh", "mh", "aoq"]
    assert all(0 <= float(r["rsum_mean"]) <= 600 for r in rows)
    md = (tmp_path / "results.md").read_text()
    assert "AOQ round 2" in md and "| loss |" in md and md in run.stdout
    assert (tmp_path / "mh" / "mining" / "manifest.json").exists()
    assert "<img" in (tmp_path / "report.html").read_text()
    # A second call finds every run finished and only rebuilds the table.
    again = subprocess.run(
        [sys.executable, "-m", "itm_jax.cli.demo", f"--workdir={tmp_path}", "--smoke",
         "--losses=sh,mh,aoq"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "stage 0 step" not in again.stdout
