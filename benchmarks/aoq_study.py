"""Why AOQ round 2 trails round 1 on the built-in data: round-2 variants, validation split only.

Each arm is the ordinary command line (``itm-train``, ``itm-mine``) on ``configs/default.py``
presets, one seed per lane, each lane pinned to its own CPU core; a re-run skips finished runs.
Arms (``--epochs`` E, 6 by default, the demo's 12-epoch budget halved to fit two seeds on the
2-core VM; round 1 is ``loss=mh``, mined by ``itm-mine``):

    mh          round 1 (E epochs), the teacher of the round-2 arms below unless stated
    aoq_zero    round 2's pipeline with the offline terms weighted 0 (must equal mh)
    adaptive    round 2, AdapOffQuin (the paper's AOQ, Eq. 5)
    offtri      round 2, offline triplets (Eq. 3)
    offquin     round 2, offline quintuplets (Eq. 3 + 4)
    h_scaled    adaptive with h_t / h_i scaled to the data (300 / 60 of Flickr30K's 145k captions
                and 29k images -> 40 / 8 of 20k and 4k)
    finetune    adaptive, initialised from round 1 (no warm-up, learning rate 2e-4): Table 3's
                fine-tuning against retraining
    finetune_mh its control: MH fine-tuned the same way (the same extra epochs, no offline terms)
    mh_2x       round 1 at 2E epochs                 adaptive_2x   round 2 at 2E from mh_2x
    h_scaled_2x h_scaled at 2E epochs from mh_2x
    teacher_2x  round 2 at E epochs mined by mh_2x (a stronger teacher)
    vsrn        round 1 on VSRN (model=vsrn)         vsrn_adaptive round 2 on VSRN from vsrn
    vsrn_h_scaled  vsrn_adaptive with h_t / h_i 40 / 8

    python benchmarks/aoq_study.py --workdir=workdir/aoq_study --seeds=2

Writes ``WORKDIR/results.jsonl`` (one line per run: best and last validation R-sum, seconds)
and prints a table of mean and standard deviation over seeds, each arm against its round 1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "default.py"


def _run(args: list[str], log: pathlib.Path, cores: set[int]) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        code = subprocess.call([sys.executable, "-m", *args], cwd=ROOT, stdout=out,
                               stderr=subprocess.STDOUT,
                               preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if code:
        raise RuntimeError(f"`python -m {' '.join(args)}` failed (exit {code}); see {log}.")


class Lane:
    """The runs of one seed, in order, on its cores."""

    def __init__(self, workdir: pathlib.Path, seed: int, epochs: int, cores: set[int]):
        self.workdir, self.seed, self.epochs, self.cores = workdir, seed, epochs, cores

    def flags(self, preset: str, epochs: int) -> list[str]:
        return [f"--config={CONFIG}:{preset}", f"--config.seed={self.seed}",
                f"--config.num_epochs={epochs}"]

    def train(self, arm: str, preset: str, *extra: str, epochs: int | None = None) -> dict:
        epochs = epochs or self.epochs
        directory = self.workdir / f"{arm}-seed{self.seed}"
        done = directory / "study_result.json"
        if not done.exists():
            start = time.perf_counter()
            _run(["itm_jax.cli.train", *self.flags(preset, epochs), f"--workdir={directory}",
                  *extra], directory / "study.log", self.cores)
            from itm_jax.training.metric_writer import read_metrics

            val = [r["val/rsum"] for r in read_metrics(directory) if "val/rsum" in r]
            result = {"arm": arm, "seed": self.seed, "epochs": epochs, "val_rsum": max(val),
                      "last_val_rsum": val[-1], "val_curve": val,
                      "seconds": round(time.perf_counter() - start, 1)}
            done.write_text(json.dumps(result) + "\n")
        return json.loads(done.read_text())

    def mine(self, teacher: str, preset: str, epochs: int | None = None) -> str:
        directory = self.workdir / f"{teacher}-seed{self.seed}"
        if not (directory / "mining" / "manifest.json").exists():
            _run(["itm_jax.cli.mine", *self.flags(preset, epochs or self.epochs),
                  f"--workdir={directory}"], directory / "mining.log", self.cores)
        return f"--config.aoq.mining_dir={directory / 'mining'}"

    def all(self, arms: set[str]) -> list[dict]:
        out = [self.train("mh", "loss=mh")]
        mined = self.mine("mh", "loss=mh")
        round2 = {"aoq_zero": ("loss=aoq_zero",), "adaptive": ("loss=aoq",),
                  "offtri": ("loss=offtri",), "offquin": ("loss=offquin",),
                  "h_scaled": ("loss=aoq", "--config.aoq.h_t=40", "--config.aoq.h_i=8"),
                  "finetune": ("loss=aoq,no_warmup", "--config.optim.learning_rate=2e-4",
                               f"--config.init_from={self.workdir / f'mh-seed{self.seed}'}"),
                  "finetune_mh": ("loss=mh,no_warmup", "--config.optim.learning_rate=2e-4",
                                  f"--config.init_from={self.workdir / f'mh-seed{self.seed}'}")}
        for arm, (preset, *extra) in round2.items():
            if arm in arms:
                out.append(self.train(arm, preset, mined, *extra))
        if arms & {"adaptive_2x", "teacher_2x", "h_scaled_2x"}:
            out.append(self.train("mh_2x", "loss=mh", epochs=2 * self.epochs))
            mined_2x = self.mine("mh_2x", "loss=mh", epochs=2 * self.epochs)
            if "teacher_2x" in arms:
                out.append(self.train("teacher_2x", "loss=aoq", mined_2x))
            if "adaptive_2x" in arms:
                out.append(self.train("adaptive_2x", "loss=aoq", mined_2x,
                                      epochs=2 * self.epochs))
            if "h_scaled_2x" in arms:
                out.append(self.train("h_scaled_2x", "loss=aoq", mined_2x, "--config.aoq.h_t=40",
                                      "--config.aoq.h_i=8", epochs=2 * self.epochs))
        if arms & {"vsrn_adaptive", "vsrn_h_scaled"}:
            out.append(self.train("vsrn", "loss=mh,model=vsrn"))
            mined_vsrn = self.mine("vsrn", "loss=mh,model=vsrn")
            if "vsrn_adaptive" in arms:
                out.append(self.train("vsrn_adaptive", "loss=aoq,model=vsrn", mined_vsrn))
            if "vsrn_h_scaled" in arms:
                out.append(self.train("vsrn_h_scaled", "loss=aoq,model=vsrn", mined_vsrn,
                                      "--config.aoq.h_t=40", "--config.aoq.h_i=8"))
        return out


ARMS = ("aoq_zero", "adaptive", "offtri", "offquin", "h_scaled", "finetune", "finetune_mh",
        "teacher_2x", "adaptive_2x", "h_scaled_2x", "vsrn_adaptive", "vsrn_h_scaled")
BASE = {"mh_2x": None, "vsrn": None, "adaptive_2x": "mh_2x", "h_scaled_2x": "mh_2x",
        "vsrn_adaptive": "vsrn", "vsrn_h_scaled": "vsrn"}


def table(results: list[dict]) -> str:
    by_arm: dict[str, dict[int, dict]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r
    lines = ["| arm | epochs | seeds | best val R-sum | last val R-sum | minus its round 1 "
             "(per seed) | train s |", "|---|---|---|---|---|---|---|"]
    for arm, runs in by_arm.items():
        best = np.array([r["val_rsum"] for r in runs.values()])
        last = np.array([r["last_val_rsum"] for r in runs.values()])
        base = BASE.get(arm, "mh")
        delta = ""
        if base and arm != base:
            d = [runs[s]["val_rsum"] - by_arm[base][s]["val_rsum"] for s in sorted(runs)
                 if s in by_arm.get(base, {})]
            delta = f"{np.mean(d):+.1f} ({', '.join(f'{x:+.1f}' for x in d)})"
        secs = np.mean([r["seconds"] for r in runs.values()])
        lines.append(f"| {arm} | {next(iter(runs.values()))['epochs']} | {len(runs)} | "
                     f"{best.mean():.1f} ± {best.std():.1f} | {last.mean():.1f} ± "
                     f"{last.std():.1f} | {delta} | {secs:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="workdir/aoq_study")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--arms", default=",".join(ARMS))
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir).resolve()
    arms = set(args.arms.split(","))
    if unknown := arms - set(ARMS):
        parser.error(f"unknown arms {sorted(unknown)}; valid: {', '.join(ARMS)}")
    cores = sorted(os.sched_getaffinity(0))
    lanes = [Lane(workdir, s, args.epochs, {cores[s % len(cores)]}) for s in range(args.seeds)]
    with concurrent.futures.ThreadPoolExecutor(len(lanes)) as pool:
        results = [r for rs in pool.map(lambda lane: lane.all(arms), lanes) for r in rs]
    with open(workdir / "results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
    print(table(results))


if __name__ == "__main__":
    main()
