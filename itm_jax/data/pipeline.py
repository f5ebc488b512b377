"""Grain pipelines over a :class:`~itm_jax.data.source.CaptionedSource`: training and evaluation.

Batches are dicts of stacked NumPy arrays, the process-local rows of one *global* batch::

    train_loader:  image float32 [b, S, S, 3] | image_feat float32 [b, F] / [b, R, F],
                   tokens int32 [b, L], length int32 [b], image_id, caption_id, label,
                   image_index, caption_index (int64 [b])
    eval_batches:  kind="images":   image | image_feat, image_id, label, image_index, mask
                   kind="captions": tokens, length, caption_id, caption_index,
                                    image_index (the caption's image), mask (bool [b])

with ``b = batch_size // shard_count``. Process ``p`` gets rows ``[p*b, (p+1)*b)`` of every
global batch, so the stream of global batches is the same for any number of processes (a
1-host and a 4-host run with one seed train on identical global batches), and
``jax.make_array_from_process_local_data(sharding, batch[k])`` assembles the global array.

Example::

    tokenize = functools.partial(vocab.encode, max_len=32)
    ds = train_loader(train_src, global_batch_size=128, seed=0, tokenize=tokenize)
    it = iter(ds)              # a grain DatasetIterator: it.get_state() / it.set_state(...)
    batch = next(it)
    for batch in eval_batches(test_src, batch_size=256, kind="captions", tokenize=tokenize):
        ...                    # every caption once, index order; pad rows have mask False

Checkpointing: the iterator's ``get_state()`` is a small JSON-able dict (the next local batch
index); ``grain.checkpoint.CheckpointSave(it)`` / ``CheckpointRestore(it)`` store it with orbax,
and restoring continues the exact stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import grain
import jax
import numpy as np
from absl import flags

from itm_jax.data.preprocess import EvalTransform, TrainTransform
from itm_jax.data.source import CaptionedSource, PairSource

Tokenize = Callable[[str], tuple[np.ndarray, np.ndarray]]

# Elements of these pipelines are whole local batches, so Grain's defaults (16 threads, 500
# buffered elements, sized for 1-10 KiB records) would buffer hundreds of image batches.
DEFAULT_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


def _shard(shard_index: int | None, shard_count: int | None, batch_size: int) -> tuple[int, int, int]:
    """Resolves the process defaults and returns ``(shard_index, shard_count, local_batch)``."""
    # Resolved here rather than as default arguments so that importing this module does not
    # start JAX's backend before `jax.distributed.initialize`.
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}.")
    if batch_size <= 0 or batch_size % shard_count:
        raise ValueError(
            f"Batch size {batch_size} must be a positive multiple of shard_count={shard_count} "
            "(each process loads batch_size // shard_count rows of every global batch)."
        )
    return shard_index, shard_count, batch_size // shard_count


def _image_key(source: CaptionedSource) -> str:
    item = source.image(0)
    for key in ("image", "image_feat"):
        if key in item:
            return key
    raise ValueError(
        f"{source!r}.image(0) has keys {sorted(item)}; a CaptionedSource image item needs "
        "'image' (uint8 [H, W, 3]) or 'image_feat' (precomputed features)."
    )


def _image_transform(source: CaptionedSource, transform: Callable | None, default: Callable):
    """The transform to apply to ``item["image"]``; None for precomputed features."""
    if _image_key(source) == "image":
        return default if transform is None else transform
    if transform is not None:
        raise ValueError(
            f"{source!r} yields precomputed 'image_feat'; an image_transform only applies to "
            "raw images. Drop image_transform for feature sources."
        )
    return None


def tokenized(tokenize: Tokenize, caption: str) -> dict[str, np.ndarray]:
    """``{"tokens": int32 [L], "length": int32 []}`` of ``caption``, the fields of a caption in
    a batch."""
    tokens, length = tokenize(caption)
    return {"tokens": np.asarray(tokens, np.int32), "length": np.asarray(length, np.int32)}


def _image_fields(item: dict[str, Any], image: np.ndarray | None, index: int) -> dict[str, Any]:
    out = {
        "image_id": np.int64(item["image_id"]),
        "label": np.int64(item["label"]),
        "image_index": np.int64(index),
    }
    if image is not None:
        out["image"] = image
    else:
        out["image_feat"] = np.asarray(item["image_feat"])
    return out


class _TrainExample(grain.transforms.RandomMap):
    """PairSource item -> training example (tokenised caption, transformed image)."""

    def __init__(self, tokenize: Tokenize, transform: Callable | None):
        self.tokenize = tokenize
        self.transform = transform

    def random_map(self, item: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = None if self.transform is None else self.transform(item["image"], rng)
        return {
            **_image_fields(item, image, item["image_index"]),
            **tokenized(self.tokenize, item["caption"]),
            "caption_id": np.int64(item["caption_id"]),
            "caption_index": np.int64(item["caption_index"]),
        }


def _iter_dataset(
    ds: grain.MapDataset, worker_count: int, read_options: grain.ReadOptions | None
) -> grain.IterDataset:
    out = ds.to_iter_dataset(read_options or DEFAULT_READ_OPTIONS)
    if worker_count > 0:
        # Grain 0.2.18 (with a jaxlib that has subprocess-profiling hooks) reads an absl flag
        # when starting workers, which raises in programs that never parse absl flags (plain
        # scripts, pytest): google/grain#1355. Parsed flags (absl.app.run) are left alone.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return out


def train_loader(
    source: CaptionedSource,
    *,
    global_batch_size: int,
    seed: int,
    tokenize: Tokenize,
    image_transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    num_epochs: int | None = None,
    worker_count: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
    extras: Sequence[Any] = (),
) -> grain.IterDataset:
    """Shuffled (image, caption) training batches, one example per caption.

    Args:
      source: the training split.
      global_batch_size: rows per global batch, a multiple of ``shard_count``.
      seed: shuffle and augmentation seed (0 <= seed < 2**32); each epoch is shuffled anew.
      tokenize: ``caption -> (tokens int32 [L], length int32)``, e.g.
        ``functools.partial(vocab.encode, max_len=32)``; must be picklable for workers.
      image_transform: ``(uint8 [H, W, 3], rng) -> float32 [S, S, 3]``; default
        :class:`TrainTransform` (224). Must be None for precomputed-feature sources.
      num_epochs: passes over the captions; None repeats forever. Batches run across epoch
        boundaries; only the incomplete last global batch is dropped.
      worker_count: Grain worker processes (0: load in this process with threads). The source
        is pickled into each worker.
      shard_index, shard_count: this process's rows of each global batch; default
        ``jax.process_index()`` / ``jax.process_count()``.
      read_options: Grain thread prefetching per process; default :data:`DEFAULT_READ_OPTIONS`.
      extras: batch extras (e.g. AOQ round 2's offline negatives, ``itm_jax.aoq.extra``):
        each one's ``random_map(tokenize, transform)`` adds its fields to every example
        (``transform``: the image transform, None for precomputed features).

    Returns:
      A ``grain.IterDataset`` of local batches (see the module docstring for keys and shapes);
      its iterators support ``get_state``/``set_state``. Example ``j`` of the stream depends only
      on ``seed`` and ``j``, not on ``worker_count`` or the number of processes.
    """
    shard_index, shard_count, local = _shard(shard_index, shard_count, global_batch_size)
    transform = _image_transform(source, image_transform, TrainTransform())
    n = source.num_captions
    if num_epochs is not None and num_epochs * n < global_batch_size:
        raise ValueError(
            f"{num_epochs} epoch(s) of {n} captions do not fill one global batch of "
            f"{global_batch_size}; lower the batch size or raise num_epochs."
        )
    ds = grain.MapDataset.source(PairSource(source)).seed(seed).shuffle().repeat(num_epochs)
    ds = ds.random_map(_TrainExample(tokenize, transform))
    for extra in extras:
        ds = ds.random_map(extra.random_map(tokenize, transform))
    ds = ds.batch(local, drop_remainder=True)
    # Local batch g holds rows [g*local, (g+1)*local) of the global stream, so global batch t
    # is local batches t*shard_count ... t*shard_count + shard_count - 1; take ours.
    num_global = len(ds) // shard_count
    ds = ds[shard_index : num_global * shard_count : shard_count]
    return _iter_dataset(ds, worker_count, read_options)


class _EvalBatch:
    """Local batch index -> padded batch of images or captions with a ``mask``."""

    def __init__(self, source, kind, tokenize, transform, batch_size, local, shard_index):
        self.source = source
        self.kind = kind
        self.tokenize = tokenize
        self.transform = transform
        self.batch_size = batch_size
        self.local = local
        self.shard_index = shard_index
        self.size = source.num_images if kind == "images" else source.num_captions

    def row(self, index: int) -> dict[str, Any]:
        if self.kind == "images":
            item = self.source.image(index)
            image = None if self.transform is None else self.transform(item["image"])
            return _image_fields(item, image, index)
        item = self.source.caption(index)
        return {
            **tokenized(self.tokenize, item["caption"]),
            "caption_id": np.int64(item["caption_id"]),
            "caption_index": np.int64(index),
            "image_index": np.int64(self.source.cap_to_img[index]),
        }

    def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
        start = batch_index * self.batch_size + self.shard_index * self.local
        indices = range(start, min(start + self.local, self.size))
        rows = [self.row(i) for i in indices]
        # Pad rows are zeros shaped like a real row (row 0 when this shard's block is all pad).
        template = rows[0] if rows else self.row(0)
        rows += [{k: np.zeros_like(v) for k, v in template.items()}] * (self.local - len(rows))
        batch = {k: np.stack([r[k] for r in rows]) for k in template}
        batch["mask"] = np.arange(self.local) < len(indices)
        return batch


def eval_batches(
    source: CaptionedSource,
    *,
    batch_size: int,
    kind: Literal["images", "captions"] = "images",
    tokenize: Tokenize | None = None,
    image_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    worker_count: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
    """Every image (or caption) of ``source`` exactly once, in index order, padded batches.

    There are ``ceil(n / batch_size)`` global batches; rows past ``n`` are zeros with
    ``mask`` False, so a jitted embedder sees one shape. With ``shard_count > 1`` each process
    gets its ``batch_size // shard_count`` rows of every global batch (same layout as
    :func:`train_loader`), and every process yields the same number of batches.

    Args:
      source: the split to embed.
      batch_size: rows per global batch, a multiple of ``shard_count``.
      kind: ``"images"`` or ``"captions"``.
      tokenize: ``caption -> (tokens int32 [L], length int32)``; required for captions.
      image_transform: ``uint8 [H, W, 3] -> float32 [S, S, 3]``; default
        :class:`EvalTransform` (resize 256, centre crop 224). None for feature sources.
      worker_count, shard_index, shard_count, read_options: as in :func:`train_loader`;
        sharding defaults to ``jax.process_index()`` / ``jax.process_count()``.

    Returns:
      A ``grain.IterDataset`` of local batches (keys in the module docstring); iterate it once
      per evaluation.
    """
    shard_index, shard_count, local = _shard(shard_index, shard_count, batch_size)
    if kind == "images":
        transform = _image_transform(source, image_transform, EvalTransform())
        size = source.num_images
    elif kind == "captions":
        if tokenize is None:
            raise ValueError("eval_batches(kind='captions') needs tokenize=caption -> (tokens, length).")
        transform = None
        size = source.num_captions
    else:
        raise ValueError(f"kind must be 'images' or 'captions', got {kind!r}.")
    if size == 0:
        raise ValueError(f"{source!r} has no {kind} to evaluate.")
    num_batches = -(-size // batch_size)
    make = _EvalBatch(source, kind, tokenize, transform, batch_size, local, shard_index)
    ds = grain.MapDataset.range(num_batches).map(make)
    return _iter_dataset(ds, worker_count, read_options)
