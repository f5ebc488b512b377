"""Metrics to the workdir (JSON lines + TensorBoard event files) and progress on the console.

Only process 0 writes: on a pod every process computes the same replicated metrics. TensorBoard
files come from tensorboardX so the training process never imports TensorFlow.

A resumed run redoes the steps after its checkpoint; ``resume_step`` drops the records those
steps wrote before the interruption (and TensorBoard purges their events), so the log of a
resumed run holds each ``(step, kind)`` record once, as an uninterrupted run's does.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Mapping

import jax


class MetricWriter:
    """Writes ``{step, name: value}`` records to ``workdir/metrics.jsonl`` and TensorBoard.

    Args:
      workdir: run directory; event files go to ``workdir/tensorboard``.
      resume_step: the step the run (re)starts from: training and validation records after it
        and every test record are dropped first. None keeps everything (appends).
      enabled: whether this process writes (default: ``jax.process_index() == 0``).
    """

    def __init__(self, workdir: str | pathlib.Path, *, resume_step: int | None = None,
                 enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            workdir = pathlib.Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            path = workdir / "metrics.jsonl"
            if resume_step is not None and path.exists():
                kept = [r for r in read_metrics(workdir)
                        if r["step"] <= resume_step and record_kind(r) != "test"]
                tmp = path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
                os.replace(tmp, path)
            self._jsonl = open(path, "a", buffering=1)
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=10,
                                     purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        for name, value in values.items():
            if math.isfinite(value):
                self._tb.add_scalar(name, value, int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """All records of ``workdir/metrics.jsonl`` in order (for reports and tests)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_kind(record: Mapping) -> str:
    """``"test"``, ``"val"`` or ``"train"``: which evaluation (or the training step) wrote it."""
    for kind in ("test", "val"):
        if any(k.startswith(f"{kind}/") for k in record):
            return kind
    return "train"


class Progress:
    """Steps/s and ETA: a live bar on a terminal, a plain line every ``every`` steps otherwise.

    Args:
      total: the last step of the run. start: the step the run (re)starts from.
      every: steps between plain lines (non-terminal output, e.g. a log file or CI).
      enabled: default process 0 only.
    """

    def __init__(self, total: int, *, start: int = 0, every: int = 100, desc: str = "train",
                 enabled: bool | None = None, stream=None):
        self.total, self.every, self.desc = total, max(1, every), desc
        self.stream = stream or sys.stderr
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._bar = None
        self._last_step, self._t0, self._start = start, time.perf_counter(), start
        if self.enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, desc=desc, file=self.stream,
                             dynamic_ncols=True, unit="step")

    def update(self, step: int, postfix: Mapping[str, float] | None = None) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._last_step)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        elif step % self.every == 0 or step == self.total:
            elapsed = time.perf_counter() - self._t0
            rate = (step - self._start) / elapsed if elapsed > 0 else float("nan")
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            extra = "".join(f" {k}={v:.4g}" for k, v in (postfix or {}).items())
            print(f"{self.desc} step {step}/{self.total} {rate:.2f} steps/s eta {eta:.0f}s{extra}",
                  file=self.stream, flush=True)
        self._last_step = step

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
