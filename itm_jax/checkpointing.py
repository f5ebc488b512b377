"""Orbax checkpoints of a run: the last N training states and the best-by-validation weights.

``workdir/checkpoints/<step>``: the full train state (params, optimiser state, step, RNG and
BatchNorm state) and the Grain iterator position, so a resumed run continues the same batches.
``workdir/best/<step>``: params and model state of the best validation R-sum, for evaluation
and mining. Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed mid-save resumes from the previous checkpoint; restoring places the
arrays with the shardings of the given target, so a run resumes on any device count.
"""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


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

    def restore_best(self, state) -> tuple[Any, Any]:
        """``(params, rest)`` of the best checkpoint, placed like ``state``'s."""
        step = self.best.best_step()
        if step is None:
            raise FileNotFoundError(
                f"No best checkpoint under {self.best.directory}: the run never validated "
                "(config.eval_every > 0 turns validation on)."
            )
        target = _abstract({"params": state.params, "rest": state.rest})
        weights = self.best.restore(step, args=ocp.args.Composite(
            weights=ocp.args.StandardRestore(target))).weights
        return weights["params"], weights["rest"]


def read_weights(run_dir: str | pathlib.Path) -> tuple[int, dict[str, Any]]:
    """A run's best weights, else those of its latest checkpoint, as stored (no target model):
    ``(step, {"params": tree, "rest": tree})`` of arrays, to initialise another model from."""
    run_dir = pathlib.Path(run_dir).absolute()
    for sub, item in (("best", "weights"), ("checkpoints", "state")):
        if not (run_dir / sub).is_dir():
            continue
        manager = ocp.CheckpointManager(run_dir / sub)
        step = manager.best_step() if sub == "best" else manager.latest_step()
        if step is not None:
            stored = manager.restore(step, args=ocp.args.Composite(
                **{item: ocp.args.StandardRestore()}))[item]
            manager.close()
            return step, {"params": stored["params"], "rest": stored["rest"]}
        manager.close()
    raise FileNotFoundError(f"No checkpoint under {run_dir}/best or {run_dir}/checkpoints: pass "
                            "the --workdir of an itm-train run that saved one.")
