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

Region form (``regions = K > 0``), the ``[N, R, F]`` bottom-up-attention layout of SCAN,
BFAN and VSRN: ``K`` feature vectors per image, each from the same network, stacked as float32
``[N, K, 1024]``:

- region 0 is the whole scene, the global feature above;
- one region per object of the scene, in an order drawn per image (``region_objects``): a
  detector's order means nothing, while the scene's own order would tell which object is left
  of or above the other. Its input, in place of step 1, is a ``W x W`` window centred on the
  object (``W`` = the smallest multiple of 8 that holds a grid cell, 24 for ``S = 64``;
  bilinear interpolation centres it to a sub-pixel) of the object's own pixels: those inside
  its box (centre +- half extent + 1 pixel) clipped to its cell of the 3x3 layout grid that
  differ from the background (some channel by more than 20/255), in their drawn colour
  scaled to [0, 1]; every other pixel is zero. An object never leaves its cell, so the region
  shows that object alone, at a fixed scale (its size stays visible), wherever it is in the
  image and whatever the background's tint (its colour and shape read the same);
- the remaining regions repeat the whole scene. The region scores of SCAN, BFAN and VSRN
  treat every region as real, so padding repeats an informative region rather than adding
  zeros; the scene's context is what bottom-up features of a large box carry too.

A scene has 2 or 3 objects, so ``K >= 4`` (``MIN_REGIONS``) holds every scene; larger ``K``
only adds copies of the whole scene.

Files (``write_precomp``), splits renamed as the layout expects (``val`` -> ``dev``)::

    {train,dev,test}_ims.npy    float32 [N, 1024] (or [N, K, 1024]), row i = image i of the split
    {train,dev,test}_caps.txt   UTF-8, 5 lines per image, captions 5i .. 5i+4 describe image i
    synthetic_meta.json         configuration, versions, image ids and twin pairs per split

``itm_jax.data.precomp.PrecompSource`` reads them, taking image ids from the metadata.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import secrets
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np
import PIL

from itm_jax.data.synthetic import (
    CAPTIONS_PER_IMAGE,
    GENERATOR_VERSION,
    SPLITS,
    Layout,
    SyntheticSource,
    synthetic_splits,
)
from itm_jax.errors import ConfigError, DataError

EXTRACTOR_NAME = "randconv2"
EXTRACTOR_VERSION = 1
FEATURE_DIM = 1024
META_FILENAME = "synthetic_meta.json"
# Dataset split -> the layout's file prefix.
PRECOMP_SPLITS = {"train": "train", "val": "dev", "test": "test"}

_FILTER_SEED = 20240601
_CHANNELS = (32, 64)
_GRID = 4

_MAX_OBJECTS = 3  # a synthetic scene has 2 or 3 objects
# The region form's smallest size: the whole scene and every object.
MIN_REGIONS = 1 + _MAX_OBJECTS
_ORDER_SEED = 20240602
# Pixels around an object's half extent in its box: the box filter's soft edge.
_BOX_MARGIN = 1.0
# A pixel is an object's where a channel differs from the background by more than this: every
# drawn colour differs from every background tint by over 40/255 in some channel, and the
# pixel noise has a standard deviation of 3/255.
_FOREGROUND = 20 / 255


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


def _minus_background(images):
    """uint8 ``[B, S, S, 3]`` -> float32 ``[B, S, S, 3]``, the background at zero (step 1)."""
    x = images.astype(jnp.float32) / 255.0
    corners = jnp.stack(
        [x[:, :2, :2], x[:, :2, -2:], x[:, -2:, :2], x[:, -2:, -2:]], axis=1
    ).mean(axis=(2, 3))  # [B, 4, 3]
    return x - jnp.median(corners, axis=1)[:, None, None, :]


