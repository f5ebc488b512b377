"""Training entry point (``itm-train``).

    python -m itm_jax.main --config=configs/default.py --workdir=workdir/default \\
        [--config.losses.0.margin=0.1 ...]

Configs load locked, so a misspelt override is an error rather than a new field. List
elements are addressed as ``losses.0`` (rewritten to ml_collections' ``losses[0]``).
Multi-process runs (pods, SLURM) call ``jax.distributed.initialize`` first: automatically
where JAX detects the cluster, or from ``--coordinator_address/--num_processes/--process_id``.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from itm_jax import host_memory

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:preset]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, metrics).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_MULTIPROCESS = flags.DEFINE_bool(
    "multiprocess", False, "Call jax.distributed.initialize() with cluster auto-detection "
    "(TPU pods, SLURM); implied by --coordinator_address.")


def list_index_syntax(argv: list[str]) -> list[str]:
    """``--config.losses.0.margin=x`` -> ``--config.losses[0].margin=x`` (flag names only)."""

    def fix(arg: str) -> str:
        if not arg.startswith("--config."):
            return arg
        name, eq, value = arg.partition("=")
        return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", name) + eq + value

    return [fix(a) for a in argv]


def initialize_distributed() -> None:
    import jax

    if _COORDINATOR.value is not None:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _MULTIPROCESS.value:
        jax.distributed.initialize()


def main(argv) -> None:
    del argv
    host_memory.reuse_freed_memory()  # before JAX starts its threads
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    initialize_distributed()
    from itm_jax.train import train_and_evaluate  # after distributed init: it starts JAX

    metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print("test:", " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))


def config_root(argv: list[str]) -> str | None:
    """The directory holding ``configs/``, so configs can ``from configs import default``."""
    for arg in argv:
        if arg.startswith("--config="):
            path = os.path.abspath(arg.split("=", 1)[1].split(":", 1)[0])
            return os.path.dirname(os.path.dirname(path))
    return None


def run() -> None:
    flags.mark_flags_as_required(["config", "workdir"])
    root = config_root(sys.argv)
    if root and root not in sys.path:
        sys.path.insert(0, root)
    # config_flags reads the overrides from sys.argv itself.
    sys.argv[:] = list_index_syntax(sys.argv)
    app.run(main)


if __name__ == "__main__":
    run()
