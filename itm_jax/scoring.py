"""How a model scores (image, caption) pairs: the one function every consumer of scores calls.

A model outputs either global embeddings, image ``[N, D]`` and caption ``[M, D]``, scored by
their dot product (cosine, as they are L2-normalised), or sets: each image's regions
``[N, R, D]`` and each caption's words ``{"words": [M, L, D], "length": [M]}``, scored by
attention between the two (SCAN, BFAN; ``itm_jax.similarity``). The train step, the retrieval
metrics, the mining job, the report and the run API all take the model's ``Scorer``, so every
loss applies unchanged to its score matrix.

A scorer is hashable (a static argument of jitted functions) and has two methods:
``scorer(img, cap) -> [N, M]``, every image against every caption, and
``scorer.pairs(img, cap) -> [B]``, the scores of matched rows (``img[k]`` with ``cap[k]``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


@dataclasses.dataclass(frozen=True)
class DotScorer:
    """Global embeddings: ``img @ cap.T`` (float32 at the highest matmul precision)."""

    kind = "global"

    def __call__(self, img, cap):
        return jnp.dot(img, cap.T, precision=lax.Precision.HIGHEST)

    def pairs(self, img, cap):
        return jnp.sum(img * cap, axis=-1)


@dataclasses.dataclass(frozen=True)
class AttentionScorer:
    """Sets scored by ``itm_jax.similarity.<name>_scores(regions, words, lengths, **options)``.

    ``name``: ``"scan"`` or ``"bfan"``; ``options``: the score's keyword arguments as sorted
    ``(key, value)`` pairs (hashable, so the scorer can be a static argument).
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    kind = "sets"

    @property
    def fn(self):
        from itm_jax import similarity

        return getattr(similarity, f"{self.name}_scores")

    def __call__(self, img, cap):
        return self.fn(img, cap["words"], cap["length"], **dict(self.options))

    def pairs(self, img, cap):
        def one(regions, words, length):
            return self.fn(regions[None], words[None], length[None], **dict(self.options))[0, 0]

        return jax.vmap(one)(img, cap["words"], cap["length"])


@dataclasses.dataclass(frozen=True)
class EnsembleScorer:
    """The mean of several models' scores (the SCAN paper's t-i + i-t ensemble, BFAN's equal +
    prob): images and captions are tuples with one entry per model, scored by that model's
    scorer (``None``: the dot product)."""

    scorers: tuple

    kind = "ensemble"

    def _each(self):
        return [DotScorer() if s is None else s for s in self.scorers]

    def __call__(self, img, cap):
        return sum(s(i, c) for s, i, c in zip(self._each(), img, cap)) / len(self.scorers)

    def pairs(self, img, cap):
        return sum(s.pairs(i, c) for s, i, c in zip(self._each(), img, cap)) / len(self.scorers)


def rows(tree) -> int:
    """The number of rows (images or captions) of an embedding or a set."""
    return jax.tree.leaves(tree)[0].shape[0]


def take(tree, index):
    """Rows ``index`` of an embedding or a set (NumPy or JAX arrays)."""
    return jax.tree.map(lambda x: x[index], tree)


@functools.partial(jax.jit, static_argnums=0)
def _scores(scorer, img, cap):
    return scorer(img, cap)


def score_matrix(scorer, img, cap, *, block: int = 512) -> np.ndarray:
    """``[N, M]`` float32 scores of every image against every caption (``scorer`` None: the
    dot product), computed in blocks of ``block`` captions."""
    scorer = DotScorer() if scorer is None else scorer
    m = rows(cap)
    return np.concatenate([np.asarray(_scores(scorer, img, take(cap, slice(s, s + block))))
                           for s in range(0, m, block)], axis=1)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of ``scores [Q, G]``: ``(index int [Q, k],
    score [Q, k])``, best first; equal scores keep the column order."""
    k = min(k, scores.shape[1])
    index = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return index, np.take_along_axis(scores, index, axis=1)
