"""Files of the mining job and their reader, ``load_mined``.

``out_dir`` (``RUN_DIR/mining``) holds ``i2t.npy [N, h_t]``, ``t2i.npy [M, h_i]`` (int32),
``i2t_scores.npy``, ``t2i_scores.npy`` (float32) and ``manifest.json``, written last: its
presence means the job finished. The manifest names the split the lists index into by
``split_fingerprint`` (its captions, image ids and caption->image map), so lists of another
dataset are refused even where the sizes agree. Every write goes to a temporary file in the same
directory and is renamed into place, so a reader (or a resumed job) sees the old file or the
whole new one, never a partial one. ``work/`` holds the job's per-step records until it finishes
(``itm_jax.aoq.job``).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from itm_jax.data.source import CaptionedSource, image_ids
from itm_jax.errors import ConfigError, DataError
from itm_jax.files import atomic_write

FORMAT = "itm_jax.aoq.mining/2"
MANIFEST = "manifest.json"
FILES = {"i2t": "i2t.npy", "t2i": "t2i.npy", "i2t_scores": "i2t_scores.npy",
         "t2i_scores": "t2i_scores.npy"}

RERUN = "re-mine with itm-mine on this dataset (itm-mine --config=... --workdir=RUN_DIR)"


def split_fingerprint(source: CaptionedSource) -> str:
    """sha256 of what mined lists index into: the split's caption texts ``[M]``, its
    caption->image map ``[M]`` and its image ids ``[N]``, in order.

    Costs one ``caption(j)`` per caption (0.03 s for the 20,000 captions of the default
    synthetic training split; in-memory sources only read a list).
    """
    texts = [source.caption(j)["caption"].encode("utf-8") for j in range(source.num_captions)]
    h = hashlib.sha256(b"itm_jax.aoq.split/1")
    for name, a in (("cap_to_img", source.cap_to_img), ("image_ids", image_ids(source)),
                    ("caption_bytes", [len(t) for t in texts])):
        a = np.ascontiguousarray(np.asarray(a, np.int64), "<i8")
        h.update(f"{name}:{a.size}:".encode())
        h.update(a.tobytes())
    h.update(b"".join(texts))
    return h.hexdigest()


def save_npz(path: pathlib.Path, meta: Mapping[str, Any], **arrays) -> None:
    atomic_write(path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **arrays))


def load_npz(path: pathlib.Path, fingerprint: str):
    """``(meta, arrays)`` of a work file of this job, or None (missing, partial, another job)."""
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return (meta, arrays) if meta.get("fingerprint") == fingerprint else None


def sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def finished(out_dir: pathlib.Path, job: str) -> dict | None:
    """The manifest of an earlier run of the job ``job`` (its fingerprint) whose files are
    intact, else None."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
        intact = all(sha256_file(out_dir / f["name"]) == f["sha256"]
                     for f in manifest["files"].values())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if intact and manifest.get("job") == job else None


def write_lists(out_dir: pathlib.Path, arrays: Mapping[str, np.ndarray],
                manifest: Mapping[str, Any]) -> dict:
    """Writes ``arrays`` (the keys of ``FILES``), then the manifest with their shapes and
    sha256; returns the manifest."""
    files = {}
    for key, a in arrays.items():
        path = out_dir / FILES[key]
        atomic_write(path, lambda f, a=a: np.save(f, a, allow_pickle=False))
        files[key] = {"name": FILES[key], "shape": list(a.shape), "dtype": str(a.dtype),
                      "sha256": sha256_file(path)}
    manifest = {**manifest, "format": FORMAT, "files": files}
    atomic_write(out_dir / MANIFEST,
                 lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))
    return manifest


def load_mined(directory, source: CaptionedSource, *, h_t: int | None = None,
               h_i: int | None = None):
    """The lists of ``itm_jax.aoq.job.mine`` for the training split ``source``: ``(i2t [N, h_t],
    t2i [M, h_i], manifest)``, the first ``h_t`` / ``h_i`` columns (default: all that were
    mined).

    ``DataError`` (naming the problem and the fix) when the manifest is missing or corrupted,
    the lists were mined on another dataset (sizes, captions, caption->image map or image ids
    differ: ``split_fingerprint``), or a list file is missing or altered; ``ConfigError`` when
    fewer than ``h_t`` / ``h_i`` entries were mined.
    """
    directory = pathlib.Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        hint = (f" (did you mean {directory / 'mining'}?)"
                if (directory / "mining" / MANIFEST).exists() else "")
        raise DataError(f"No mined lists in {directory}{hint}: {MANIFEST} is missing (the "
                        f"mining job did not finish); {RERUN}.")
    try:
        manifest = json.loads(path.read_text())
        if manifest["format"] != FORMAT:
            raise ValueError(f"format {manifest['format']!r}, expected {FORMAT!r}")
        dataset, files = manifest["dataset"], manifest["files"]
        mined_n, mined_m = int(dataset["num_images"]), int(dataset["num_captions"])
        mined_t, mined_i = int(manifest["h_t"]), int(manifest["h_i"])
        mined_split = dataset["split_sha256"]
        expected = {k: (files[k]["name"], files[k]["sha256"]) for k in ("i2t", "t2i")}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is corrupted or unreadable ({e}); {RERUN}.") from None
    n, m = source.num_images, source.num_captions
    if (mined_n, mined_m) != (n, m):
        raise DataError(f"{directory} was mined on {mined_n} images / {mined_m} captions, but "
                        f"this training split has {n} / {m}: another dataset; {RERUN}.")
    if mined_split != split_fingerprint(source):
        raise DataError(f"{directory} was mined on another dataset than this training split "
                        f"(their captions, image ids or caption->image map differ); {RERUN}.")
    h_t, h_i = mined_t if h_t is None else h_t, mined_i if h_i is None else h_i
    for name, want, have in (("h_t", h_t, mined_t), ("h_i", h_i, mined_i)):
        if not 0 < want <= have:
            raise ConfigError(f"{name}={want} must be in [1, {have}] ({directory} holds {have} "
                              f"entries per list); lower {name} or re-run itm-mine with "
                              f"--{name}={want}.")
    lists = {}
    for key, shape in (("i2t", (n, mined_t)), ("t2i", (m, mined_i))):
        name, sha256 = expected[key]
        file = directory / name
        if not file.exists():
            raise DataError(f"{file} is missing; {RERUN}.")
        try:
            a = np.load(file, allow_pickle=False) if sha256_file(file) == sha256 else None
        except (OSError, ValueError) as e:
            raise DataError(f"{file} is unreadable ({e}); {RERUN}.") from None
        if a is None or a.shape != shape or a.dtype != np.int32:
            raise DataError(f"{file} is truncated or altered (its sha256 or shape does not "
                            f"match {path}); {RERUN}.")
        lists[key] = a
    return (np.ascontiguousarray(lists["i2t"][:, :h_t]),
            np.ascontiguousarray(lists["t2i"][:, :h_i]), manifest)
