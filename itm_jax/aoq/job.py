"""The resumable mining job: ``mine`` writes the lists of ``itm_jax.aoq.kernel`` to files.

Every process of a multi-process job runs ``mine`` with the same arguments; process ``p`` mines
its contiguous range of steps (a step is one block of ``block_size`` image rows on each local
device, each device walking its own contiguous range of images: ``kernel.Miner``) and saves each
step as it finishes; process 0 then replays every process's records into the final files
(``itm_jax.aoq.store``).

Work files (``out_dir/work/step{c:06d}.npz``, one per step ``c``, written atomically): the
step's i2t rows ``[rows, h_t]`` (values and captions, devices in order) and the *change* the
step made to each device's running t2i lists, taken together as one list per (device, caption)
``[L = devices * M, h_i]``: per list the number of entries the step put in (``count [L]``),
their positions in the new list (``pos [E]``), scores and images (``values, index [E]``), and the
lists whose bound rose with the new bounds (``bound_at, bound [F]``). The entries of the old list
that stay are its first ``h_i - count`` ones, in order (the merge is a stable top-k of ``[old |
new]``), so the records replayed in order rebuild the lists bit for bit. A device's list gains
about ``h_i * block / images the device has seen`` entries per step, so all records together
hold the final i2t lists once and each device's t2i lists about ``1 + ln(steps)`` times: the
total written stays within a small multiple of the final files (``devices * (1 + ln(steps))``
t2i lists; measured in the README) instead of growing with the number of steps, as rewriting
the lists after every step would.

A job killed at any point (a SIGKILL mid-write included) loses at most the step it was working
on: run again with the same inputs, devices and processes, it replays its records and mines the
remaining steps, writing byte-identical lists; with other inputs or another plan its fingerprint
differs and it starts over. A finished job is not re-run.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from itm_jax.aoq import store
from itm_jax.aoq.kernel import Miner, empty_state, prepare
from itm_jax.data.source import CaptionedSource, image_ids


def mine(img_emb, cap_emb, source: CaptionedSource, out_dir, *, h_t: int = 300, h_i: int = 60,
         backend: str = "jax", block_size: int = 512, devices=None, scorer=None,
         metadata: Mapping[str, Any] | None = None, keep_work: bool = False,
         progress: bool = True) -> dict:
    """Mines the lists of ``kernel.mine_arrays`` for the split ``source`` into ``out_dir``,
    resumably; returns the manifest.

    ``img_emb [N, D]`` / ``cap_emb [M, D]`` embed ``source``'s images and captions (index
    order; a set model's sets with its ``scorer``); its caption->image map and image ids decide
    the positives, and its ``store.split_fingerprint`` goes into the manifest. ``metadata`` (the teacher checkpoint,
    config hash, dataset name) is stored in the manifest, its ``"dataset"`` entries next to the
    sizes and the split fingerprint. ``keep_work`` keeps the work files. Other arguments: as
    ``kernel.mine_arrays``.
    """
    out_dir = pathlib.Path(out_dir)
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    split = store.split_fingerprint(source)
    x = prepare(img_emb, cap_emb, source.cap_to_img, image_ids(source), h_t, h_i, scorer)
    miner = Miner(x, h_t=h_t, h_i=h_i, backend=backend, block_size=block_size, devices=devices)
    process, processes = jax.process_index(), jax.process_count()
    job = _fingerprint(miner, processes, split)
    manifest = store.finished(out_dir, job)
    if manifest is not None:
        return manifest
    share = miner.share(process, processes)
    done, state, _ = _replay(work, job, miner, share)
    miner.engine.set_state(*state)
    bound = state[2]

    def save(c, values, index, new):
        nonlocal bound
        lists = miner.engine.get_state()
        store.save_npz(_step_path(work, c), {"fingerprint": job, "step": c},
                       i2t_values=values, i2t_index=index, **_change(lists, new, bound))
        bound = lists[2]

    miner.run(share, skip=done, done=save, progress=progress)
    _barrier("itm_jax.aoq.steps")
    if process == 0:
        _finalize(out_dir, work, miner, job, processes, split, dict(metadata or {}))
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    _barrier("itm_jax.aoq.final")
    return json.loads((out_dir / store.MANIFEST).read_text())


# The layout of the work files (one list per device and caption); records of another are stale.
_RECORDS = "per-device lists/1"


def _fingerprint(miner: Miner, processes: int, split: str) -> str:
    """sha256 of everything the files depend on: a work directory of another job is stale."""
    h = hashlib.sha256(json.dumps(dict(
        format=store.FORMAT, records=_RECORDS, backend=miner.backend, h_t=miner.h_t, h_i=miner.h_i,
        processes=processes, plan=dataclasses.asdict(miner.plan), split=split)).encode())
    h.update(repr(miner.x.scorer).encode())
    for a in jax.tree.leaves((miner.x.img, miner.x.cap)):
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _step_path(work: pathlib.Path, c: int) -> pathlib.Path:
    return work / f"step{c:06d}.npz"


def _flat(a: np.ndarray) -> np.ndarray:
    """Lists ``[devices, M, ...]`` as one list per (device, caption): ``[devices * M, ...]``."""
    return a.reshape((-1,) + a.shape[2:])


def _change(lists, new, bound_before) -> dict[str, np.ndarray]:
    """A step's change to the t2i lists: ``lists = (values, index [devices, M, h_i], bound
    [devices, M])`` after it, ``new [devices, M, h_i]`` its entries, ``bound_before [devices, M]``
    (see the module docstring)."""
    values, index, bound = map(_flat, lists)
    new, bound_before = _flat(np.asarray(new)), _flat(bound_before)
    small = np.min_scalar_type(new.shape[1])
    rose = np.flatnonzero(bound != bound_before).astype(np.int32)
    return {"count": new.sum(axis=1).astype(small), "pos": np.nonzero(new)[1].astype(small),
            "values": values[new], "index": index[new], "bound_at": rose, "bound": bound[rose]}


def _apply(lists, change: Mapping[str, np.ndarray]) -> None:
    """Redoes a step's ``change`` (``_change``) on the t2i ``lists`` before it, in place."""
    values, index, bound = map(_flat, lists)
    h = values.shape[1]
    count = change["count"].astype(np.intp)
    rows = np.flatnonzero(count)
    new = np.zeros((len(rows), h), bool)
    new[np.repeat(np.arange(len(rows)), count[rows]), change["pos"]] = True
    kept = np.arange(h) < (h - count[rows])[:, None]  # the old list's first h - count entries
    for a, key in ((values, "values"), (index, "index")):
        row = np.empty((len(rows), h), a.dtype)
        row[new] = change[key]
        row[~new] = a[rows][kept]
        a[rows] = row
    bound[change["bound_at"]] = change["bound"]


