"""The run lifecycle through the real command line: a run killed at any moment, preempted,
re-run when finished, restarted under another config or from a corrupt checkpoint ends as an
uninterrupted run does, bitwise. Every run is a subprocess (``tests/lifecycle_driver.py``)
killed by a real signal; small configs, one shared compilation cache."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "lifecycle_driver.py"
DEFAULT = ["--config=configs/default.py:smoke", "--config.log_every=1", "--config.eval_every=3",
           "--config.checkpoint_every=4"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "ITM_JAX_CACHE": str(cache / "data"),
            "JAX_COMPILATION_CACHE_DIR": str(cache / "jax"), "PYTHONPATH": str(ROOT),
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def train(env, workdir, args, when="never", *, expect=0):
    proc = subprocess.run([sys.executable, str(DRIVER), when, *args, f"--workdir={workdir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, (when, proc.returncode, proc.stdout[-2000:],
                                       proc.stderr[-3000:])
    return proc


def stored(directory: pathlib.Path, item: str):
    """``{step: {path: array}}`` of every checkpoint in an orbax directory, as stored."""
    manager = ocp.CheckpointManager(directory.absolute())
    out = {}
    for step in manager.all_steps():
        tree = manager.restore(step, args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore()}))[item]
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        out[step] = {jax.tree_util.keystr(k): np.asarray(
            jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else v)
            for k, v in leaves}
    manager.close()
    return out


def assert_bitwise_equal(a: pathlib.Path, b: pathlib.Path, final_step: int):
    """Params, optimiser state (final checkpoint), best weights, test metrics, metric records."""
    for sub, item, steps in (("checkpoints", "state", [final_step]), ("best", "weights", None)):
        sa, sb = stored(a / sub, item), stored(b / sub, item)
        for step in steps or sa:
            assert step in sa and step in sb, (sub, step, sorted(sa), sorted(sb))
            assert sa[step].keys() == sb[step].keys()
            for k in sa[step]:
                np.testing.assert_array_equal(sa[step][k], sb[step][k], err_msg=f"{sub}/{step} {k}")
        assert sorted(sa) == sorted(sb) if sub == "best" else True
    assert (a / "test_metrics.json").read_text() == (b / "test_metrics.json").read_text()
    ra = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert ra == rb
    keys = [(r["step"], tuple(sorted(r))) for r in ra]
    assert len(keys) == len(set(keys)), "duplicated records"


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """The uninterrupted smoke run of configs/default.py (12 steps)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    train(env, workdir, DEFAULT)
    return workdir


def test_kills_at_any_moment_then_restarts_end_bitwise_equal(env, reference, tmp_path):
    run = tmp_path / "run"
    # Each restart is the same command; each kill lands at another moment of the run.
    train(env, run, DEFAULT, "checkpoint_write:4", expect=-signal.SIGKILL)
    assert any(p.name.startswith("4.orbax-checkpoint-tmp") for p in (run / "checkpoints").iterdir())
    train(env, run, DEFAULT, "step:5", expect=-signal.SIGKILL)  # mid-stage, steps 1-5 of this run
    train(env, run, DEFAULT, "checkpoint:8", expect=-signal.SIGKILL)
    train(env, run, DEFAULT, "test_eval", expect=-signal.SIGKILL)
    assert not (run / "test_metrics.json").exists()
    train(env, run, DEFAULT)
    assert_bitwise_equal(reference, run, 12)


def test_sigterm_saves_the_current_step_and_the_restart_is_exact(env, reference, tmp_path):
    run = tmp_path / "run"
    proc = train(env, run, DEFAULT, "sigterm:6", expect=128 + signal.SIGTERM)
    last = proc.stderr.strip().splitlines()[-1]
    # The signal lands during step 7 (sent as step 6 ends), which completes and is saved.
    assert last == (f"itm-train: error: SIGTERM: saved checkpoint at step 7 in "
                    f"{run / 'checkpoints'}; run the same command to resume.")
    assert (run / "checkpoints" / "7").is_dir()
    train(env, run, DEFAULT)
    assert_bitwise_equal(reference, run, 12)


def _files(directory: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file()}


