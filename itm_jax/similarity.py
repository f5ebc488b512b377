"""Score matrices and intra-modal distances.

Conventions as in ``docs/losses.md`` ("Conventions"): images are rows, captions are columns,
and ``scores[i, j] = s(image_i, caption_j)``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def l2n(x: jax.Array, axis: int = -1) -> jax.Array:
    """``x / (sqrt(sum x^2) + 1e-8)`` along ``axis``: the eps added to the norm, as SCAN's,
    BFAN's and VSRN's ``l2norm`` (``l2_normalize`` clamps the norm instead). The zero-safe
    square root keeps the gradient of a zero vector finite (it maps to zero)."""
    return x / (safe_sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True)) + 1e-8)


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


# --------------------------------------------------------------------------- attention scores

SCAN_NORMS = ("softmax", "l2norm", "clipped_l2norm", "clipped", "no_norm")
SCAN_AGGS = ("logsumexp", "max", "sum", "mean")
DIRECTIONS = ("t2i", "i2t")
BFAN_FOCALS = ("equal", "prob")

# Pairs per block: the [block_images, block_captions, R, L] attention block and its few
# same-sized temporaries are the peak memory, forward and backward.
_BLOCK_IMAGES = 8
_BLOCK_CAPTIONS = 32
# Caption blocks are cut to a multiple of this many words (see `_blocked`).
_LENGTH_STEP = 4
# Full float32 products on accelerators too (TF32 / bf16 passes would move the scores).
_HIGHEST = jax.lax.Precision.HIGHEST


def scan_scores(
    images: jax.Array,
    captions: jax.Array,
    cap_lens: jax.Array,
    *,
    direction: str = "t2i",
    raw_feature_norm: str = "clipped_l2norm",
    agg: str = "mean",
    lambda_softmax: float = 9.0,
    lambda_lse: float = 6.0,
    region_lens: jax.Array | None = None,
    block_images: int = _BLOCK_IMAGES,
    block_captions: int = _BLOCK_CAPTIONS,
) -> jax.Array:
    """SCAN stacked cross attention scores ``[Ni, Nc]`` (Lee et al., "Stacked Cross Attention
    for Image-Text Matching", ECCV 2018, Sec. 3; the authors' ``func_attention``,
    ``xattn_score_t2i`` and ``xattn_score_i2t``). See ``docs/models.md``.

    For each pair, the queries attend over the context: ``direction="t2i"`` has the caption's
    words as queries and the image's regions as context (the paper's text-image
    formulation), ``"i2t"`` the other way round. Raw attention ``A = C Q^T`` is normalised over
    the queries for each context item (``raw_feature_norm``), each query's weights over the
    context are ``softmax(lambda_softmax * A[:, q])``, the relevance of a query is the cosine
    between it and its attended vector, and the relevances are pooled by ``agg``
    (``logsumexp`` uses ``lambda_lse``).

    Args:
      images: ``[Ni, R, D]`` region features in the joint space.
      captions: ``[Nc, L, D]`` word features.
      cap_lens: integer ``[Nc]``, valid words per caption, ``1 <= cap_lens <= L``; positions
        at or past it are padding and affect neither the scores nor any gradient.
      direction: ``"t2i"`` or ``"i2t"``.
      raw_feature_norm: ``"softmax" | "l2norm" | "clipped_l2norm" | "clipped" | "no_norm"``.
      agg: ``"logsumexp" | "max" | "sum" | "mean"``, the pooling over queries.
      lambda_softmax: inverse temperature of the attention softmax.
      lambda_lse: inverse temperature of ``agg="logsumexp"``.
      region_lens: optional integer ``[Ni]``, valid regions per image (default all ``R``).
      block_images, block_captions: pairs per block; memory is bounded by a few
        ``[block_images, block_captions, R, L]`` arrays.

    Returns:
      ``[Ni, Nc]`` scores, images as rows; float32, or float64 for float64 inputs.
    """
    name = "scan_scores"
    _check_choice(name, "direction", direction, DIRECTIONS)
    _check_choice(name, "raw_feature_norm", raw_feature_norm, SCAN_NORMS)
    _check_choice(name, "agg", agg, SCAN_AGGS)
    sets = _check_sets(name, images, captions, cap_lens, region_lens, block_images, block_captions)

    def pair(img, cap):
        raw = jnp.dot(img.features, cap.features.T, precision=_HIGHEST)  # [R, L]
        if direction == "t2i":
            r = _relevance(raw, img, cap, raw_feature_norm, lambda_softmax, None)
            mask = cap.mask
        else:
            r = _relevance(raw.T, cap, img, raw_feature_norm, lambda_softmax, None)
            mask = img.mask
        return _pool(r, mask, agg, lambda_lse)

    return _blocked(pair, *sets, block_images, block_captions)


def bfan_scores(
    images: jax.Array,
    captions: jax.Array,
    cap_lens: jax.Array,
    *,
    focal: str = "equal",
    lambda_softmax: float = 20.0,
    region_lens: jax.Array | None = None,
    block_images: int = _BLOCK_IMAGES,
    block_captions: int = _BLOCK_CAPTIONS,
) -> jax.Array:
    """BFAN bidirectional focal attention scores ``[Ni, Nc]`` (Liu et al., "Focus Your
    Attention: A Bidirectional Focal Attention Network for Image-Text Matching", ACM MM 2019;
    the authors' ``func_attention`` with ``focal_equal`` / ``focal_prob``). See
    ``docs/models.md``.

    ``score = t2i + i2t``, each the mean over its queries of the cosine between a query and its
    focal-attended vector. Focal attention: raw attention ``C Q^T``, leaky ReLU (slope 0.1),
    L2 norm over the queries for each context item, ``softmax(lambda_softmax * .)`` over the
    context, then only the context items the focal function scores above zero keep their
    weight (a hard selection without gradient), renormalised to sum to one. ``focal="equal"``
    keeps the weights above the mean; ``"prob"`` those above ``sum a^1.5 / sum a^0.5``. Where
    no item passes (all weights equal, e.g. a single context item, on which the authors' code
    divides by zero) every item is kept.

    Args:
      images: ``[Ni, R, D]`` region features in the joint space.
      captions: ``[Nc, L, D]`` word features.
      cap_lens: integer ``[Nc]``, valid words per caption, ``1 <= cap_lens <= L``; padding
        affects neither the scores nor any gradient.
      focal: ``"equal"`` or ``"prob"``.
      lambda_softmax: inverse temperature of the attention softmax.
      region_lens: optional integer ``[Ni]``, valid regions per image (default all ``R``).
      block_images, block_captions: pairs per block, as in ``scan_scores``.

    Returns:
      ``[Ni, Nc]`` scores in ``[-2, 2]``, images as rows.
    """
    name = "bfan_scores"
    _check_choice(name, "focal", focal, BFAN_FOCALS)
    sets = _check_sets(name, images, captions, cap_lens, region_lens, block_images, block_captions)

    def pair(img, cap):
        raw = jnp.dot(img.features, cap.features.T, precision=_HIGHEST)  # [R, L]
        t2i = _relevance(raw, img, cap, "clipped_l2norm", lambda_softmax, focal)
        i2t = _relevance(raw.T, cap, img, "clipped_l2norm", lambda_softmax, focal)
        return _pool(t2i, cap.mask, "mean", None) + _pool(i2t, img.mask, "mean", None)

    return _blocked(pair, *sets, block_images, block_captions)


class _Set(NamedTuple):
    """One image's regions or one caption's words (leading axes added by the blocking)."""

    features: jax.Array  # [n, D], zero at padding
    mask: jax.Array  # bool [n]
    norms: jax.Array  # [n], ||x_k||
    gram: jax.Array  # [n, n], x_k . x_l


def _check_choice(fn: str, arg: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{fn}: unknown {arg}={value!r}; valid: {', '.join(valid)}.")


def _check_sets(fn, images, captions, cap_lens, region_lens, block_images, block_captions):
    images, captions = _as_float(images), _as_float(captions)
    if images.ndim != 3 or captions.ndim != 3 or images.shape[2] != captions.shape[2]:
        raise ValueError(
            f"{fn} expects images [Ni, R, D] and captions [Nc, L, D] with the same D; got "
            f"{images.shape} and {captions.shape}."
        )
    cap_lens = check_lengths(fn, "cap_lens", cap_lens, captions.shape[:2])
    if region_lens is not None:
        region_lens = check_lengths(fn, "region_lens", region_lens, images.shape[:2])
    for arg, value in (("block_images", block_images), ("block_captions", block_captions)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{fn}: {arg} must be an integer >= 1; got {value!r}.")
    dtype = jnp.promote_types(images.dtype, captions.dtype)
    return _make_set(images.astype(dtype), region_lens), _make_set(captions.astype(dtype), cap_lens)


def _as_float(x) -> jax.Array:
    # Half precision is computed in float32, as the losses do (docs/losses.md, "Precision").
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
        x = x.astype(jnp.float32)
    return x


def check_lengths(fn: str, arg: str, lens, shape: tuple[int, int], *,
                  fix: str = "Count the valid positions of each row and pad to the longest.",
                  ) -> jax.Array:
    """``lens`` as an integer ``[n]`` array with ``1 <= lens <= length`` for ``shape = (n,
    length)``; ``ValueError`` naming ``fn``, ``arg`` and ``fix`` otherwise."""
    n, length = shape
    # Concrete lengths are range-checked on the host: under a trace (jit, eval_shape) even an op
    # on a concrete array is staged, so the range can only be checked before it.
    concrete = None if isinstance(lens, jax.core.Tracer) else np.asarray(lens)
    lens = jnp.asarray(lens)
    if lens.shape != (n,) or not jnp.issubdtype(lens.dtype, jnp.integer):
        raise ValueError(
            f"{fn} expects {arg} as an integer [{n}] array (one length per row); got "
            f"{lens.dtype} of shape {lens.shape}."
        )
    if concrete is not None and n and (concrete.min() < 1 or concrete.max() > length):
        raise ValueError(
            f"{fn} needs 1 <= {arg} <= {length} (the padded length); got values in "
            f"[{concrete.min()}, {concrete.max()}]. {fix}"
        )
    return lens


def _make_set(x: jax.Array, lens: jax.Array | None) -> _Set:
    """``x [N, n, D]`` with padding zeroed: padding, even inf or NaN, then gets zero gradient
    and the Gram matrices below stay exact."""
    mask = jnp.ones(x.shape[:2], bool) if lens is None else jnp.arange(x.shape[1]) < lens[:, None]
    x = jnp.where(mask[..., None], x, 0.0)
    norms = safe_sqrt(jnp.sum(jnp.square(x), axis=-1))  # [N, n]
    gram = jnp.einsum("nkd,nld->nkl", x, x, precision=_HIGHEST)  # [N, n, n]
    return _Set(x, mask, norms, gram)


def _lrelu(x):
    return jnp.where(x > 0, x, 0.1 * x)


def _normalize_over_queries(a, query_mask, norm):
    """Step 2 of SCAN on ``a [s, q]`` (context x query): each context row over its queries."""
    if norm == "softmax":
        return jax.nn.softmax(jnp.where(query_mask, a, -jnp.inf), axis=1)
    if norm in ("clipped_l2norm", "clipped"):
        a = _lrelu(a)
    if norm in ("clipped_l2norm", "l2norm"):
        # Padded queries are zero vectors, so their raw attention adds 0 to the norm.
        a = l2n(a, axis=1)
    return a


def _relevance(raw, context: _Set, query: _Set, norm, lambda_softmax, focal):
    """``cos(Q_q, a_q)`` ``[q]`` for one pair, ``raw [s, q] = C Q^T``.

    The attended vector ``a_q = sum_c w[c, q] C_c`` is never formed: ``Q_q . a_q = sum_c
    w[c, q] raw[c, q]`` and ``||a_q||^2 = w[:, q]^T (C C^T) w[:, q]``, which costs ``s^2``
    instead of ``s D`` per query.
    """
    a = _normalize_over_queries(raw, query.mask, norm)
    w = jax.nn.softmax(jnp.where(context.mask[:, None], lambda_softmax * a, -jnp.inf), axis=0)
    if focal is not None:
        w = _focal(w, context.mask, focal)
    dot = jnp.sum(w * raw, axis=0)  # [q]
    sq_norm = jnp.sum(w * jnp.dot(context.gram, w, precision=_HIGHEST), axis=0)  # [q]
    return dot / jnp.maximum(query.norms * safe_sqrt(sq_norm), 1e-8)


def _focal(w, context_mask, focal):
    """BFAN's hard selection on ``w [s, q]`` and renormalisation (no eps, as the authors).
    ``keep`` is boolean, so no gradient flows through the selection."""
    if focal == "equal":
        f = jnp.sum(context_mask) * w - jnp.sum(w, axis=0)
    else:
        # The authors' sum_k (w_j - w_k) sqrt(w_k), in O(s) rather than O(s^2).
        root = jnp.sqrt(w)
        f = w * jnp.sum(root, axis=0) - jnp.sum(w * root, axis=0)
    keep = (f > 0) & context_mask[:, None]
    # All weights equal (a single context item, say): nothing passes, keep them all.
    keep = jnp.where(jnp.any(keep, axis=0), keep, context_mask[:, None])
    w = jnp.where(keep, w, 0.0)
    return w / jnp.sum(w, axis=0)


def _pool(r, mask, agg, lambda_lse):
    if agg == "mean":
        return jnp.sum(jnp.where(mask, r, 0.0)) / jnp.sum(mask)
    if agg == "sum":
        return jnp.sum(jnp.where(mask, r, 0.0))
    if agg == "max":
        return jnp.max(jnp.where(mask, r, -jnp.inf))
    return jax.nn.logsumexp(jnp.where(mask, lambda_lse * r, -jnp.inf)) / lambda_lse


def _blocked(pair, images: _Set, captions: _Set, block_images: int, block_captions: int):
    """``pair(image, caption) -> score`` over all pairs, ``[Ni, Nc]``, one block of
    ``[bi, bc]`` pairs at a time.

    Blocks are recomputed in the backward pass, so it too holds one block. Both sets are padded
    to whole blocks (the padding is sliced off). Captions are taken shortest first, and each
    block of them is cut to the smallest multiple of ``_LENGTH_STEP`` (or ``L``) that holds its
    longest caption: cutting off padding changes nothing, and with captions of varied lengths
    it saves most of the work.
    """
    ni, nc = images.mask.shape[0], captions.mask.shape[0]
    bi, bc = min(block_images, ni), min(block_captions, nc)
    images, captions = _pad_rows(images, bi), _pad_rows(captions, bc)
    img_blocks = jax.tree.map(lambda x: x.reshape(-1, bi, *x.shape[1:]), images)
    block = jax.checkpoint(jax.vmap(jax.vmap(pair, (None, 0)), (0, None)))  # -> [bi, bc]

    def against_images(cap: _Set) -> jax.Array:  # [Ni_pad, bc]
        return jax.lax.map(lambda img: block(img, cap), img_blocks).reshape(-1, bc)

    lens = jnp.sum(captions.mask, axis=1)
    order = jnp.argsort(lens)
    length = captions.mask.shape[1]
    cuts = (length,) if bc == captions.mask.shape[0] else (
        tuple(range(_LENGTH_STEP, length, _LENGTH_STEP)) + (length,)
    )
    branches = [lambda cap, n=n: against_images(_truncate(cap, n)) for n in cuts]

    # Checkpointed as a whole too: the backward pass then keeps nothing of a caption block
    # but its indices (the residuals of the inner loop leave `switch` per caption block, and
    # would otherwise be stacked over caption blocks: a copy of the images each).
    @jax.checkpoint
    def caption_block(idx):  # idx [bc], ascending lengths
        cap = jax.tree.map(lambda x: x[idx], captions)
        if len(cuts) == 1:
            return branches[0](cap)
        return jax.lax.switch(jnp.searchsorted(jnp.asarray(cuts), lens[idx[-1]]), branches, cap)

    scores = jax.lax.map(caption_block, order.reshape(-1, bc))  # [nbc, Ni_pad, bc]
    scores = scores.transpose(1, 0, 2).reshape(scores.shape[1], -1)  # columns in `order`
    return scores[:ni, jnp.argsort(order)[:nc]]


def _pad_rows(s: _Set, b: int) -> _Set:
    """``s`` with rows appended up to a multiple of ``b``: one valid zero vector each, so their
    scores, sliced off later, and the gradients through their block stay finite."""
    n, length = s.mask.shape
    pad = -n % b
    filler = jnp.broadcast_to(jnp.arange(length) == 0, (pad, length))
    zeros = lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))  # noqa: E731
    return _Set(zeros(s.features), jnp.concatenate([s.mask, filler]), zeros(s.norms), zeros(s.gram))


def _truncate(s: _Set, n: int) -> _Set:
    """The first ``n`` positions of each row of ``s``."""
    return _Set(s.features[:, :n], s.mask[:, :n], s.norms[:, :n], s.gram[:, :n, :n])
