"""Runs ``itm-train`` in this process and SIGKILLs (or SIGTERMs) it at a chosen moment.

    python tests/lifecycle_driver.py WHEN [itm-train flags...]

WHEN is ``never``; ``step:N`` (SIGKILL once step N is done, before step N + 1 starts);
``checkpoint:N`` (SIGKILL right after the checkpoint of step N is complete);
``checkpoint_write:N`` (SIGKILL while the checkpoint of step N is written: its files are in
orbax's temporary directory, not yet renamed into place); ``test_eval`` (SIGKILL during the
final test evaluation); ``sigterm:N`` (SIGTERM to itself once step N is done, as a cluster's
preemption does). The kills are real signals to this process; only the moment is
chosen by wrapping library functions.
"""

import os
import signal
import sys


def _kill(signum=signal.SIGKILL):
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signum)


def arm(when: str) -> None:
    kind, _, arg = when.partition(":")
    if kind in ("step", "sigterm"):
        from itm_jax.experiment import Experiment

        global_batch = Experiment.global_batch
        signum = signal.SIGKILL if kind == "step" else signal.SIGTERM
        taken = []

        def kill_after_step(self, batch):
            if "mask" not in batch:  # a training batch (evaluation batches carry a mask)
                taken.append(1)
                if len(taken) == int(arg) + 1:  # step N is done; N + 1 is about to start
                    _kill(signum)
            return global_batch(self, batch)

        Experiment.global_batch = kill_after_step
    elif kind == "checkpoint":
        from itm_jax.training.checkpointing import Checkpoints

        save = Checkpoints.save

        def save_then_kill(self, step, state, iterator):
            save(self, step, state, iterator)
            if step == int(arg):
                _kill()

        Checkpoints.save = save_then_kill
    elif kind == "checkpoint_write":
        from orbax.checkpoint._src.path import atomicity

        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def kill_before_rename(self, *args, **kwargs):
            final = str(self.get_final())
            if final.endswith(f"/checkpoints/{arg}"):
                _kill()
            return await finalize(self, *args, **kwargs)

        atomicity.AtomicRenameTemporaryPath.finalize = kill_before_rename
    elif kind == "test_eval":
        from itm_jax.training import loop

        split_metrics = loop.split_metrics

        def kill_on_test(exp, img, cap, split):
            if split == "test":
                _kill()
            return split_metrics(exp, img, cap, split)

        loop.split_metrics = kill_on_test
    elif kind != "never":
        raise SystemExit(f"unknown WHEN {when!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from itm_jax.cli import train

    sys.argv = ["itm-train", *sys.argv[2:]]
    train.run()
