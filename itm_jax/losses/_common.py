"""Input checks and the masked-max primitive shared by the loss families."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

REDUCTIONS = ("sum", "mean")


def as_float(x) -> jax.Array:
    """``x`` as a floating array; half-precision inputs are computed in float32.

    Reductions over a batch and ``logsumexp`` lose too much in bfloat16, and the brief asks
    every loss to stay finite for half-precision inputs.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
        x = x.astype(jnp.float32)
    return x


def check_matrix(scores, name: str = "scores", *, square: bool = True) -> jax.Array:
    scores = as_float(scores)
    if scores.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [Bi, Bt] matrix; got shape {scores.shape}.")
    if square and scores.shape[0] != scores.shape[1]:
        raise ValueError(
            f"{name} must be square [B, B] (pair k = (image_k, caption_k)); got shape "
            f"{scores.shape}. Pass one caption per image in the batch."
        )
    return scores


def positive_mask(scores: jax.Array, positives) -> jax.Array:
    """Bool ``[Bi, Bt]`` positives; ``None`` means the diagonal (the authors' convention)."""
    if positives is None:
        if scores.shape[0] != scores.shape[1]:
            raise ValueError(
                f"positives=None means the diagonal, which needs square scores; got "
                f"{scores.shape}. Pass positives=positives_from_ids(...)."
            )
        return jnp.eye(scores.shape[0], dtype=bool)
    positives = jnp.asarray(positives)
    if positives.shape != scores.shape:
        raise ValueError(
            f"positives must have the shape of scores {scores.shape}; got {positives.shape}."
        )
    return positives.astype(bool)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unknown reduction={reduction!r}; valid: {', '.join(REDUCTIONS)}.")


def check_vector(v, b: int, name: str) -> jax.Array:
    v = as_float(v)
    if v.shape != (b,):
        raise ValueError(f"{name} must have shape [B]=({b},); got {v.shape}.")
    return v


def check_labels(labels, b: int, name: str = "labels") -> jax.Array:
    labels = jnp.asarray(labels)
    if labels.shape != (b,):
        raise ValueError(f"{name} must have shape [B]=({b},); got {labels.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers (class / identity ids); got {labels.dtype}.")
    return labels


def check_choice(value: str, valid: tuple[str, ...], name: str) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {name}={value!r}; valid: {', '.join(valid)}.")


class Hardest(NamedTuple):
    """Hardest negatives of every anchor of a square score matrix.

    ``pos``: ``[B]`` scores of the batch pairs ``S_kk``. ``row``/``col``: ``[B]`` hardest
    negative score of image anchor k (over captions) / caption anchor k (over images), 0 where
    the anchor has no negative. ``row_has``/``col_has``: ``[B]`` whether it has one.
    """

    pos: jax.Array
    row: jax.Array
    col: jax.Array
    row_has: jax.Array
    col_has: jax.Array


def hardest_negatives(scores: jax.Array, positives: jax.Array) -> Hardest:
    neg = ~positives
    masked = jnp.where(neg, scores, -jnp.inf)
    row_has, col_has = neg.any(axis=1), neg.any(axis=0)
    # The where keeps -inf (an anchor without negatives, e.g. B=1) out of later arithmetic,
    # where 0 * inf would turn the gradient into NaN.
    row = jnp.where(row_has, masked.max(axis=1), 0.0)
    col = jnp.where(col_has, masked.max(axis=0), 0.0)
    return Hardest(jnp.diagonal(scores), row, col, row_has, col_has)


def hinge(x: jax.Array, active: jax.Array | None = None) -> jax.Array:
    h = jax.nn.relu(x)
    return h if active is None else jnp.where(active, h, 0.0)


def reduce(per_anchor: jax.Array, reduction: str) -> jax.Array:
    return per_anchor.sum() if reduction == "sum" else per_anchor.mean()


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy ``[B]`` from integer labels."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