def _conv_grid(x, w1, w2):
    """float32 ``[B, H, H, 3]`` -> float32 ``[B, 1024]`` (steps 2-4; ``H`` a multiple of 8)."""
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.lax.conv_general_dilated(x, w1, (1, 1), "SAME", dimension_numbers=dn)
    h = jax.lax.reduce_window(
        jax.nn.relu(h), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
    )  # [B, H/2, H/2, 32]
    h = jax.nn.relu(jax.lax.conv_general_dilated(h, w2, (1, 1), "SAME", dimension_numbers=dn))
    b, s, _, c = h.shape
    h = h.reshape(b, _GRID, s // _GRID, _GRID, s // _GRID, c).mean(axis=(2, 4))
    return h.reshape(b, _GRID * _GRID * c)


@jax.jit
def _randconv2(images, w1, w2):
    """uint8 ``[B, S, S, 3]`` -> float32 ``[B, 1024]`` (see the module docstring)."""
    return _conv_grid(_minus_background(images), w1, w2)


@jax.jit
def _randconv2_regions(images, centres, boxes, take, w1, w2):
    """Region features (see the module docstring), ``B`` images with ``M`` object slots.

    Args:
      images: uint8 ``[B, S, S, 3]``.
      centres: float32 ``[B, M, 2]``, (x, y) pixel coordinates of each object, in ``[0, S]``.
      boxes: float32 ``[B, M, 2, 2]``, (low, high) x (x, y) pixel coordinates of the area each
        object's window keeps.
      take: int32 ``[B, K]``, what each region shows: 0 the whole scene, ``1 + m`` slot ``m``.

    Returns:
      float32 ``[B, K, 1024]``.
    """
    x = _minus_background(images)
    whole = _conv_grid(x, w1, w2)  # [B, F]
    b, m = centres.shape[:2]
    w = _window(images.shape[1])
    foreground = jnp.abs(x).max(axis=-1, keepdims=True) > _FOREGROUND
    # Drawn colours, not differences from the background: its tint stays out of the regions.
    drawn = jnp.where(foreground, images.astype(jnp.float32) / 255.0, 0.0)
    pad = w // 2 + 1
    padded = jnp.pad(drawn, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    # A window one pixel wider than W, interpolated below to centre the object to a sub-pixel.
    origins = jnp.floor(centres).astype(jnp.int32) - w // 2  # [B, M, 2]

    def crop(image, origin):
        start = (origin[1] + pad, origin[0] + pad, 0)
        return jax.lax.dynamic_slice(image, start, (w + 1, w + 1, 3))

    crops = jax.vmap(jax.vmap(crop, in_axes=(None, 0)))(padded, origins)  # [B, M, W+1, W+1, 3]
    pixels = (origins[..., None] + jnp.arange(w + 1)).astype(jnp.float32) + 0.5  # [B, M, 2, W+1]
    inside = (pixels >= boxes[:, :, 0, :, None]) & (pixels <= boxes[:, :, 1, :, None])
    crops = crops * (inside[:, :, 1, :, None] & inside[:, :, 0, None, :])[..., None]
    t = (centres - jnp.floor(centres))[..., None, None, None]  # [B, M, 2, 1, 1, 1]
    crops = (1 - t[:, :, 0]) * crops[:, :, :, :-1] + t[:, :, 0] * crops[:, :, :, 1:]
    crops = (1 - t[:, :, 1]) * crops[:, :, :-1] + t[:, :, 1] * crops[:, :, 1:]  # [B, M, W, W, 3]
    objects = _conv_grid(crops.reshape(b * m, w, w, 3), w1, w2)
    table = jnp.concatenate([whole[:, None], objects.reshape(b, m, -1)], axis=1)
    return jnp.take_along_axis(table, take[..., None], axis=1)


def _window(image_size: int) -> int:
    """Side of an object's window: the smallest multiple of 8 that holds a grid cell."""
    return 8 * math.ceil(image_size / 24)


def _check_regions(regions: int, *, allow_global: bool = True) -> int:
    """``regions`` as an int: ``K >= MIN_REGIONS``, or 0 (global features) if ``allow_global``."""
    if not isinstance(regions, (int, np.integer)) or not (
        regions >= MIN_REGIONS or (allow_global and regions == 0)
    ):
        valid = "0 (one global feature per image) or " if allow_global else ""
        raise ConfigError(
            f"regions must be {valid}at least {MIN_REGIONS} (the whole scene and each of up to "
            f"{_MAX_OBJECTS} objects), got {regions!r}: pass e.g. "
            f"--config.data.synthetic.regions={MIN_REGIONS}."
        )
    return int(regions)


def region_objects(layout: Layout, regions: int) -> np.ndarray:
    """What each region of an image drawn as ``layout`` shows (see the module docstring).

    Returns:
      int64 ``[regions]``: ``-1`` for the whole scene, ``k`` for object ``k`` of the scene
      (``Scene.objects[k]``, drawn at ``layout.centres[k]``). Region 0 is the whole scene,
      then each object once, in an order drawn from ``layout.noise_seed``, then the whole
      scene again.
    """
    n = len(layout.centres)
    if not 1 <= n <= _MAX_OBJECTS:
        raise ValueError(f"A layout has 1 to {_MAX_OBJECTS} objects, got {n}.")
    regions = _check_regions(regions, allow_global=False)
    order = np.random.default_rng([_ORDER_SEED, layout.noise_seed]).permutation(n)
    return np.concatenate([[-1], order, np.full(regions - 1 - n, -1)]).astype(np.int64)


def _region_inputs(layouts: Sequence[Layout], image_size: int, regions: int):
    """``centres``, ``boxes`` and ``take`` of ``_randconv2_regions`` for these layouts."""
    # Unused slots keep an empty box: their windows are zeros, and no region takes them.
    centres = np.zeros((len(layouts), _MAX_OBJECTS, 2), np.float32)
    boxes = np.zeros((len(layouts), _MAX_OBJECTS, 2, 2), np.float32)
    take = np.empty((len(layouts), regions), np.int32)
    cell = image_size / 3
    for i, layout in enumerate(layouts):
        take[i] = region_objects(layout, regions) + 1
        n = len(layout.centres)
        if not ((layout.centres >= 0) & (layout.centres <= image_size)).all():
            raise ValueError(
                f"Object centres must lie in the {image_size}-pixel image; layout {i} has "
                f"{np.asarray(layout.centres).tolist()}."
            )
        centres[i, :n] = layout.centres
        half = layout.half_extents[:, None] + _BOX_MARGIN
        boxes[i, :n, 0] = np.maximum(layout.centres - half, layout.cells * cell)
        boxes[i, :n, 1] = np.minimum(layout.centres + half, (layout.cells + 1) * cell)
    return centres, boxes, take


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


def _batched(count, batch_size, inputs_of, featurise, row_shape):
    """float32 ``[count, *row_shape]``: ``featurise(*inputs_of(start, stop), w1, w2)`` of
    ``batch_size`` rows at a time (``inputs_of``'s first array: the uint8 images)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    batch_size = min(batch_size, max(count, 1))
    w1, w2 = _filters()
    pending = []
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        inputs = inputs_of(start, stop)
        _check_images(inputs[0])
        # Pad the last batch: one compiled shape, and a row's features never depend on how
        # many rows shared its batch.
        pad = batch_size - (stop - start)
        if pad:
            inputs = [np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) for a in inputs]
        # Dispatch is asynchronous: rendering the next batch overlaps these convolutions.
        pending.append((start, stop, featurise(*inputs, w1, w2)))
    out = np.empty((count, *row_shape), dtype=np.float32)
    for start, stop, feats in pending:
        out[start:stop] = np.asarray(feats)[: stop - start]
    return out


def extract_features(images: np.ndarray, *, batch_size: int = 250) -> np.ndarray:
    """Features of uint8 ``[N, S, S, 3]`` images (``S`` a multiple of 8): float32 ``[N, 1024]``."""
    images = np.asarray(images)
    _check_images(images)
    return _batched(len(images), batch_size, lambda a, b: (images[a:b],), _randconv2,
                    (FEATURE_DIM,))


def extract_region_features(
    images: np.ndarray, layouts: Sequence[Layout], regions: int, *, batch_size: int = 250
) -> np.ndarray:
    """Region features of uint8 ``[N, S, S, 3]`` images drawn as ``layouts`` (one per image).

    Returns:
      float32 ``[N, regions, 1024]``; ``regions >= MIN_REGIONS``, the regions as
      ``region_objects`` says.
    """
    images = np.asarray(images)
    _check_images(images)
    if len(layouts) != len(images):
        raise ValueError(
            f"Pass one layout per image: {len(images)} images, {len(layouts)} layouts."
        )
    regions = _check_regions(regions, allow_global=False)
    return _batched(
        len(images), batch_size,
        lambda a, b: (images[a:b], *_region_inputs(layouts[a:b], images.shape[1], regions)),
        _randconv2_regions, (regions, FEATURE_DIM),
    )


def source_features(
    source: SyntheticSource, *, regions: int = 0, batch_size: int = 250
) -> np.ndarray:
    """float32 ``[num_images, 1024]`` (``regions=0``) or ``[num_images, regions, 1024]``,
    rendering ``batch_size`` images at a time."""
    regions = _check_regions(regions)
    if regions == 0:
        return _batched(source.num_images, batch_size,
                        lambda a, b: (source.images(range(a, b)),), _randconv2, (FEATURE_DIM,))

    def inputs_of(a, b):
        layouts = [source.layout(i) for i in range(a, b)]
        return (source.images(range(a, b)),
                *_region_inputs(layouts, source.image_size, regions))

    return _batched(source.num_images, batch_size, inputs_of, _randconv2_regions,
                    (regions, FEATURE_DIM))


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
    regions: int = 0,
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
      regions: 0 for one global feature per image, ``K >= MIN_REGIONS`` for ``K`` regions.
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
    regions = _check_regions(regions)
    directory = pathlib.Path(directory)
    _check_writable(directory)
    features = {
        name: source_features(src, regions=regions, batch_size=batch_size)
        for name, src in splits.items()
    }

    meta = {
        "generator": "itm_jax.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "config": next(iter(configs)).to_dict(),
        "feature_extractor": {
            "name": EXTRACTOR_NAME,
            "version": EXTRACTOR_VERSION,
            "dim": FEATURE_DIM,
            "filter_seed": _FILTER_SEED,
            "regions": regions,
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
