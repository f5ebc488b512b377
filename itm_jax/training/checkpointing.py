"""Orbax checkpoints of a run: the last N training states and the best-by-validation weights.

``workdir/checkpoints/<step>``: the full train state (params, optimiser state, step, RNG and
BatchNorm state) and the Grain iterator position, so a resumed run continues the same batches.
``workdir/best/<step>``: params and model state of the best validation R-sum, for evaluation
and mining. Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed mid-save resumes from the previous checkpoint; restoring places the
arrays with the shardings of the given target, so a run resumes on any device count. A
checkpoint that cannot be read (a truncated file, a disk error) is moved to
``workdir/corrupt_checkpoints/<step>`` with a warning, and the newest readable one is used.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from itm_jax.errors import RunError
from itm_jax.training.optim import dotted


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpoints:
    """Periodic (keep-last-``keep``) and best checkpoints under a run directory."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
        directory = pathlib.Path(directory).absolute()
        self.last = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
            ),
        )
        self.best = ocp.CheckpointManager(
            directory.parent / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m["rsum"], best_mode="max", create=True,
                enable_async_checkpointing=False, cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.last.latest_step()

    def restore_latest(self, target_at: Callable[[int], Any], iterator):
        """``(step, state)`` of the newest readable checkpoint, or None when there is none.

        ``target_at(step)`` is the abstract state of the checkpoint at ``step`` (its stage's
        optimiser). An unreadable checkpoint is moved aside with a warning and the next older
        one is tried; when every checkpoint is unreadable the run stops with ``RunError``.
        """
        steps = sorted(self.last.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                state = self.restore(step, target_at(step), iterator)
            except Exception as e:  # noqa: BLE001 - orbax raises many kinds for a bad file
                failures.append((step, e))
                continue
            for bad, error in failures:
                self._quarantine(bad, error)
            return step, state
        if failures:
            step, error = failures[0]
            raise RunError(
                f"No readable checkpoint in {self.last.directory} (steps {steps}; the newest "
                f"fails with {type(error).__name__}: {_first_line(error)}): restore a copy of "
                "the run directory, or start over in a new --workdir.")
        return None

    def _quarantine(self, step: int, error: Exception) -> None:
        path = pathlib.Path(self.last.directory) / str(step)
        aside = path.parent.parent / "corrupt_checkpoints" / f"{step}-{int(time.time())}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, aside)
        self.last.reload()
        print(f"warning: checkpoint {path} is unreadable ({type(error).__name__}: "
              f"{_first_line(error)}); moved to {aside}, resuming from an older one.",
              file=sys.stderr, flush=True)

    def save(self, step: int, state, iterator) -> None:
        if step in self.last.all_steps():
            return
        self.last.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)))

    def restore(self, step: int, target, iterator):
        """The state saved at ``step``, placed like ``target``; ``iterator`` is repositioned."""
        restored = self.last.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(target)),
            data=grain.checkpoint.CheckpointRestore(iterator)))
        return restored.state

    def best_rsum(self) -> float | None:
        step = self.best.best_step()
        if step is None:
            return None
        return float(self.best.metrics(step)["rsum"])

    def save_best(self, step: int, state, rsum: float) -> bool:
        """Saves ``state``'s weights if ``rsum`` beats the best so far; returns whether it did."""
        best = self.best_rsum()
        if best is not None and rsum <= best:
            return False
        self.best.save(step, args=ocp.args.Composite(
            weights=ocp.args.StandardSave({"params": state.params, "rest": state.rest})),
            metrics={"rsum": float(rsum)})
        return True

    def restore_best(self, params, rest) -> tuple[Any, Any]:
        """``(params, rest)`` of the best checkpoint, placed like the given ones."""
        target = _abstract({"params": params, "rest": rest})
        weights = self.best.restore(self.best.best_step(), args=ocp.args.Composite(
            weights=ocp.args.StandardRestore(target))).weights
        return weights["params"], weights["rest"]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else "no message"


def read_weights(run_dir: str | pathlib.Path, *, kind: str | None = None
                 ) -> tuple[int, dict[str, Any]]:
    """A run's best weights, else those of its latest checkpoint (``kind``: only ``"best"`` or
    only ``"checkpoints"``), as stored (no target model): ``(step, {"params": tree, "rest":
    tree})`` of arrays, to initialise another model from."""
    run_dir = pathlib.Path(run_dir).absolute()
    for sub, item in (("best", "weights"), ("checkpoints", "state")):
        if kind not in (None, sub) or not (run_dir / sub).is_dir():
            continue
        manager = ocp.CheckpointManager(run_dir / sub)
        step = manager.best_step() if sub == "best" else manager.latest_step()
        if step is not None:
            stored = manager.restore(step, args=ocp.args.Composite(
                **{item: ocp.args.StandardRestore()}))[item]
            manager.close()
            return step, {"params": stored["params"], "rest": stored["rest"]}
        manager.close()
    where = " or ".join(f"{run_dir}/{sub}" for sub in ("best", "checkpoints") if kind in (None, sub))
    raise RunError(f"No checkpoint under {where}: pass the --workdir of an itm-train run that "
                   "saved one.")


def copy_matching(tree, stored, source: str, *, strict: bool = False):
    """``tree`` with each leaf replaced by the leaf of ``stored`` at the same dotted path, where
    the shapes agree (e.g. a base network's weights under a model that adds heads). ``strict``:
    every leaf must be there (the stored model is this model)."""
    flat = {dotted(p): v for p, v in jax.tree_util.tree_flatten_with_path(stored)[0]}
    copied = []

    def pick(path, x):
        v = flat.get(dotted(path))
        if v is None or v.shape != x.shape:
            if strict:
                raise ValueError(
                    f"{source} has {'no' if v is None else v.shape} {dotted(path)} where this "
                    f"config's model has {x.shape}: pass the config that trained it.")
            return x
        copied.append(dotted(path))
        return jnp.asarray(v, x.dtype)

    out = jax.tree_util.tree_map_with_path(pick, tree)
    total = len(jax.tree.leaves(tree))
    if total and not copied:
        raise ValueError(f"init_from={source!r}: no parameter has the same name and shape as in "
                         "this model; is it a run of a related config?")
    if not strict:
        print(f"init_from {source}: {len(copied)}/{total} arrays copied")
    return out
