"""Evaluation entry point (``itm-eval``): the best checkpoint of a run on a split.

    itm-eval --workdir=workdir/default [--split=test]

Reads the run's ``config.json`` and ``vocab.json``, restores the best-by-validation weights
(params only) and prints the split's metrics with the config's protocol; they are also written
to ``workdir/<split>_metrics.json``.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by itm-train.")
_SPLIT = flags.DEFINE_enum("split", "test", ["val", "test"], "Split to evaluate.")


def evaluate_run(workdir: str | pathlib.Path, split: str = "test") -> dict[str, float]:
    from itm_jax.train import Trainer

    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: pass the --workdir of an itm-train run.")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    trainer = Trainer(config, workdir)
    params, rest = trainer.best_weights()
    metrics = trainer.evaluate(params, rest, split)
    (workdir / f"{split}_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    metrics = evaluate_run(_WORKDIR.value, _SPLIT.value)
    print(f"{_SPLIT.value}:", " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))


def run() -> None:
    flags.mark_flags_as_required(["workdir"])
    app.run(main)


if __name__ == "__main__":
    run()
