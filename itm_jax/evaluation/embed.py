"""Embeddings of a split or of given inputs, batched and sharded over the experiment's mesh.

Every global embedding is L2-normalised: cosine scores for every model, also those trained on
unnormalised outputs (CMPM, the instance loss), as the papers evaluate. Set models (SCAN,
BFAN) give their regions and words as their encoders normalise them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax
import numpy as np

from itm_jax.data import pipeline
from itm_jax.similarity import l2_normalize


def embed_batches(exp, params, rest, kind: str,
                  batches: Iterable[Mapping[str, np.ndarray]]) -> np.ndarray:
    """``[N, D]`` float32 embeddings of the unmasked rows of process-local ``batches``
    (``kind``: ``"images"`` or ``"captions"``; each batch has ``mask`` bool ``[B]``); for a set
    model its sets, ``[N, R, D]`` regions or ``{"words": [N, L, D], "length": [N]}``.

    ``exp``: an ``itm_jax.experiment.Experiment``; ``params, rest``: its model's weights.
    """
    rows = []
    for batch in batches:
        mask = jax.make_array_from_process_local_data(exp.rows, np.asarray(batch["mask"]))
        emb = exp.embed_fn(kind, params, rest, exp.global_batch(batch))
        if exp.scorer is None:  # set models normalise each region and word themselves
            emb = l2_normalize(emb)
        keep = np.asarray(jax.device_get(mask))
        rows.append(jax.tree.map(lambda x, keep=keep: np.asarray(x)[keep], emb))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *rows)


def embed_split(exp, params, rest, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``([N, D], [M, D])`` image and caption embeddings of ``exp.sources[split]``, index order."""
    src, bs = exp.sources[split], exp.config.eval_batch_size
    return tuple(embed_batches(exp, params, rest, kind, pipeline.eval_batches(
        src, batch_size=bs, kind=kind, tokenize=exp.tokenize)) for kind in ("images", "captions"))


def padded_batches(fields: Mapping[str, np.ndarray], batch_size: int):
    """Batches of ``batch_size`` rows of the equal-length arrays ``fields``, the last padded
    with zero rows (``mask`` False), as ``embed_batches`` takes them (one process)."""
    n = len(next(iter(fields.values())))
    for start in range(0, n, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in fields.items()}
        pad = batch_size - len(next(iter(batch.values())))
        batch = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
                 for k, v in batch.items()}
        batch["mask"] = np.arange(batch_size) < batch_size - pad
        yield batch
