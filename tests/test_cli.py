"""The command-line tools as a user meets them: ``--help`` lists each command's own flags, and
every mistake is one line on stderr naming the problem and the fix (exit 2 for usage errors,
1 otherwise), with no traceback and nothing created before the config is known to be valid."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "--config=configs/default.py:smoke"


def _run(module, *args, env=None):
    env = {**os.environ, "XLA_FLAGS": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module,flags", [
    ("itm_jax.cli.train", ["config", "workdir", "accept_config_change", "coordinator_address"]),
    ("itm_jax.cli.eval", ["workdir", "split", "checkpoint", "ensemble", "export", "report",
                          "report_model"]),
    ("itm_jax.cli.mine", ["config", "workdir", "checkpoint", "h_t", "h_i", "block_size"]),
])
def test_help_lists_the_commands_own_flags(module, flags):
    proc = _run(module, "--help")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    listed = [line.split(":")[0].strip() for line in lines if line.startswith("  --")]
    assert listed == [f"--{f}" for f in flags] + listed[len(flags):]  # own flags first, in order
    assert "--verbose" in listed and len(listed) <= len(flags) + 6
    assert all(len(line.split(": ", 1)[1]) > 10 for line in lines if line.startswith("  --"))


BAD = [  # (args, exit code, words the one line must hold)
    ([SMOKE, "--workdir={w}", "--config.batch_size=-4"], 2, ["config.batch_size=-4", "Fix"]),
    ([SMOKE, "--workdir={w}", "--config.losses.0.name=max_hinge"], 2,
     ["losses.0.name='max_hinge'", "max_of_hinges"]),
    ([SMOKE, "--workdir={w}", "--config.optim.learning_rate=0"], 2, ["learning_rate=0.0", "> 0"]),
    ([SMOKE, "--workdir={w}", "--config.losses.0.margn=0.1"], 2, ["margn", "'margin'"]),
    ([SMOKE, "--workdir={w}", "--config.losses.0.margin=-1"], 2, ["margin", ">= 0"]),
    (["--config=configs/nope.py", "--workdir={w}"], 2, ["configs/nope.py", "no such file"]),
    (["--config=configs/default.py:smok", "--workdir={w}"], 2, ["'smok'", "valid: smoke"]),
    ([SMOKE], 2, ["--workdir"]),
    ([SMOKE, "--workdir={w}", "--config.batch_size=abc"], 2, ["batch_size=abc"]),
]


@pytest.mark.parametrize("args,code,words", BAD, ids=[" ".join(a[2:] or a[:1]) for a, _, _ in BAD])
def test_a_bad_config_is_one_line_and_creates_nothing(tmp_path, args, code, words):
    workdir = tmp_path / "run"
    proc = _run("itm_jax.cli.train", *(a.format(w=workdir) for a in args))
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("itm-train: error: "), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not workdir.exists()
    assert proc.stdout == ""


def test_verbose_adds_the_traceback(tmp_path):
    proc = _run("itm_jax.cli.train", SMOKE, f"--workdir={tmp_path}/run",
                "--config.batch_size=-4", "--verbose")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_a_workdir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    proc = _run("itm_jax.cli.train", SMOKE, f"--workdir={tmp_path / 'file'}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"itm-train: error: --workdir={tmp_path / 'file'} is a file, "
                                   "not a directory: pass a directory (it is created if missing).")


def test_an_unprepared_dataset_is_one_line(tmp_path):
    proc = _run("itm_jax.cli.train", "--config=configs/vse_f30k.py",
                f"--config.data.data_dir={tmp_path / 'tfds'}", f"--workdir={tmp_path / 'run'}")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not prepared" in lines[0] and "itm_jax.data.karpathy" in lines[0]


def test_eval_of_a_directory_that_is_not_a_run(tmp_path):
    proc = _run("itm_jax.cli.eval", f"--workdir={tmp_path}")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"itm-eval: error: {tmp_path / 'config.json'} not found: "
                                   "pass the --workdir of an itm-train run.")


def test_mine_without_a_teacher_run(tmp_path):
    proc = _run("itm_jax.cli.mine", SMOKE, f"--workdir={tmp_path}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"itm-mine: error: {tmp_path} has no vocab.json: --checkpoint (default --workdir) must "
        "be the directory of an itm-train run."]


def test_a_diverging_run_stops_with_one_line(tmp_path):
    # A finite loss whose update overflows the weights, caught before they are validated or
    # saved (the unguarded run fails inside the evaluation with a traceback).
    proc = _run("itm_jax.cli.train", SMOKE, f"--workdir={tmp_path}",
                "--config.optim.learning_rate=1e30", "--config.optim.grad_clip=0")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("itm-train: error: The parameters became non-finite at step 1")
    assert "Traceback" not in proc.stderr and not (tmp_path / "checkpoints" / "4").exists()
