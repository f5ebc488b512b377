"""The training loop and the run lifecycle: ``train_and_evaluate(config, workdir)``.

Stages (``config.stages``) run one after another, each with a fresh optimiser on the weights of
the previous one. Every ``checkpoint_every`` steps and at the end of each stage the full state
(params, optimiser state, step, RNG and BatchNorm state, data iterator) is saved; validation
runs every ``eval_every`` steps and keeps the best weights.

A run survives interruptions: run the same command again and it ends bitwise equal to an
uninterrupted run.
- Resume: from the newest readable checkpoint, restored with the optimiser of the stage that saved
  it; a checkpoint at a stage's end moves on to the next stage's fresh optimiser exactly as an
  uninterrupted run does. The metric log drops what the redone steps had written.
- SIGTERM / SIGINT (preemption, Ctrl-C): the current step is checkpointed, one line says so, and
  the process exits with ``Preempted.exit_code``.
- A non-finite loss leaves the state untouched and stops the run (``NonFiniteLoss``), keeping the
  last good checkpoint.
- A finished run is not run again: its test metrics are returned.
- A different config in the same directory is refused (``itm_jax.training.run_dir``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import pathlib
import signal
import sys
import threading

import jax
import jax.numpy as jnp

from itm_jax import config_checks
from itm_jax.errors import UserError
from itm_jax.evaluation.embed import embed_split
from itm_jax.evaluation.metrics import split_metrics
from itm_jax.experiment import Experiment
from itm_jax.files import atomic_write_text
from itm_jax.training import checkpointing, run_dir
from itm_jax.training.metric_writer import MetricWriter, Progress
from itm_jax.training.optim import Stage, make_optimizer
from itm_jax.training.step import TrainState, train_step


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the update was not applied."""


class Preempted(UserError):
    """SIGTERM or SIGINT arrived; the run saved its state and stops."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Turns SIGTERM / SIGINT into a request the loop honours at the next step boundary.

    A second signal of the same kind interrupts at once. ``immediate`` (the final evaluation,
    which has nothing to save) makes the first signal interrupt at once.
    """

    def __init__(self):
        self.signum: int | None = None
        self.immediate = False

    def _handle(self, signum, frame):
        if self.signum is not None or self.immediate:
            raise Preempted(f"{signal.Signals(signum).name}: stopped; run the same command to "
                            "resume.", signum)
        self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        """Handlers for the duration (main thread only; elsewhere signals stay as they are)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def stage_at(stages: list[Stage], step: int) -> Stage:
    """The stage that saved a checkpoint at ``step`` (a stage's last step belongs to it)."""
    return next((s for s in stages if step <= s.end), stages[-1])


def fresh_state(exp: Experiment, stage: Stage, tx) -> TrainState:
    _, params, rest = exp.split(stage, train=True)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                       opt_state=tx.init(params))
    # A copy: the step donates its state, and the model's own arrays must outlive it.
    return jax.device_put(jax.tree.map(jnp.copy, state), exp.repl)


def train(exp: Experiment, stop: StopRequest | None = None) -> TrainState:
    """Trains ``exp`` to its last step, resuming from its newest checkpoint; returns the state."""
    c, stop = exp.config, stop or StopRequest()
    it = iter(exp.loader())

    def target(step):
        stage = stage_at(exp.stages, step)
        return fresh_state(exp, stage, _optimizer(exp, stage)[0])

    resumed = exp.checkpoints.restore_latest(target, it)
    start, state = resumed if resumed is not None else (0, None)
    with MetricWriter(exp.workdir, resume_step=start) as writer:
        for stage in exp.stages[stage_at(exp.stages, start).index:]:
            tx, schedule = _optimizer(exp, stage)
            if state is None:
                state = _init_from(exp, fresh_state(exp, stage, tx))
            elif int(state.step) == stage.start:  # next stage: new optimiser, trained weights
                state = state.replace(opt_state=jax.device_put(tx.init(state.params), exp.repl))
            state = _run_stage(exp, stage, state, it, tx, schedule, writer, stop)
    return state


def _optimizer(exp: Experiment, stage: Stage):
    return make_optimizer(exp.config, stage, exp.spe, exp.split(stage, train=True)[1])


def _init_from(exp: Experiment, state: TrainState) -> TrainState:
    """A fresh state with the weights of ``config.init_from`` (a run directory) where names
    and shapes match: ConVSE's heads start on a trained VSE++ base network."""
    source = exp.config.get("init_from", "")
    if not source:
        return state
    _, stored = checkpointing.read_weights(source)
    params = checkpointing.copy_matching(state.params, stored["params"], source)
    rest = checkpointing.copy_matching(state.rest, stored["rest"], source) \
        if jax.tree.leaves(state.rest) else state.rest
    return state.replace(params=jax.device_put(params, exp.repl),
                         rest=jax.device_put(rest, exp.repl))


