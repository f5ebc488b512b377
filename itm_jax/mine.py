"""Offline hard-negative mining entry point (``itm-mine``) for AOQ round 2 (Chen, Deng and Luo,
ECCV 2020, Sec. 3.2; ``shared/spec/losses.md``, AOQ "Mining").

    python -m itm_jax.mine --config=configs/aoq_round1_coco.py --workdir=workdir/aoq_r1_coco \\
        [--checkpoint=TEACHER_RUN] [--h_t=300 --h_i=60] [--config.data.data_dir=...]

The teacher is the run in ``--checkpoint`` (default: ``--workdir``): its vocabulary, its best
checkpoint (``best/``) or else its latest (``checkpoints/``), built from ``--config`` (the
teacher's model config; overrides as for ``itm-train``). It embeds every training image and
caption, and ``itm_jax.mining.mine`` writes, to ``WORKDIR/mining/``: ``i2t.npy [N, h_t]`` (each
image's hardest captions), ``t2i.npy [M, h_i]`` (each caption's hardest images), their scores and
``manifest.json``. Round 2 reads them with ``--config.aoq.mining_dir=WORKDIR/mining``.

The job resumes where a killed run stopped (the embeddings are cached in ``mining/work/`` until
it finishes) and does nothing when the lists of this teacher already exist. Multi-process runs
take the distributed flags of ``itm-train`` (``--multiprocess`` or ``--coordinator_address``...):
every process embeds, mines its share of the image blocks, and process 0 writes the files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import sys
from typing import Any

import numpy as np
from absl import app, flags, logging

from itm_jax import host_memory

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Flags of this command, defined when it starts (see ``itm_jax.evaluate``): ``--config``,
    ``--workdir`` and the distributed flags come from ``itm_jax.main``."""
    flags.DEFINE_string("checkpoint", None, "Teacher run directory (default: --workdir).")
    flags.DEFINE_integer("h_t", None, "Captions mined per image (default: config.aoq.h_t, 300).")
    flags.DEFINE_integer("h_i", None, "Images mined per caption (default: config.aoq.h_i, 60).")
    flags.DEFINE_integer("block_size", 512, "Image rows per score block (a multiple of 32).")
    flags.DEFINE_enum("backend", "jax", ["jax", "faiss"], "Scoring backend.")


def config_sha256(config) -> str:
    return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()


def teacher_weights(trainer, teacher: pathlib.Path):
    """``(params, rest, info)`` of the teacher run: its best checkpoint, else its latest.

    ``info`` = ``{"run_dir", "checkpoint", "step", "kind"}`` for the manifest.
    """
    import jax

    from itm_jax import checkpointing
    from itm_jax.train import copy_matching

    step = trainer.ckpt.best.best_step()
    if step is not None:
        params, rest = trainer.best_weights()
        kind = "best"
    else:
        step = trainer.ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"No checkpoint under {teacher}/best or {teacher}/checkpoints: pass "
                "--checkpoint=<the round-1 run directory> (the --workdir of itm-train).")
        step, stored = checkpointing.read_weights(teacher)
        params, rest = (jax.device_put(copy_matching(tree, stored[k], str(teacher), strict=True),
                                       trainer.repl)
                        for tree, k in zip(trainer.initial_weights(), ("params", "rest")))
        kind = "checkpoints"
    info = {"run_dir": str(teacher.absolute()), "kind": kind, "step": int(step),
            "checkpoint": str((teacher / kind / str(step)).absolute())}
    return params, rest, info


