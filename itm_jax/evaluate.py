"""Evaluation entry point (``itm-eval``): the best checkpoint of a run on a split.

    itm-eval --workdir=workdir/default [--split=test]
    itm-eval --workdir=workdir/demo --report [--report_model=NAME]

Reads the run's ``config.json`` and ``vocab.json``, restores the best-by-validation weights
(params only) and prints the split's metrics with the config's protocol; they are also written
to ``workdir/<split>_metrics.json``.

``--report`` also writes ``workdir/report.html`` (``itm_jax.report``): retrieval examples,
Recall@K and training curves. There ``--workdir`` may be one run or a directory of runs
(``workdir/<name>/config.json``, as an ablation writes them); every run is evaluated as above.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import ml_collections
import numpy as np
from absl import app, flags, logging

from itm_jax import host_memory

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command line's flags. Defined when the command starts, not at import:
    ``python -m itm_jax.evaluate`` runs this file as ``__main__`` and the report imports it
    again as ``itm_jax.evaluate``, and absl refuses a flag defined twice."""
    flags.DEFINE_string(
        "workdir", None, "Run directory written by itm-train (with --report: or a directory "
        "of runs).")
    flags.DEFINE_enum("split", "test", ["val", "test"], "Split to evaluate.")
    flags.DEFINE_bool("report", False, "Also write an HTML retrieval report to "
                      "<workdir>/report.html.")
    flags.DEFINE_string(
        "report_model", None,
        "With --report: the run (subdirectory name) whose retrievals are shown; default: the "
        "run with the best R-sum on --split.")
    flags.mark_flags_as_required(["workdir"])


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The best checkpoint of one run on one split.

    Attributes:
      trainer: the run's ``Trainer`` (config, vocabulary, ``sources[split]``).
      img: float32 ``[N, D]`` L2-normalised image embeddings, split order.
      cap: float32 ``[M, D]`` L2-normalised caption embeddings, split order.
      metrics: the split's metrics under the config's protocol (what ``itm-eval`` prints).
    """

    trainer: object
    img: np.ndarray
    cap: np.ndarray
    metrics: dict[str, float]


def load_trainer(workdir: str | pathlib.Path):
    """The ``Trainer`` of the itm-train run in ``workdir``, rebuilt from its ``config.json``."""
    from itm_jax.train import Trainer

    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        runs = sorted(p.parent.name for p in workdir.glob("*/config.json"))
        hint = (f" {workdir} holds the runs {', '.join(runs)}: pass one of them, or --report "
                "for a report on all of them." if runs else "")
        raise FileNotFoundError(
            f"{config_path} not found: pass the --workdir of an itm-train run.{hint}")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    return Trainer(config, workdir)


def evaluate_best(workdir: str | pathlib.Path, split: str = "test") -> Evaluation:
    """Embeds ``split`` with the run's best checkpoint and scores it; writes
    ``workdir/<split>_metrics.json``. Returns the embeddings with the metrics."""
    workdir = pathlib.Path(workdir)
    trainer = load_trainer(workdir)
    img, cap = trainer.embed(*trainer.best_weights(), split)
    metrics = trainer.metrics(img, cap, split)
    (workdir / f"{split}_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return Evaluation(trainer, img, cap, metrics)


def evaluate_run(workdir: str | pathlib.Path, split: str = "test") -> dict[str, float]:
    """The split's metrics of the run's best checkpoint (also written to
    ``workdir/<split>_metrics.json``)."""
    return evaluate_best(workdir, split).metrics


def _print_metrics(prefix: str, metrics: dict[str, float]) -> None:
    print(f"{prefix}:", " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))


def main(argv) -> None:
    del argv
    host_memory.reuse_freed_memory()  # before JAX starts its threads
    logging.set_verbosity(logging.WARNING)
    if FLAGS.report_model and not FLAGS.report:
        raise app.UsageError("--report_model only applies with --report.")
    if not FLAGS.report:
        _print_metrics(FLAGS.split, evaluate_run(FLAGS.workdir, FLAGS.split))
        return
    from itm_jax import report

    result = report.write_report(FLAGS.workdir, split=FLAGS.split, model=FLAGS.report_model)
    for run in result.runs:
        _print_metrics(FLAGS.split if result.single_run else f"{run.name} {FLAGS.split}",
                       run.metrics)
    print(f"report: {result.path}")


def run() -> None:
    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