def _run_stage(exp, stage, state, it, tx, schedule, writer, stop) -> TrainState:
    c = exp.config
    graphdef = exp.split(stage, train=True)[0]
    step_fn = jax.jit(
        functools.partial(train_step, graphdef=graphdef, tx=tx, losses=stage.losses,
                          use_id_positives=c.use_id_positives, extras=tuple(exp.extras)),
        in_shardings=(exp.repl, exp.rows), out_shardings=(exp.repl, exp.repl, exp.repl),
        donate_argnums=0,
    )
    step = int(state.step)
    progress = Progress(exp.num_steps, start=step, every=c.log_every, desc=f"stage {stage.index}")
    pending = None  # the previous step's (step, metrics, finite), checked one step late
    try:
        while step < stage.end:
            if stop.signum is not None:
                _check_finite(pending)
                exp.checkpoints.save(step, state, it)
                name = signal.Signals(stop.signum).name
                raise Preempted(f"{name}: saved checkpoint at step {step} in "
                                f"{exp.workdir / 'checkpoints'}; run the same command to resume.",
                                stop.signum)
            batch = exp.global_batch(next(it))
            state, metrics, finite = step_fn(state, batch)
            _check_finite(pending)
            step += 1
            pending = (step, metrics, finite)
            if step % c.log_every == 0 or step == stage.end:
                _check_finite(pending)
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                lr = float(schedule(step - 1 - stage.start))
                writer.write(step, {**values, "lr": lr, "stage": stage.index})
                progress.update(step, {"loss": values["loss"]})
            if c.eval_every > 0 and (step % c.eval_every == 0 or step == exp.num_steps):
                _check_finite(pending)
                _validate(exp, step, state, writer)
            if step % c.checkpoint_every == 0 or step == stage.end:
                _check_finite(pending)
                exp.checkpoints.save(step, state, it)
        _check_finite(pending)
    finally:
        progress.close()
    return state


def _check_finite(pending) -> None:
    if pending is None:
        return
    step, metrics, finite = pending
    if not bool(finite):
        terms = {k: round(float(v), 4) for k, v in jax.device_get(metrics).items()}
        raise NonFiniteLoss(
            f"Non-finite loss at step {step} {terms}: the update was not applied and the last "
            "good checkpoint is kept; lower the learning rate, check the inputs, or raise the "
            "temperature/epsilon of the loss.")
    # A finite loss whose update overflows (a learning rate far too high) leaves inf/NaN
    # weights; the step's parameter norm shows it before they are validated or saved.
    if not math.isfinite(float(metrics["param_norm"])):
        raise NonFiniteLoss(
            f"The parameters became non-finite at step {step} (loss {float(metrics['loss']):.4g}):"
            " the last good checkpoint is kept; lower the learning rate or clip the gradients "
            "(optim.grad_clip).")


def _validate(exp: Experiment, step: int, state: TrainState, writer) -> None:
    metrics = split_metrics(exp, *embed_split(exp, state.params, state.rest, "val"), "val")
    writer.write(step, {f"val/{k}": v for k, v in metrics.items()})
    exp.checkpoints.save_best(step, state, metrics["rsum"])


def train_and_evaluate(config, workdir: str | pathlib.Path, *,
                       accept_config_change: bool = False) -> dict[str, float]:
    """Trains (resuming from ``workdir``), then evaluates the best checkpoint on the test split.

    The config is validated before anything is created. A finished run returns its test metrics
    and changes nothing. Returns the test metrics (also written to ``workdir/test_metrics.json``,
    last, so a run killed before then evaluates again when restarted).
    """
    workdir = pathlib.Path(workdir)
    config_checks.validate(config)
    run_dir.check_workdir(workdir)
    done = run_dir.finished(workdir, config)
    if done is not None:
        print(f"{workdir}: finished; its test metrics are in {workdir / run_dir.TEST_METRICS}")
        return done
    if jax.process_index() == 0:
        run_dir.record_config(workdir, config, accept_change=accept_config_change)
    stop = StopRequest()
    with stop.installed():
        exp = Experiment(config, workdir)
        state = train(exp, stop)
        stop.immediate = True
        if stop.signum is not None:  # arrived after the last step's check; its state is saved
            raise Preempted(f"{signal.Signals(stop.signum).name}: training finished and saved; "
                            "run the same command to evaluate.", stop.signum)
        if config.eval_every > 0:
            params, rest, _ = exp.weights("best")
        else:
            params, rest = state.params, state.rest
        metrics = split_metrics(exp, *embed_split(exp, params, rest, "test"), "test")
        if jax.process_index() == 0:
            with MetricWriter(workdir) as writer:
                writer.write(int(state.step), {f"test/{k}": v for k, v in metrics.items()})
            atomic_write_text(workdir / run_dir.TEST_METRICS, json.dumps(metrics, indent=2) + "\n")
    return metrics
