"""``mine_run``: embed a training split with a trained (round-1) run and mine its lists.

The teacher is a run directory: its vocabulary, its best checkpoint (``best/``) or else its
latest (``checkpoints/``), built from the given config (the teacher's model config). A set model
(SCAN, BFAN) mines with its attention scores: every training pair is scored by attention, far
more work than a dot product (measured in the README). The embeddings are cached in
``out/work/`` until the job finishes, so a resumed job mines the very same arrays; the job
itself (``itm_jax.aoq.job.mine``) resumes from its saved steps.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import jax
import numpy as np

from itm_jax.aoq import job, store
from itm_jax.errors import RunError, UserError
from itm_jax.evaluation.embed import embed_split
from itm_jax.experiment import Experiment
from itm_jax.files import atomic_write


def config_sha256(config) -> str:
    return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()


def teacher_weights(exp: Experiment):
    """``(params, rest, info)`` of the teacher run ``exp.workdir``: its best checkpoint, else
    its latest; ``info`` = ``{"run_dir", "kind", "step", "checkpoint"}`` for the manifest."""
    which = "best" if exp.checkpoints.best.best_step() is not None else "latest"
    params, rest, info = exp.weights(which)
    return params, rest, {"run_dir": str(exp.workdir.absolute()),
                          "kind": "best" if which == "best" else "checkpoints",
                          "step": info["step"], "checkpoint": info["checkpoint"]}


def _load_tree(path: pathlib.Path):
    with np.load(path, allow_pickle=False) as f:
        return f["x"] if f.files == ["x"] else {k: f[k] for k in f.files}


def train_embeddings(exp: Experiment, params, rest, cache: pathlib.Path, key: dict[str, Any]):
    """``[N, D]`` / ``[M, D]`` embeddings (a set model's sets) of the training split, cached in
    ``cache`` for this ``key`` (teacher checkpoint and config), so a resumed job mines the very
    same arrays."""
    files = {"key": cache / "embeddings.json", "img": cache / "images.npz",
             "cap": cache / "captions.npz"}
    try:
        if json.loads(files["key"].read_text()) == key:
            return _load_tree(files["img"]), _load_tree(files["cap"])
    except (OSError, ValueError, KeyError):
        pass
    img, cap = embed_split(exp, params, rest, "train")
    if jax.process_index() == 0:
        cache.mkdir(parents=True, exist_ok=True)
        for name, tree in (("img", img), ("cap", cap)):
            arrays = tree if isinstance(tree, dict) else {"x": tree}
            atomic_write(files[name], lambda f, a=arrays: np.savez(f, **a))
        atomic_write(files["key"], lambda f: f.write(json.dumps(key).encode()))
    return img, cap


def mine_run(config, workdir, checkpoint=None, *, h_t: int | None = None, h_i: int | None = None,
             block_size: int = 512, backend: str = "jax", progress: bool = True) -> pathlib.Path:
    """Mines the training split of ``config`` with the teacher run ``checkpoint`` (default
    ``workdir``) into ``workdir/mining``; returns that directory.

    ``h_t`` / ``h_i`` default to ``config.aoq.h_t`` / ``h_i`` (300 / 60). Does nothing when the
    lists of this teacher, config, split, h and backend are already there.
    """
    out = pathlib.Path(workdir) / "mining"
    teacher = pathlib.Path(checkpoint or workdir)
    if not (teacher / "vocab.json").exists():
        raise RunError(f"{teacher} has no vocab.json: --checkpoint (default --workdir) must be "
                       "the directory of an itm-train run.")
    aoq = config.get("aoq", {})
    h_t = h_t or aoq.get("h_t", 300)
    h_i = h_i or aoq.get("h_i", 60)
    exp = Experiment(config, teacher)
    params, rest, info = teacher_weights(exp)
    source = exp.sources["train"]
    meta = {"teacher": info, "config_sha256": config_sha256(config),
            "dataset": {"name": config.data.name, "data_dir": config.data.get("data_dir", ""),
                        "split": "train"}}
    if _already_mined(out, meta, source, h_t, h_i, backend):
        print(f"{out}: already mined with this teacher")
        return out
    img, cap = train_embeddings(exp, params, rest, out / "work", {
        "checkpoint": info["checkpoint"], "config_sha256": meta["config_sha256"]})
    manifest = job.mine(img, cap, source, out, h_t=h_t, h_i=h_i, backend=backend,
                        block_size=block_size, scorer=exp.scorer, metadata=meta,
                        progress=progress)
    print(f"{out}: i2t {manifest['files']['i2t']['shape']}, t2i "
          f"{manifest['files']['t2i']['shape']} from {info['checkpoint']}")
    return out


def _already_mined(out: pathlib.Path, meta: dict, source, h_t: int, h_i: int,
                   backend: str) -> bool:
    """Whether ``out`` holds intact lists of this teacher, config, split, h and backend (the
    job would write the same lists again)."""
    try:
        _, _, manifest = store.load_mined(out, source, h_t=h_t, h_i=h_i)
    except UserError:  # missing, partial, another split or h: mine them
        return False
    return (manifest["h_t"], manifest["h_i"], manifest["backend"]) == (h_t, h_i, backend) and all(
        manifest.get(k) == meta[k] for k in ("teacher", "config_sha256"))
