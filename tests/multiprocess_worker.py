"""One process of the two-process training test (run by tests/test_multiprocess.py).

Usage: python multiprocess_worker.py PROCESS_ID PORT WORKDIR OUT_NPZ
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id, port, workdir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402

from itm_jax import train  # noqa: E402
from train_utils import flat_params, load_config  # noqa: E402

config = load_config()
config.num_steps, config.eval_every, config.checkpoint_every = 3, 0, 3
config.mesh.data = -1
assert jax.device_count() == 4 and jax.local_device_count() == 2
state = train.Trainer(config, workdir).train()
if jax.process_index() == 0:
    np.savez(out, **flat_params(state))