def _replay(work: pathlib.Path, job: str, miner: Miner, share: range):
    """A process's saved steps of ``share``, in order up to the first missing or partial one:
    ``(done, each device's (values, index, bound) after them, [(i2t values, index)] per
    step)``."""
    lists, parts = empty_state(miner.plan.devices, len(miner.x.cap_code), miner.h_i), []
    for c in share:
        saved = store.load_npz(_step_path(work, c), job)
        if saved is None or saved[0].get("step") != c:
            break
        change = saved[1]
        parts.append((change.pop("i2t_values"), change.pop("i2t_index")))
        _apply(lists, change)
    return len(parts), lists, parts


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _finalize(out_dir: pathlib.Path, work: pathlib.Path, miner: Miner, job: str, processes: int,
              split: str, metadata: dict) -> None:
    """Process 0: every process's records into the final files, manifest last."""
    parts, t2i = [], []
    for p in range(processes):
        share = miner.share(p, processes)
        done, lists, i2t = _replay(work, job, miner, share)
        if done != len(share):
            raise RuntimeError(f"{_step_path(work, share[done])} is missing or from another "
                               f"job: process {p} did not finish its steps; run the job again "
                               "to resume.")
        parts += i2t
        t2i.append(lists)
    mined = miner.finish(parts, [np.concatenate(a) for a in zip(*t2i)], processes)
    x = miner.x
    store.write_lists(out_dir, {"i2t": mined.i2t, "t2i": mined.t2i,
                                "i2t_scores": mined.i2t_scores, "t2i_scores": mined.t2i_scores}, {
        **metadata,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "job": job,
        "backend": miner.backend,
        "h_t": miner.h_t,
        "h_i": miner.h_i,
        "dataset": {**metadata.get("dataset", {}), "num_images": len(x.img_code),
                    "num_captions": len(x.cap_code), "embedding_dim": int(x.img.shape[-1]),
                    "split_sha256": split},
        "scorer": repr(x.scorer),
        "plan": {"block_size": miner.plan.block, "devices": miner.plan.devices,
                 "processes": processes, "steps": miner.steps},
    })
