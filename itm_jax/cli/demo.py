"""The main job (``make demo``): the losses of five papers compared on the built-in data.

Trains one model per loss on the synthetic dataset's precomputed features, all with the same
encoder (``configs/default.py``: precomp projection + GRU, 256-d), optimiser and budget:

    sh        sum of hinges (VSE0; VSE++ Eq. 3)
    mh        max of hinges (VSE++ Eq. 5), also AOQ's round 1
    imc       MH + intra-modal constraint, L1 (IMC Eq. 3-4)
    convse    contrastive, sum of negatives (ConVSE Eq. 6-8)
    convse++  contrastive, max negative (ConVSE++ Eq. 12-14)
    cmpm      cross-modal projection matching (CMPM Eq. 1-5)
    aoq       AOQ round 2, adaptive (Eq. 5), on negatives mined from the mh model by itm-mine

Hardest-negative losses (mh, imc, convse++, aoq) spend their first epoch on sum of hinges, as
``configs/default.py`` explains. Every step is the ordinary command line (``itm-train``,
``itm-mine``), run as a subprocess; ``--lanes`` of them at a time, each pinned to its own
share of the CPU cores (the GRU's matmuls are too small to share cores well, and unpinned runs
oversubscribe them with their thread pools: on 2 cores two unpinned runs did 4.2 steps/s each).
Runs live in ``WORKDIR/<loss>`` (``<loss>-seed<s>`` for further seeds), so a re-run skips
finished runs and ``itm-eval`` works on each; they share one JAX compilation cache. Writes
``WORKDIR/results.{md,csv}`` (test split, best-validation checkpoints; mean and standard
deviation over seeds) and the retrieval report ``WORKDIR/report.html``.

    python -m itm_jax.cli.demo --workdir=workdir/demo [--seeds=3] [--epochs=12] [--losses=sh,mh]
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import os
import pathlib
import queue
import re
import subprocess
import sys
import threading
import time

import numpy as np
from absl import app, flags, logging

LOSSES = ("sh", "mh", "imc", "convse", "convse++", "cmpm", "aoq")
TITLES = {
    "untrained": "untrained (random init)",
    "sh": "SH (VSE0)",
    "mh": "MH (VSE++) = AOQ round 1",
    "imc": "IMC, L1",
    "convse": "ConVSE (CSN)",
    "convse++": "ConVSE++ (CMN)",
    "cmpm": "CMPM",
    "aoq": "AOQ round 2, adaptive",
}
COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "val_rsum")
ROOT = pathlib.Path(__file__).resolve().parents[2]  # configs/ lives next to the package

_WORKDIR = flags.DEFINE_string("workdir", "workdir/demo", "Directory of the runs and results.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Seeds per loss (the table gives mean and std).")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Training epochs per run; default: configs/"
                               "default.py's num_epochs (hardest-negative losses: the first is "
                               "warm-up; the last at a tenth of the rate).")
_LOSSES = flags.DEFINE_list("losses", list(LOSSES), f"Subset of {', '.join(LOSSES)}.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny data and 12 steps per run (tests).")
_LANES = flags.DEFINE_integer("lanes", 2, "Runs at a time, each on its share of the CPU cores "
                              "(1: one run on all cores).")

_print_lock = threading.Lock()
_lane_cores: queue.Queue[set[int]] = queue.Queue()  # the CPU cores of each idle lane
_ABSL_LOG = re.compile(r"^[IWEF]\d{4} ")  # absl/glog records: in the run's log, not on screen


def run_dir(workdir: pathlib.Path, loss: str, seed: int) -> pathlib.Path:
    return workdir / (loss if seed == 0 else f"{loss}-seed{seed}")


def overrides(loss: str, seed: int, epochs: int) -> list[str]:
    """The command-line flags of one run: ``configs/default.py:loss=<loss>``, seed, budget (the
    config derives its warm-up stage and learning-rate decay from ``num_epochs``)."""
    preset = f"loss={loss}" + (",smoke" if _SMOKE.value else "")
    return [f"--config={ROOT / 'configs' / 'default.py'}:{preset}", f"--config.seed={seed}",
            f"--config.num_epochs={epochs}"]


def command(tag: str, args: list[str], log: pathlib.Path) -> None:
    """Runs ``python -m <args>`` on a free lane's cores; its lines go to ``log`` and, tagged,
    to the terminal."""
    cores = _lane_cores.get()
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "a") as out:
            proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    preexec_fn=lambda: os.sched_setaffinity(0, cores))
            for line in proc.stdout:
                out.write(line)
                line = line.rstrip().rsplit("\r", 1)[-1]  # the last state of a redrawn line
                if line and not _ABSL_LOG.match(line):
                    with _print_lock:
                        print(f"[{tag}] {line}", flush=True)
            if proc.wait():
                raise RuntimeError(f"{tag}: `python -m {' '.join(args)}` failed (exit "
                                   f"{proc.returncode}); see {log}.")
    finally:
        _lane_cores.put(cores)


def train(workdir: pathlib.Path, loss: str, seed: int, epochs: int, *extra: str) -> dict:
    """One ``itm-train`` run (skipped when finished): test metrics, best val R-sum, seconds."""
    directory = run_dir(workdir, loss, seed)
    done = directory / "demo_result.json"
    if done.exists():
        return json.loads(done.read_text())
    start = time.perf_counter()
    command(directory.name, ["itm_jax.cli.train", *overrides(loss, seed, epochs),
                             f"--workdir={directory}", *extra],
            directory / "demo.log")
    from itm_jax.training.metric_writer import read_metrics

    val = [r["val/rsum"] for r in read_metrics(directory) if "val/rsum" in r]
    result = {**json.loads((directory / "test_metrics.json").read_text()),
              "val_rsum": max(val), "seconds": time.perf_counter() - start}
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def aoq_chain(workdir, seed, epochs, with_aoq) -> dict[str, dict]:
    """Round 1 (mh), mining with it, round 2 (aoq): the one chain of dependent steps."""
    out = {"mh": train(workdir, "mh", seed, epochs)}
    if with_aoq:
        teacher = run_dir(workdir, "mh", seed)
        if (run_dir(workdir, "aoq", seed) / "demo_result.json").exists():
            return {**out, "aoq": train(workdir, "aoq", seed, epochs)}
        command(f"{teacher.name}/mining", ["itm_jax.cli.mine", *overrides("mh", seed, epochs),
                                            f"--workdir={teacher}"],
                teacher / "mining.log")
        out["aoq"] = train(workdir, "aoq", seed, epochs,
                           f"--config.aoq.mining_dir={teacher / 'mining'}")
    return out


def untrained(workdir: pathlib.Path) -> dict:
    """Metrics of the randomly initialised model: the floor every loss must beat."""
    from configs import default
    from itm_jax.experiment import Experiment
    from itm_jax.run import Run

    exp = Experiment(default.get_config("smoke" if _SMOKE.value else None), workdir / "untrained")
    run = Run(exp, *exp.weights("initial"))
    return {**run.evaluate("test"), "val_rsum": run.evaluate("val")["rsum"], "seconds": 0.0}


def run_all(workdir: pathlib.Path, losses, seeds: int, epochs: int, lanes: int):
    """Every (loss, seed) run, ``lanes`` at a time; results per loss, in ``LOSSES`` order."""
    if "aoq" in losses and "mh" not in losses:
        raise app.UsageError("The aoq run mines negatives with the mh model: keep mh in --losses.")
    cores = sorted(os.sched_getaffinity(0))
    lanes = max(1, min(lanes, len(cores)))
    for k in range(lanes):  # the cores split round-robin between the lanes
        _lane_cores.put(set(cores[k::lanes]))
    jobs = []
    with concurrent.futures.ThreadPoolExecutor(lanes) as pool:
        for seed in range(seeds):
            if "mh" in losses:  # the longest chain first, so the lanes end together
                jobs.append(pool.submit(aoq_chain, workdir, seed, epochs, "aoq" in losses))
            jobs += [pool.submit(lambda l=loss, s=seed: {l: train(workdir, l, s, epochs)})
                     for loss in losses if loss not in ("mh", "aoq")]
        done = [job.result() for job in jobs]  # re-raises a failed run's error
    results = {"untrained": [untrained(workdir)]}
    for loss in losses:
        results[loss] = [d[loss] for d in done if loss in d]
    return results


def table(results: dict[str, list[dict]]) -> tuple[str, str]:
    """(Markdown, CSV) of the metrics: mean, and ``± std`` over seeds where there are several."""
    md = ["| loss | seeds | " + " | ".join(COLUMNS) + " | train s |",
          "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["loss", "seeds", *(f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")),
                     "seconds_mean"])
    for loss, rows in results.items():
        values = np.array([[r[c] for c in COLUMNS] for r in rows])
        several = len(rows) > 1
        mean = values.mean(0)
        std = values.std(0, ddof=1) if several else np.zeros(len(COLUMNS))
        seconds = float(np.mean([r["seconds"] for r in rows]))
        cells = [f"{m:.1f}" + (f" ± {s:.1f}" if several else "") for m, s in zip(mean, std)]
        md.append(f"| {TITLES[loss]} | {len(rows)} | " + " | ".join(cells) + f" | {seconds:.0f} |")
        writer.writerow([loss, len(rows), *(f"{x:.2f}" for pair in zip(mean, std) for x in pair),
                         f"{seconds:.1f}"])
    return "\n".join(md) + "\n", out.getvalue()


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    unknown = sorted(set(_LOSSES.value) - set(LOSSES))
    if unknown:
        raise app.UsageError(f"Unknown --losses {unknown}; valid: {', '.join(LOSSES)}.")
    workdir = pathlib.Path(_WORKDIR.value).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    # The runs share most of their compiled functions (evaluation, the warm-up stage) and a
    # re-run or another seed all of them.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(workdir / "jax_cache"))
    start = time.perf_counter()
    losses = [loss for loss in LOSSES if loss in _LOSSES.value]
    from configs import default

    epochs = default.get_config().num_epochs if _EPOCHS.value is None else _EPOCHS.value
    results = run_all(workdir, losses, _SEEDS.value, epochs, _LANES.value)
    md, csv_text = table(results)
    (workdir / "results.md").write_text(md)
    (workdir / "results.csv").write_text(csv_text)
    from itm_jax.evaluation.report import write_report

    report = write_report(workdir).path
    print(f"\nTest split of the synthetic data (best-validation checkpoints, {epochs} "
          f"epochs per run; {time.perf_counter() - start:.0f} s in all):\n\n{md}\nWritten: "
          f"{workdir / 'results.md'}, {workdir / 'results.csv'}, {report}")


def run() -> None:
    sys.path.insert(0, str(ROOT))
    app.run(main)


if __name__ == "__main__":
    run()
