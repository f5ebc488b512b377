"""``itm-train`` (also ``python -m itm_jax.main``): train and test one run.

    itm-train --config=configs/default.py --workdir=workdir/default [--config.losses.0.margin=0.1]

Running the same command again resumes an interrupted run and does nothing for a finished one.
"""

from __future__ import annotations

from absl import flags

from itm_jax.cli import common

FLAGS = flags.FLAGS
_NAMES = ("config", "workdir", "accept_config_change", "coordinator_address", "num_processes",
          "process_id", "multiprocess")


def main() -> None:
    common.initialize_distributed()
    from itm_jax.training.loop import train_and_evaluate  # after distributed init: starts JAX

    metrics = train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                 accept_config_change=FLAGS.accept_config_change)
    print("test:", " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))


def run() -> None:
    common.define_config_flags("Run directory (checkpoints, logs, metrics); the same command "
                               "with the same directory resumes the run.")
    flags.DEFINE_bool("accept_config_change", False, "Continue a run under a config that differs "
                      "from its config.json (the change is recorded in config_history.jsonl).")
    common.define_distributed_flags()
    common.run(main, prog="itm-train", doc=__doc__, names=_NAMES, required=("config", "workdir"))


if __name__ == "__main__":
    run()
