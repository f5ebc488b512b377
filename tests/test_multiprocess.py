"""Two processes (jax.distributed with a localhost coordinator, 2 CPU devices each) train the
same 3 steps as one process on one device."""

import os
import socket
import subprocess
import sys

import numpy as np

from itm_jax import train
from train_utils import ROOT, flat_params, load_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ITM_JAX_CACHE", str(cache))
    config = load_config()
    config.num_steps, config.eval_every, config.checkpoint_every = 3, 0, 3
    config.mesh.data = 1
    single = flat_params(train.Trainer(config, tmp_path / "single").train())

    port, out = _free_port(), tmp_path / "multi.npz"
    env = {**os.environ, "ITM_JAX_CACHE": str(cache), "PYTHONPATH": str(ROOT / "tests")}
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "tests" / "multiprocess_worker.py"), str(i),
                          str(port), str(tmp_path / "multi"), str(out)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    multi = dict(np.load(out))
    assert multi.keys() == single.keys()
    for k in single:
        np.testing.assert_allclose(multi[k], single[k], rtol=1e-5, atol=1e-6, err_msg=k)