def test_rerunning_a_finished_run_changes_nothing(env, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = _files(run)
    proc = train(env, run, DEFAULT)
    assert "finished" in proc.stdout
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert proc.stdout.strip().splitlines()[-1] == "test: " + " ".join(
        f"{k}={v:.2f}" for k, v in metrics.items())
    assert _files(run) == before


def test_another_config_is_refused_unless_accepted(env, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    saved = (run / "config.json").read_text()
    proc = train(env, run, [*DEFAULT, "--config.losses.0.margin=0.3"], expect=2)
    line = proc.stderr.strip()
    assert "\n" not in line and "losses.0.margin: 0.2 -> 0.3" in line
    assert "--workdir" in line and "--accept_config_change" in line
    assert (run / "config.json").read_text() == saved
    # A safe field (evaluation cadence) is no drift: the finished run stays finished.
    proc = train(env, run, [*DEFAULT, "--config.eval_every=6"])
    assert "finished" in proc.stdout
    train(env, run, [*DEFAULT, "--config.losses.0.margin=0.3", "--accept_config_change"])
    history = [json.loads(x) for x in (run / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["changes"] == [{"field": "losses.0.margin", "old": 0.2, "new": 0.3}]
    assert json.loads(history[-1]["previous"] and saved) == history[-1]["previous"]
    assert json.loads((run / "config.json").read_text())["losses"][0]["margin"] == 0.3


def test_a_corrupt_newest_checkpoint_falls_back_to_an_older_one(env, reference, tmp_path):
    run = tmp_path / "run"
    train(env, run, DEFAULT, "checkpoint:8", expect=-signal.SIGKILL)
    # Cut every array file of the newest checkpoint short, as a full disk or a bad copy does.
    for f in (run / "checkpoints" / "8").rglob("*"):
        if f.is_file() and f.stat().st_size > 64 and "state" in f.parts:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    proc = train(env, run, DEFAULT)
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(run / "checkpoints" / "8") in warning[0]
    assert any((run / "corrupt_checkpoints").iterdir())  # moved aside, not deleted
    assert_bitwise_equal(reference, run, 12)


def test_no_readable_checkpoint_is_one_clear_error(env, tmp_path):
    run = tmp_path / "run"
    train(env, run, DEFAULT, "checkpoint:4", expect=-signal.SIGKILL)
    for f in (run / "checkpoints" / "4").rglob("*"):
        if f.is_file() and "state" in f.parts:
            f.write_bytes(b"")
    proc = train(env, run, DEFAULT, expect=1)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "No readable checkpoint" in lines[0] and "--workdir" in lines[0]
    assert (run / "checkpoints" / "4").is_dir()  # nothing moved or deleted


@pytest.mark.parametrize("config", ["vse_f30k.py:smoke", "cmpm_f30k.py:smoke"])
def test_freeze_then_unfreeze_resumes_exactly_after_the_stage_boundary(env, tmp_path, config):
    args = [f"--config=configs/{config}"]
    train(env, tmp_path / "reference", args)
    run = tmp_path / "run"
    # Stage 0 (frozen backbone) ends at step 2 with a checkpoint; the kill lands right after it,
    # so the restart starts stage 1 from that checkpoint with a fresh optimiser.
    train(env, run, args, "checkpoint:2", expect=-signal.SIGKILL)
    train(env, run, args)
    assert_bitwise_equal(tmp_path / "reference", run, 4)


def test_itm_eval_and_export_leave_the_run_as_it_was(env, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = _files(run)
    for extra in ([], [f"--export={tmp_path / 'export'}"]):
        proc = subprocess.run([sys.executable, "-m", "itm_jax.cli.eval", f"--workdir={run}", *extra],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    # Evaluating the best checkpoint again gives the run's own test metrics.
    assert json.loads((run / "eval" / "test_metrics.json").read_text()) == \
        json.loads((run / "test_metrics.json").read_text())
    after = _files(run)
    assert {k: v for k, v in after.items() if not k.startswith("eval/")} == before
    img = np.load(tmp_path / "export" / "images.npy")
    cap = np.load(tmp_path / "export" / "captions.npy")
    c2i = np.load(tmp_path / "export" / "cap_to_img.npy")
    assert img.shape[0] == 50 and cap.shape[0] == 250 and c2i.shape == (250,)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, rtol=1e-5)
