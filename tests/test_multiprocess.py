"""Two processes (jax.distributed with a localhost coordinator, 2 CPU devices each) train the
same 3 steps as one process on one device, and mine the same lists as one process."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from itm_jax.aoq import store
from test_aoq_job import _Source, _mine
from test_aoq_kernel import _data
from train_utils import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(mode: str, workdir, path, env):
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "tests" / "multiprocess_worker.py"), mode,
                          str(i), str(port), str(workdir), str(path)],
                         env={**os.environ, "PYTHONPATH": str(ROOT / "tests"), **env},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)


def test_two_processes_match_one(tmp_path, monkeypatch):
    from itm_jax.experiment import Experiment
    from itm_jax.training import loop
    from train_utils import flat_params, load_config

    cache = tmp_path / "cache"
    monkeypatch.setenv("ITM_JAX_CACHE", str(cache))
    config = load_config()
    config.num_steps, config.eval_every, config.checkpoint_every = 3, 0, 3
    config.mesh.data = 1
    single = flat_params(loop.train(Experiment(config, tmp_path / "single")))

    out = tmp_path / "multi.npz"
    _two_processes("train", tmp_path / "multi", out, {"ITM_JAX_CACHE": str(cache)})
    multi = dict(np.load(out))
    assert multi.keys() == single.keys()
    for k in single:
        np.testing.assert_allclose(multi[k], single[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_two_processes_mine_as_one(tmp_path):
    # Each process mines half of the steps on its 2 devices; process 0 merges the records.
    data = _data(n=300)
    np.savez(tmp_path / "data.npz", **dict(zip(("img", "cap", "cap_to_img", "ids"), data)))
    _two_processes("mine", tmp_path / "multi", tmp_path / "data.npz", {})
    single = tmp_path / "single"
    assert jax.device_count() >= 2
    _mine(single, data, devices=2)
    manifest = store.load_mined(tmp_path / "multi", _Source(*data[2:]))[2]
    assert manifest["plan"] == {"block_size": 32, "devices": 2, "processes": 2, "steps": 5}
    assert not (tmp_path / "multi" / "work").exists()
    for name in store.FILES.values():
        assert (tmp_path / "multi" / name).read_bytes() == (single / name).read_bytes(), name
