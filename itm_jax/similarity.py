"""Score matrices and intra-modal distances.

Conventions as in ``docs/losses.md`` ("Conventions"): images are rows, captions are columns,
and ``scores[i, j] = s(image_i, caption_j)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

DISTANCES = ("cosine", "l1", "l2", "msd")

# Elements of one [chunk, B, D] difference block in `pairwise_distances` (8 MiB of f32): small
# blocks stay in cache, which measured fastest on CPU for both passes.
_PAIRWISE_BLOCK_ELEMENTS = 1 << 21


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """``x * rsqrt(max(||x||^2, eps))`` along ``axis``.

    The epsilon sits on the squared norm, as in the CMPM authors' ``tf.nn.l2_normalize``
    (and equivalent to PyTorch's ``F.normalize(eps=1e-6)`` for non-degenerate rows), so a zero
    row maps to zero with a finite gradient.
    """
    x = jnp.asarray(x)
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps))


def cosine_scores(img: jax.Array, txt: jax.Array) -> jax.Array:
    """Cosine similarity matrix ``[Bi, Bt]`` of ``img [Bi, D]`` and ``txt [Bt, D]``."""
    img, txt = jnp.asarray(img), jnp.asarray(txt)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"cosine_scores expects img [Bi, D] and txt [Bt, D] with the same D; got "
            f"{img.shape} and {txt.shape}."
        )
    return l2_normalize(img) @ l2_normalize(txt).T  # [Bi, Bt]


def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt`` whose gradient at 0 is 0 instead of inf (distances have a zero diagonal)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def pairwise_distances(x: jax.Array, delta: str, *, chunk_size: int | None = None) -> jax.Array:
    """Intra-modal distance matrix ``[B, B]`` of the rows of ``x [B, D]`` (IMC paper, Eq. 5-8).

    Args:
      x: ``[B, D]`` embeddings, used as given.
      delta: ``"cosine"`` (``1 - x_n . x_m``), ``"l1"`` (``sum_d |x_nd - x_md|``), ``"l2"``
        (Euclidean, zero-safe sqrt) or ``"msd"`` (sum of squared differences).
      chunk_size: rows per block of the elementwise distances. The ``[chunk, B, D]`` difference
        block is the peak memory, forward and backward, instead of ``[B, B, D]``. Default: the
        largest chunk with at most 2**21 elements per block.

    Returns:
      ``[B, B]`` distances, exactly 0 on the diagonal for l1/l2/msd.
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"pairwise_distances expects x [B, D]; got shape {x.shape}.")
    if delta not in DISTANCES:
        raise ValueError(f"Unknown distance delta={delta!r}; valid: {', '.join(DISTANCES)}.")
    if delta == "cosine":
        return 1.0 - x @ x.T
    b, d = x.shape
    if chunk_size is None:
        chunk_size = max(1, min(b, _PAIRWISE_BLOCK_ELEMENTS // max(1, b * d)))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}.")
    chunk_size = min(chunk_size, b)
    if delta == "l1":
        return _l1(x, chunk_size)
    msd = _msd(x, chunk_size)
    return safe_sqrt(msd) if delta == "l2" else msd


# Differences rather than the Gram-matrix identity: exact zeros on the diagonal and no
# cancellation, at the price of B^2 D elementwise work with memory bounded by chunking. The
# hand-written VJPs keep the backward pass chunked too, and are ~15x faster on CPU than
# differentiating the [chunk, B, D] block (whose reductions XLA lowers poorly).
@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _l1(x, chunk_size):
    row = lambda xn: jnp.sum(jnp.abs(xn - x), axis=-1)  # [D] -> [B]
    return jax.lax.map(row, x, batch_size=chunk_size)


def _l1_fwd(x, chunk_size):
    return _l1(x, chunk_size), x


def _l1_bwd(chunk_size, x, g):
    # d/dx_n of sum_nm g_nm |x_n - x_m| = sum_m (g_nm + g_mn) sign(x_n - x_m).
    g_sym = g + g.T
    row = lambda args: args[1] @ jnp.sign(args[0] - x)  # [B] @ [B, D] -> [D]
    return (jax.lax.map(row, (x, g_sym), batch_size=chunk_size),)


_l1.defvjp(_l1_fwd, _l1_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _msd(x, chunk_size):
    row = lambda xn: jnp.sum(jnp.square(xn - x), axis=-1)  # [D] -> [B]
    return jax.lax.map(row, x, batch_size=chunk_size)


def _msd_fwd(x, chunk_size):
    return _msd(x, chunk_size), x


def _msd_bwd(chunk_size, x, g):
    # d/dx_n of sum_nm g_nm ||x_n - x_m||^2 = 2 sum_m (g_nm + g_mn) (x_n - x_m): two matmuls.
    del chunk_size
    g_sym = g + g.T
    return (2.0 * (g_sym.sum(axis=1, keepdims=True) * x - g_sym @ x),)


_msd.defvjp(_msd_fwd, _msd_bwd)
