"""One process of the two-process tests (run by tests/test_multiprocess.py).

Usage: python multiprocess_worker.py train PROCESS_ID PORT WORKDIR OUT_NPZ
       python multiprocess_worker.py mine PROCESS_ID PORT OUT_DIR DATA_NPZ
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
mode, process_id, port, workdir, path = (sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4],
                                         sys.argv[5])
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
assert jax.device_count() == 4 and jax.local_device_count() == 2

import numpy as np  # noqa: E402

if mode == "mine":
    # Each process mines its steps on its two devices; process 0 writes the lists.
    from test_aoq_job import _Source  # noqa: E402

    from itm_jax.aoq import job  # noqa: E402

    z = np.load(path)
    job.mine(z["img"], z["cap"], _Source(z["cap_to_img"], z["ids"]), workdir, h_t=40, h_i=12,
             block_size=32, progress=False)
else:
    from itm_jax.experiment import Experiment  # noqa: E402
    from itm_jax.training import loop  # noqa: E402
    from train_utils import flat_params, load_config  # noqa: E402

    config = load_config()
    config.num_steps, config.eval_every, config.checkpoint_every = 3, 0, 3
    config.mesh.data = -1
    state = loop.train(Experiment(config, workdir))
    if jax.process_index() == 0:
        np.savez(path, **flat_params(state))
