"""Precomputed features of the synthetic dataset, in the VSE++/SCAN "precomp" layout.

The demo trains on features rather than pixels so that eight models fit in minutes on a CPU.
The features come from the rendered pixels through a fixed random network (no learning, no
access to the symbolic scene), so a model still has to learn colours, shapes, sizes and
positions from image evidence, and the background tint and jitter stay nuisances.

Extractor ``randconv2`` (version 1), for uint8 ``[N, S, S, 3]`` images:

1. scale to [0, 1] and subtract the background colour, estimated per image and channel as the
   median of the four 2x2 corner means (the generator never draws into a corner, so the
   background reads as zero whatever its tint);
2. 5x5 convolution, 3 -> 32 channels, ReLU, 2x2 max pool: ``[N, S/2, S/2, 32]``;
3. 3x3 convolution, 32 -> 64 channels, ReLU: ``[N, S/2, S/2, 64]``;
4. mean over each cell of a 4x4 grid: ``[N, 4, 4, 64]``, flattened row-major to ``[N, 1024]``.

Filters are i.i.d. normal from a fixed seed, each scaled to unit L2 norm; no biases.

Files (``write_precomp``), splits renamed as the layout expects (``val`` -> ``dev``)::

    {train,dev,test}_ims.npy    float32 [N, 1024], row i = image i of the split
    {train,dev,test}_caps.txt   UTF-8, 5 lines per image, captions 5i .. 5i+4 describe image i
    synthetic_meta.json         configuration, versions, image ids and twin pairs per split

``itm_jax.data.precomp.PrecompSource`` reads them, taking image ids from the metadata.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import secrets
import tempfile
from collections.abc import Callable, Mapping
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np
import PIL

from itm_jax.data.synthetic import (
    CAPTIONS_PER_IMAGE,
    GENERATOR_VERSION,
    SPLITS,
    SyntheticSource,
    synthetic_splits,
)
from itm_jax.errors import DataError

EXTRACTOR_NAME = "randconv2"
EXTRACTOR_VERSION = 1
FEATURE_DIM = 1024
META_FILENAME = "synthetic_meta.json"
# Dataset split -> the layout's file prefix.
PRECOMP_SPLITS = {"train": "train", "val": "dev", "test": "test"}

_FILTER_SEED = 20240601
_CHANNELS = (32, 64)
_GRID = 4


@functools.cache
def _filters() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_FILTER_SEED)
    w1 = rng.standard_normal((5, 5, 3, _CHANNELS[0]))  # HWIO
    w2 = rng.standard_normal((3, 3, _CHANNELS[0], _CHANNELS[1]))
    # Unit-norm filters keep both layers' responses on the scale of the input contrast.
    return tuple(
        (w / np.sqrt((w**2).sum(axis=(0, 1, 2), keepdims=True))).astype(np.float32)
        for w in (w1, w2)
    )


@jax.jit
def _randconv2(images, w1, w2):
    """uint8 ``[B, S, S, 3]`` -> float32 ``[B, 1024]`` (see the module docstring)."""
    x = images.astype(jnp.float32) / 255.0
    corners = jnp.stack(
        [x[:, :2, :2], x[:, :2, -2:], x[:, -2:, :2], x[:, -2:, -2:]], axis=1
    ).mean(axis=(2, 3))  # [B, 4, 3]
    x = x - jnp.median(corners, axis=1)[:, None, None, :]
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.lax.conv_general_dilated(x, w1, (1, 1), "SAME", dimension_numbers=dn)
    h = jax.lax.reduce_window(
        jax.nn.relu(h), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
    )  # [B, S/2, S/2, 32]
    h = jax.nn.relu(jax.lax.conv_general_dilated(h, w2, (1, 1), "SAME", dimension_numbers=dn))
    b, s, _, c = h.shape
    h = h.reshape(b, _GRID, s // _GRID, _GRID, s // _GRID, c).mean(axis=(2, 4))
    return h.reshape(b, _GRID * _GRID * c)


def _check_images(images: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(
            f"extract_features expects square RGB images [N, S, S, 3]; got shape {images.shape}."
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"extract_features expects uint8 pixels (as rendered); got {images.dtype}. Convert "
            "with np.clip(x, 0, 255).astype(np.uint8) if they are 0-255 values."
        )
    if images.shape[1] % (2 * _GRID):
        raise ValueError(
            f"image side {images.shape[1]} must be a multiple of {2 * _GRID} (one 2x pool, then "
            f"a {_GRID}x{_GRID} grid)."
        )


def _batched(count: int, batch_size: int, images_of: Callable[[int, int], np.ndarray]):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    batch_size = min(batch_size, max(count, 1))
    w1, w2 = _filters()
    pending = []
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        batch = images_of(start, stop)
        _check_images(batch)
        # Pad the last batch: one compiled shape, and a row's features never depend on how
        # many rows shared its batch.
        pad = batch_size - (stop - start)
        if pad:
            batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), np.uint8)])
        # Dispatch is asynchronous: rendering the next batch overlaps these convolutions.
        pending.append((start, stop, _randconv2(batch, w1, w2)))
    out = np.empty((count, FEATURE_DIM), dtype=np.float32)
    for start, stop, feats in pending:
        out[start:stop] = np.asarray(feats)[: stop - start]
    return out


def extract_features(images: np.ndarray, *, batch_size: int = 250) -> np.ndarray:
    """Features of uint8 ``[N, S, S, 3]`` images (``S`` a multiple of 8): float32 ``[N, 1024]``."""
    images = np.asarray(images)
    _check_images(images)
    return _batched(len(images), batch_size, lambda a, b: images[a:b])


def source_features(source: SyntheticSource, *, batch_size: int = 250) -> np.ndarray:
    """float32 ``[num_images, 1024]``, rendering ``batch_size`` images at a time."""
    return _batched(source.num_images, batch_size, lambda a, b: source.images(range(a, b)))


def _stage(directory: pathlib.Path, name: str, write: Callable[[IO[bytes]], Any]) -> pathlib.Path:
    """Writes a hidden temporary file next to ``name`` and returns its path."""
    # Not mkstemp: its files are private (0600); open(..., "xb") honours the umask like any
    # other written file, and still refuses to clobber.
    tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _check_writable(directory: pathlib.Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise DataError(
            f"Cannot write precomputed features to {directory}: {e.strerror or e}. Pass a "
            "directory that can be created and written to (data.data_dir, or $ITM_JAX_CACHE "
            "for the default cache)."
        ) from e


def write_precomp(
    directory: str | os.PathLike,
    splits: Mapping[str, SyntheticSource] | None = None,
    *,
    batch_size: int = 250,
) -> dict[str, Any]:
    """Writes ``splits`` to ``directory`` in the precomp layout (see the module docstring).

    All features are computed before any file is touched; each file is written to a hidden
    temporary file and renamed into place; the metadata file is removed first and renamed in
    last, so when ``synthetic_meta.json`` exists it describes the files beside it. On an error
    no temporary file is left behind.

    Args:
      directory: output folder, created if missing.
      splits: some or all of ``{"train", "val", "test"}`` from one ``synthetic_splits`` call;
        default ``synthetic_splits()`` (the default configuration).
      batch_size: images rendered and featurised at a time.

    Returns:
      The metadata written to ``synthetic_meta.json``.
    """
    splits = synthetic_splits() if splits is None else dict(splits)
    unknown = sorted(set(splits) - set(SPLITS))
    if not splits or unknown:
        raise ValueError(
            f"splits must map some of {SPLITS} to SyntheticSource; got keys {sorted(splits)}."
        )
    if not all(isinstance(s, SyntheticSource) for s in splits.values()):
        raise TypeError("write_precomp writes SyntheticSource splits (from synthetic_splits).")
    configs = {s.config for s in splits.values()}
    if len(configs) != 1:
        raise ValueError(
            "All splits must come from one synthetic_splits call (one configuration); got "
            f"{len(configs)} different configurations."
        )
    directory = pathlib.Path(directory)
    _check_writable(directory)
    features = {name: source_features(src, batch_size=batch_size) for name, src in splits.items()}

    meta = {
        "generator": "itm_jax.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "config": next(iter(configs)).to_dict(),
        "feature_extractor": {
            "name": EXTRACTOR_NAME,
            "version": EXTRACTOR_VERSION,
            "dim": FEATURE_DIM,
            "filter_seed": _FILTER_SEED,
        },
        "versions": {"numpy": np.__version__, "pillow": PIL.__version__, "jax": jax.__version__},
        "caps_per_image": CAPTIONS_PER_IMAGE,
        "caption_id": f"{CAPTIONS_PER_IMAGE} * image_id + k for caption k of an image",
        "label": "the image's index in its split",
        "splits": {PRECOMP_SPLITS[name]: name for name in splits},
        "image_ids": {PRECOMP_SPLITS[n]: s.image_ids.tolist() for n, s in splits.items()},
        "twins": {PRECOMP_SPLITS[n]: [list(t) for t in s.twins] for n, s in splits.items()},
    }

    staged: list[tuple[pathlib.Path, pathlib.Path]] = []
    try:
        for name, src in splits.items():
            prefix = PRECOMP_SPLITS[name]
            feats = features[name]
            text = ("\n".join(src.captions) + "\n").encode("utf-8")
            staged.append(
                (_stage(directory, f"{prefix}_ims.npy", lambda f: np.save(f, feats)),
                 directory / f"{prefix}_ims.npy")
            )
            staged.append(
                (_stage(directory, f"{prefix}_caps.txt", lambda f: f.write(text)),
                 directory / f"{prefix}_caps.txt")
            )
        meta_bytes = json.dumps(meta).encode("utf-8")
        staged.append(
            (_stage(directory, META_FILENAME, lambda f: f.write(meta_bytes)),
             directory / META_FILENAME)
        )
        # A reader must never pair new data files with an old description of them.
        (directory / META_FILENAME).unlink(missing_ok=True)
        for tmp, final in staged:
            os.replace(tmp, final)
    except OSError as e:
        raise DataError(
            f"Writing precomputed features to {directory} failed: {e}. No temporary files were "
            f"left; {META_FILENAME} is written only after every data file is in place. Check "
            "the free space and permissions and run again."
        ) from e
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return meta