def train_embeddings(trainer, params, rest, cache: pathlib.Path, key: dict[str, Any]):
    """``[N, D]`` / ``[M, D]`` embeddings of the training split, cached in ``cache`` for this
    ``key`` (teacher checkpoint and config), so a resumed job mines the very same arrays."""
    import jax

    from itm_jax.mining import _atomic_write

    files = {"key": cache / "embeddings.json", "img": cache / "images.npy",
             "cap": cache / "captions.npy"}
    try:
        if json.loads(files["key"].read_text()) == key:
            return np.load(files["img"]), np.load(files["cap"])
    except (OSError, ValueError):
        pass
    img, cap = trainer.embed(params, rest, "train")
    if jax.process_index() == 0:
        cache.mkdir(parents=True, exist_ok=True)
        for name, a in (("img", img), ("cap", cap)):
            _atomic_write(files[name], lambda f, a=a: np.save(f, a, allow_pickle=False))
        _atomic_write(files["key"], lambda f: f.write(json.dumps(key).encode()))
    return img, cap


def mine_run(config, workdir, checkpoint=None, *, h_t: int | None = None, h_i: int | None = None,
             block_size: int = 512, backend: str = "jax", progress: bool = True) -> pathlib.Path:
    """Mines the training split of ``config`` with the teacher run ``checkpoint`` (default
    ``workdir``) into ``workdir/mining``; returns that directory.

    ``h_t`` / ``h_i`` default to ``config.aoq.h_t`` / ``h_i`` (300 / 60).
    """
    from itm_jax import mining
    from itm_jax.data.source import image_ids
    from itm_jax.train import Trainer

    out = pathlib.Path(workdir) / "mining"
    teacher = pathlib.Path(checkpoint or workdir)
    if not (teacher / "vocab.json").exists():
        raise FileNotFoundError(f"{teacher} has no vocab.json: --checkpoint (default --workdir) "
                                "must be the directory of an itm-train run.")
    aoq = config.get("aoq", {})
    h_t = h_t or aoq.get("h_t", 300)
    h_i = h_i or aoq.get("h_i", 60)
    trainer = Trainer(config, teacher)
    params, rest, info = teacher_weights(trainer, teacher)
    source = trainer.sources["train"]
    meta = {"teacher": info, "config_sha256": config_sha256(config),
            "dataset": {"name": config.data.name, "data_dir": config.data.get("data_dir", ""),
                        "split": "train"}}
    if _already_mined(out, meta, source, h_t, h_i, backend):
        print(f"{out}: already mined with this teacher")
        return out
    img, cap = train_embeddings(trainer, params, rest, out / "work", {
        "checkpoint": info["checkpoint"], "config_sha256": meta["config_sha256"]})
    manifest = mining.mine(img, cap, source.cap_to_img, out, image_ids=image_ids(source),
                           h_t=h_t, h_i=h_i, backend=backend, block_size=block_size,
                           metadata=meta, progress=progress)
    print(f"{out}: i2t {manifest['files']['i2t']['shape']}, t2i "
          f"{manifest['files']['t2i']['shape']} from {info['checkpoint']}")
    return out


def _already_mined(out: pathlib.Path, meta: dict, source, h_t: int, h_i: int,
                   backend: str) -> bool:
    """Whether ``out`` holds intact lists of this teacher, config, dataset, h and backend (the
    job would write the same lists again)."""
    from itm_jax import mining

    try:
        _, _, manifest = mining.load_mined(out, source, h_t=h_t, h_i=h_i)
    except ValueError:
        return False
    return (manifest["h_t"], manifest["h_i"], manifest["backend"]) == (h_t, h_i, backend) and all(
        manifest.get(k) == meta[k] for k in ("teacher", "config_sha256"))


def main(cli, argv) -> None:
    del argv
    host_memory.reuse_freed_memory()  # before JAX starts its threads
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    cli.initialize_distributed()
    mine_run(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint, h_t=FLAGS.h_t, h_i=FLAGS.h_i,
             block_size=FLAGS.block_size, backend=FLAGS.backend)


def run() -> None:
    from itm_jax import main as cli  # --config, --workdir, the distributed flags

    _define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    root = cli.config_root(sys.argv)
    if root and root not in sys.path:
        sys.path.insert(0, root)
    sys.argv[:] = cli.list_index_syntax(sys.argv)  # config_flags reads the overrides from argv
    app.run(functools.partial(main, cli))


if __name__ == "__main__":
    run()
