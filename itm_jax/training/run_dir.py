"""The run directory's record of what it is: its config, the history of accepted config changes,
and whether it has finished.

``config.json``: the config the run trains under, written before any work. A restart under a
different config is refused (``itm_jax.config_checks.config_drift`` lists the fields) unless only
fields that cannot change the numbers differ (``SAFE_FIELDS``: paths, evaluation and logging
cadence, ...) or the user passes ``accept_config_change``; then the old config and the change
are appended to ``config_history.jsonl`` before ``config.json`` is replaced, so it is never
silently overwritten. ``test_metrics.json``, written last, marks a finished run.
"""

from __future__ import annotations

import datetime
import json
import pathlib
from typing import Any

import ml_collections

from itm_jax import config_checks
from itm_jax.errors import ConfigError, RunError
from itm_jax.files import atomic_write_text

CONFIG = "config.json"
HISTORY = "config_history.jsonl"
TEST_METRICS = "test_metrics.json"


def config_json(config) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def check_workdir(workdir: pathlib.Path) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir={workdir} is a file, not a directory: pass a directory "
                          "(it is created if missing).")


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config of the itm-train run in ``workdir`` (its ``config.json``)."""
    workdir = pathlib.Path(workdir)
    path = workdir / CONFIG
    if not path.exists():
        runs = sorted(p.parent.name for p in workdir.glob(f"*/{CONFIG}"))
        hint = (f" {workdir} holds the runs {', '.join(runs)}: pass one of them." if runs else "")
        raise RunError(f"{path} not found: pass the --workdir of an itm-train run.{hint}")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except ValueError as e:
        raise RunError(f"{path} is not valid JSON ({e}): restore it from config_history.jsonl "
                       "or the command that started the run.") from None


def record_config(workdir: pathlib.Path, config, *, accept_change: bool = False) -> None:
    """Writes ``config.json`` for a new run; for an existing one, refuses a config that differs
    in an unsafe field (``ConfigError``) unless ``accept_change``, and records any accepted
    difference in ``config_history.jsonl`` before replacing ``config.json``."""
    new = config_json(config)
    path = workdir / CONFIG
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(new, indent=2) + "\n")
        return
    saved = json.loads(path.read_text())
    if saved == new:
        return
    drift = config_checks.config_drift(saved, new)
    if drift and not accept_change:
        raise ConfigError(config_checks.drift_message(workdir, drift))
    changed = config_checks.config_drift(saved, new, safe=())
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "accepted": bool(drift), "previous": saved,
             "changes": [{"field": f, "old": a, "new": b} for f, a, b in changed]}
    with open(workdir / HISTORY, "a") as f:
        f.write(json.dumps(entry) + "\n")
    atomic_write_text(path, json.dumps(new, indent=2) + "\n")
    fields = ", ".join(f"{f}: {a!r} -> {b!r}" for f, a, b in changed)
    print(f"config: {'accepted' if drift else 'safe'} change recorded in {workdir / HISTORY} "
          f"({fields})")


def save_eval(workdir: str | pathlib.Path, split: str, metrics: dict[str, float]) -> pathlib.Path:
    """``workdir/eval/<split>_metrics.json``: an evaluation after training (``itm-eval``), kept
    apart from the run's own ``test_metrics.json``."""
    path = pathlib.Path(workdir) / "eval" / f"{split}_metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return path


def finished(workdir: pathlib.Path, config) -> dict[str, float] | None:
    """The test metrics of a finished run of ``config`` in ``workdir``; None when it has not
    finished or ran under a config that differs in an unsafe field (``record_config`` decides)."""
    path = workdir / TEST_METRICS
    if not path.exists() or not (workdir / CONFIG).exists():
        return None
    saved = json.loads((workdir / CONFIG).read_text())
    if config_checks.config_drift(saved, config_json(config)):
        return None
    return json.loads(path.read_text())
