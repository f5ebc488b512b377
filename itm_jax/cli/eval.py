"""``itm-eval``: evaluate a trained run on a split, export its embeddings, or write a report.

    itm-eval --workdir=workdir/default [--split=test] [--checkpoint=latest]
    itm-eval --workdir=workdir/default --export=embeddings/
    itm-eval --workdir=workdir/scan_t2i_avg --ensemble=workdir/scan_i2t_lse
    itm-eval --workdir=workdir/demo --report [--report_model=NAME]

Metrics are printed and written to ``<workdir>/eval/<split>_metrics.json``; the run's own files
are not changed. ``--export`` writes the split's embeddings and ids (``itm_jax.run.Run.export``).
``--report`` writes ``<workdir>/report.html`` (``itm_jax.evaluation.report``), where the workdir
may be one run or a directory of runs.
"""

from __future__ import annotations

from absl import flags

from itm_jax.cli import common
from itm_jax.errors import ConfigError

FLAGS = flags.FLAGS
_NAMES = ("workdir", "split", "checkpoint", "ensemble", "export", "report", "report_model")


def _print_metrics(prefix: str, metrics: dict[str, float]) -> None:
    print(f"{prefix}:", " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))


def main() -> None:
    if FLAGS.report_model and not FLAGS.report:
        raise ConfigError("--report_model only applies with --report.")
    if FLAGS.report:
        from itm_jax.evaluation import report

        result = report.write_report(FLAGS.workdir, split=FLAGS.split, model=FLAGS.report_model)
        for run in result.runs:
            _print_metrics(FLAGS.split if result.single_run else f"{run.name} {FLAGS.split}",
                           run.metrics)
        print(f"report: {result.path}")
        return
    from itm_jax.run import load_run
    from itm_jax.training import run_dir

    run = load_run(FLAGS.workdir, FLAGS.checkpoint)
    if FLAGS.ensemble:
        from itm_jax.run import evaluate_ensemble

        others = [load_run(w, FLAGS.checkpoint) for w in FLAGS.ensemble]
        _print_metrics(f"{FLAGS.split} (ensemble of {1 + len(others)})",
                       evaluate_ensemble([run, *others], FLAGS.split))
        return
    if FLAGS.export:
        print(f"export: {run.export(FLAGS.split, FLAGS.export)}")
        return
    metrics = run.evaluate(FLAGS.split)
    run_dir.save_eval(FLAGS.workdir, FLAGS.split, metrics)
    _print_metrics(FLAGS.split, metrics)


def run() -> None:
    flags.DEFINE_string("workdir", None, "Run directory written by itm-train (with --report: or "
                        "a directory of runs).")
    flags.DEFINE_enum("split", "test", ["val", "test", "train"], "Split to evaluate or export.")
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Weights: the best validation "
                      "checkpoint or the latest training checkpoint.")
    flags.DEFINE_string("export", None, "Write the split's embeddings (.npy) and ids to this "
                        "directory instead of printing metrics.")
    flags.DEFINE_list("ensemble", [], "Other runs (comma-separated workdirs) whose score "
                      "matrices are averaged with --workdir's (SCAN t-i + i-t, BFAN equal + prob).")
    flags.DEFINE_bool("report", False, "Also write an HTML retrieval report to "
                      "<workdir>/report.html.")
    flags.DEFINE_string("report_model", None, "With --report: the run (subdirectory name) whose "
                        "retrievals are shown; default: the best R-sum on --split.")
    common.run(main, prog="itm-eval", doc=__doc__, names=_NAMES, required=("workdir",))


if __name__ == "__main__":
    run()
