"""``itm-mine``: offline hard negatives for AOQ round 2, mined with a trained round-1 run.

    itm-mine --config=configs/aoq_round1_coco.py --workdir=workdir/aoq_r1_coco \\
        [--checkpoint=TEACHER_RUN] [--h_t=300 --h_i=60] [--config.data.data_dir=...]

Writes ``WORKDIR/mining/`` (``i2t.npy``, ``t2i.npy``, their scores, ``manifest.json``); round 2
reads it with ``--config.aoq.mining_dir=WORKDIR/mining``. A killed job resumes where it stopped
(``itm_jax.aoq.job``); a finished one does nothing.
"""

from __future__ import annotations

from absl import flags

from itm_jax.cli import common

FLAGS = flags.FLAGS
_NAMES = ("config", "workdir", "checkpoint", "h_t", "h_i", "block_size", "backend",
          "coordinator_address", "num_processes", "process_id", "multiprocess")


def main() -> None:
    common.initialize_distributed()
    from itm_jax.aoq.teacher import mine_run  # after distributed init: starts JAX

    mine_run(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint, h_t=FLAGS.h_t, h_i=FLAGS.h_i,
             block_size=FLAGS.block_size, backend=FLAGS.backend)


def run() -> None:
    common.define_config_flags("Where the lists go (WORKDIR/mining); also the teacher run "
                               "unless --checkpoint.")
    flags.DEFINE_string("checkpoint", None, "Teacher run directory (default: --workdir).")
    flags.DEFINE_integer("h_t", None, "Captions mined per image (default: config.aoq.h_t, 300).")
    flags.DEFINE_integer("h_i", None, "Images mined per caption (default: config.aoq.h_i, 60).")
    flags.DEFINE_integer("block_size", 512, "Image rows per score block (a multiple of 32).")
    flags.DEFINE_enum("backend", "jax", ["jax", "faiss"], "Scoring backend (faiss: the bench "
                      "extra, a cross-check).")
    common.define_distributed_flags()
    common.run(main, prog="itm-mine", doc=__doc__, names=_NAMES, required=("config", "workdir"))


if __name__ == "__main__":
    run()
