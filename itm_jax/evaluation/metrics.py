"""Image-text retrieval metrics: the VSE++ evaluation protocol, computed block-wise in JAX.

Faghri et al., "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives", BMVC 2018;
the protocol of its public evaluation code (``evaluation.py``: ``i2t``, ``t2i``, ``evalrank``),
which the IMC, CMPM, dual-path, ConVSE and AOQ papers report in. With ``S = img_emb @ cap_emb.T``
(plain dot products; callers L2-normalise if they want cosines):

- image-to-text (i2t): the rank of image i is the number of captions scoring strictly higher than
  its best-scoring own caption (0-based);
- text-to-image (t2i): the rank of caption j is the number of images scoring strictly higher
  than its own image; with per-image labels (CUHK-PEDES identities), the number of images of
  other labels scoring strictly higher than its best-scoring image of its own image's label
  (R@K: some image of the right person among the top K, the PEDES protocol);
- ``R@K = 100 * mean(rank < K)`` for K in (1, 5, 10), ``rsum`` = the six recalls summed,
  ``medr = floor(median(rank)) + 1``, ``meanr = mean(rank) + 1``.

"Strictly higher" means exact ties never raise a rank (the reference's argsort breaks ties in
an arbitrary order instead).

Protocols: Flickr30K 1K and COCO 5K are ``recall_metrics`` on the whole test split (1000 and
5000 images; there is no separate ``coco_5k``), COCO 1K is ``coco_1k_5fold``.

Memory: the ``[N, M]`` score matrix is never materialised. One jitted pass walks the captions in
blocks; each ``[N, block]`` float32 block of scores feeds both directions, then is dropped. Peak
working memory is that block plus two int32 ``[N, block]`` temporaries of XLA's count
reductions: about 30 MB for N=5000 and ``BLOCK_SIZE`` 512 (the full COCO 5K matrix is 500 MB);
``t2i`` with ``image_labels`` adds a masked copy of the block. Scores use float32 at
``Precision.HIGHEST`` on every backend.

Example::

    from itm_jax import evaluation
    m = evaluation.recall_metrics(img_emb, cap_emb)  # COCO 5K or Flickr30K 1K test split
    m1k = evaluation.coco_1k_5fold(img_emb, cap_emb)  # COCO 1K, the 5K split in 5 folds
    print(m["rsum"], m["i2t_r1"], m["t2i_r1"])
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from itm_jax import scoring

# Captions per block of scores. A [5000, 512] float32 block is 10 MB and fits the last-level
# cache of a CPU; on CPU blocks of 256-512 ran faster than one big matmul of the same size.
BLOCK_SIZE = 512

COCO_1K_FOLDS = 5
COCO_1K_FOLD_IMAGES = 1000

_RECALL_KS = (1, 5, 10)


def i2t(img_emb, cap_emb, *, caps_per_image: int = 5, cap_to_img=None, scorer=None) -> dict:
    """Image-to-text retrieval (image queries, caption gallery), VSE++ protocol.

    Args:
      img_emb: ``[N, D]`` image embeddings, one row per image (not repeated per caption).
      cap_emb: ``[M, D]`` caption embeddings.
      caps_per_image: captions ``c*i .. c*i+c-1`` belong to image i, so ``M == N * c``. Ignored
        when ``cap_to_img`` is given.
      cap_to_img: optional int ``[M]``, the image index of each caption; overrides the
        consecutive-groups convention. Images may have any number of captions, but i2t needs at
        least one per image (a ``ValueError`` names the images that have none).
      scorer: an ``itm_jax.scoring`` scorer for models whose outputs are sets (regions and
        words, scored by attention); ``img_emb`` / ``cap_emb`` are then its sets. None: the
        dot product of the embeddings.

    Returns:
      ``{"r1", "r5", "r10", "medr", "meanr"}`` as Python floats and ``"ranks"``, int ``[N]``:
      the number of captions scoring strictly higher than each image's best own caption.
    """
    ranks_i2t, _ = _ranks(img_emb, cap_emb, caps_per_image, cap_to_img, need_captions=True,
                          scorer=scorer)
    return _summary(ranks_i2t)


def t2i(
    img_emb, cap_emb, *, caps_per_image: int = 5, cap_to_img=None, image_labels=None,
    scorer=None,
) -> dict:
    """Text-to-image retrieval (caption queries, image gallery), VSE++ protocol.

    Args: as ``i2t``; images without captions are allowed here (they are gallery items only).
      image_labels: optional int ``[N]``, a label per image (CUHK-PEDES: the person). Every
        image with the label of a caption's own image is then a positive of that caption, as
        in the PEDES protocol (Li et al., CVPR 2017; the CMPM code's ``recall_at_k``: "at
        least one ground-truth is retrieved among the top-K results"). ``None``: the own
        image only.

    Returns:
      ``{"r1", "r5", "r10", "medr", "meanr"}`` as Python floats and ``"ranks"``, int ``[M]``:
      the number of images scoring strictly higher than each caption's own image; with
      ``image_labels``, the number of images of other labels scoring strictly higher than the
      caption's best-scoring positive.
    """
    _, ranks_t2i = _ranks(
        img_emb, cap_emb, caps_per_image, cap_to_img, need_captions=False,
        image_labels=image_labels, scorer=scorer,
    )
    return _summary(ranks_t2i)


def recall_metrics(img_emb, cap_emb, *, caps_per_image: int = 5, cap_to_img=None,
                   scorer=None) -> dict:
    """Both directions from one pass over the scores, as a flat dict of Python floats.

    Args: as ``i2t`` (every image needs a caption).

    Returns:
      ``i2t_r1, i2t_r5, i2t_r10, i2t_medr, i2t_meanr``, the same five with prefix ``t2i_``, and
      ``rsum`` (the six recalls summed). On the 5000-image COCO test split this is COCO 5K.
    """
    ranks_i2t, ranks_t2i = _ranks(img_emb, cap_emb, caps_per_image, cap_to_img, need_captions=True,
                                  scorer=scorer)
    out = {}
    for prefix, ranks in (("i2t", ranks_i2t), ("t2i", ranks_t2i)):
        out.update({f"{prefix}_{k}": v for k, v in _summary(ranks).items() if k != "ranks"})
    out["rsum"] = _rsum(out)
    return out


def coco_1k_5fold(img_emb, cap_emb, *, caps_per_image: int = 5, scorer=None) -> dict:
    """COCO 1K: ``recall_metrics`` on five consecutive folds of 1000 images, averaged.

    Fold f is images ``1000*f .. 1000*f+999`` with their captions ``1000*c*f .. 1000*c*(f+1)-1``.
    Every metric (medr and meanr included) is the mean over folds, as in the VSE++ code;
    ``rsum`` is recomputed from the averaged recalls.

    Args:
      img_emb: ``[5000, D]`` image embeddings of the COCO 5K test split.
      cap_emb: ``[5000 * caps_per_image, D]`` caption embeddings, grouped by image.
      caps_per_image: captions per image (5 for COCO).
      scorer: as in ``i2t``.

    Returns:
      The flat dict of ``recall_metrics``, averaged over folds.
    """
    if scorer is None:
        img_emb, cap_emb = _check_embeddings(img_emb, cap_emb)
    c = _check_caps_per_image(caps_per_image)
    n_img = COCO_1K_FOLDS * COCO_1K_FOLD_IMAGES
    if scoring.rows(img_emb) != n_img or scoring.rows(cap_emb) != n_img * c:
        raise ValueError(
            f"coco_1k_5fold expects the 5K split: {n_img} images and {n_img * c} captions "
            f"(caps_per_image={c}); got {scoring.rows(img_emb)} and {scoring.rows(cap_emb)}."
        )
    folds = []
    for f in range(COCO_1K_FOLDS):
        im = scoring.take(img_emb, slice(f * COCO_1K_FOLD_IMAGES, (f + 1) * COCO_1K_FOLD_IMAGES))
        cp = scoring.take(cap_emb, slice(f * COCO_1K_FOLD_IMAGES * c,
                                         (f + 1) * COCO_1K_FOLD_IMAGES * c))
        folds.append(recall_metrics(im, cp, caps_per_image=c, scorer=scorer))
    out = {k: float(np.mean([m[k] for m in folds])) for k in folds[0] if k != "rsum"}
    out["rsum"] = _rsum(out)
    return out


def _rsum(metrics: dict) -> float:
    return float(sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in _RECALL_KS))


def _summary(ranks: np.ndarray) -> dict:
    out = {f"r{k}": float(100.0 * np.mean(ranks < k)) for k in _RECALL_KS}
    out["medr"] = float(np.floor(np.median(ranks)) + 1)
    out["meanr"] = float(np.mean(ranks) + 1)
    out["ranks"] = ranks
    return out


def _check_embeddings(img_emb, cap_emb):
    img_emb, cap_emb = jnp.asarray(img_emb), jnp.asarray(cap_emb)
    for name, x in (("img_emb", img_emb), ("cap_emb", cap_emb)):
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D [rows, D]; got shape {x.shape}.")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {x.shape}).")
    if img_emb.shape[1] != cap_emb.shape[1]:
        raise ValueError(
            f"Embedding sizes differ: img_emb {img_emb.shape} vs cap_emb {cap_emb.shape}."
        )
    return img_emb, cap_emb


def _check_caps_per_image(caps_per_image) -> int:
    if isinstance(caps_per_image, bool) or not isinstance(caps_per_image, (int, np.integer)):
        raise ValueError(f"caps_per_image must be a positive int; got {caps_per_image!r}.")
    if caps_per_image < 1:
        raise ValueError(f"caps_per_image must be a positive int; got {caps_per_image}.")
    return int(caps_per_image)


def _caption_images(n: int, m: int, caps_per_image, cap_to_img) -> np.ndarray:
    """Validated int32 ``[M]`` image index of every caption."""
    if cap_to_img is None:
        c = _check_caps_per_image(caps_per_image)
        if m != n * c:
            raise ValueError(
                f"{m} captions for {n} images with caps_per_image={c} (expected {n * c}); pass "
                "cap_to_img for other layouts."
            )
        return np.repeat(np.arange(n, dtype=np.int32), c)
    cap_to_img = np.asarray(cap_to_img)
    if cap_to_img.shape != (m,):
        raise ValueError(f"cap_to_img must have shape [M] = ({m},); got {cap_to_img.shape}.")
    if not np.issubdtype(cap_to_img.dtype, np.integer):
        raise ValueError(f"cap_to_img must be an integer array; got dtype {cap_to_img.dtype}.")
    bad = (cap_to_img < 0) | (cap_to_img >= n)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"cap_to_img values must lie in [0, {n}) (N images); caption {j} -> "
            f"{int(cap_to_img[j])} ({int(bad.sum())} out of range)."
        )
    return cap_to_img.astype(np.int32)


def _label_ids(n: int, image_labels) -> np.ndarray | None:
    """Validated ``image_labels`` as int32 ``[N]`` ids in ``[0, K)`` (equal labels, equal ids)."""
    if image_labels is None:
        return None
    labels = np.asarray(image_labels)
    if labels.shape != (n,):
        raise ValueError(
            f"image_labels must have shape [N] = ({n},), one label per image; got {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"image_labels must be an integer array; got dtype {labels.dtype}.")
    # Raw ids (e.g. CUHK-PEDES person ids) may be any integers; only equality matters.
    return np.unique(labels, return_inverse=True)[1].astype(np.int32)


def _ranks(
    img_emb, cap_emb, caps_per_image, cap_to_img, *, need_captions, block_size=None,
    image_labels=None, scorer=None,
):
    """Validated inputs -> (i2t ranks int64 ``[N]``, t2i ranks int64 ``[M]``) on the host.

    ``image_labels`` (int ``[N]`` or None) changes the t2i ranks only (see ``t2i``).
    """
    if scorer is None:
        img_emb, cap_emb = _check_embeddings(img_emb, cap_emb)
    else:
        img_emb, cap_emb = jax.tree.map(jnp.asarray, (img_emb, cap_emb))
    n, m = scoring.rows(img_emb), scoring.rows(cap_emb)
    c2i = _caption_images(n, m, caps_per_image, cap_to_img)
    labels = _label_ids(n, image_labels)
    if need_captions:
        uncaptioned = np.flatnonzero(np.bincount(c2i, minlength=n) == 0)
        if uncaptioned.size:
            raise ValueError(
                f"i2t needs at least one caption per image; {uncaptioned.size} of {n} images "
                f"have none (first: {uncaptioned[:5].tolist()}). Drop them from img_emb, or "
                "use t2i alone, where they only act as distractors."
            )
    block = min(BLOCK_SIZE if block_size is None else int(block_size), m)
    if block < 1:
        raise ValueError(f"block_size must be positive; got {block_size}.")
    if scorer is None:
        dtype = jnp.promote_types(jnp.result_type(img_emb, cap_emb), jnp.float32)
        img_emb, cap_emb = img_emb.astype(dtype), cap_emb.astype(dtype)
    ranks_i2t, ranks_t2i, finite = _ranks_jit(
        img_emb, cap_emb, jnp.asarray(c2i), None if labels is None else jnp.asarray(labels),
        block=block, scorer=scoring.DotScorer() if scorer is None else scorer,
    )
    if not bool(finite):
        # A NaN score compares False with everything, which would silently give rank 0.
        raise ValueError("img_emb and cap_emb must be finite (found NaN or inf).")
    return np.asarray(ranks_i2t, np.int64), np.asarray(ranks_t2i, np.int64)


@functools.partial(jax.jit, static_argnames=("block", "scorer"))
def _ranks_jit(img, cap, c2i, labels, *, block, scorer):
    """Both rank vectors from one block-wise pass over the captions.

    Args:
      img: ``[N, D]`` (or the scorer's image sets); cap: ``[M, D]`` (or its caption sets);
        c2i: int32 ``[M]`` in ``[0, N)``.
      labels: int32 ``[N]`` image labels for the t2i positives, or None (own image only).
      block: captions per block (static). scorer: an ``itm_jax.scoring`` scorer (static).

    Returns:
      ``(i2t [N], t2i [M], finite)``: int32 ranks and whether all inputs were finite.
    """
    n = scoring.rows(img)

    # Best own-caption score per image, needed as the i2t threshold before the pass starts.
    # These own scores come from an elementwise reduction, not from the block matmul, so they
    # may differ from the matmul's value of the same pair in the last bit. The i2t count below
    # therefore skips every own caption (the not_own mask): an own caption cannot outrank its
    # image's best own caption through rounding, whatever order either sum was taken in. A
    # non-own caption within an ulp of the threshold is a genuine float tie either way.
    def own_block(carry, cap_b, c2i_b):  # gathers [B, D] image rows at a time, never [M, D]
        return carry, scorer.pairs(scoring.take(img, c2i_b), cap_b)  # [B]

    _, own = _over_blocks(own_block, (), cap, c2i, block)  # [M]
    best_own = jax.ops.segment_max(own, c2i, num_segments=n)  # [N]
    rows = lax.broadcasted_iota(jnp.int32, (n, 1), 0)  # [N, 1]

    def score_block(i2t_acc, cap_b, c2i_b):  # [N], [B, D], [B] -> [N], t2i ranks [B]
        # [N, B], the only score block alive; at HIGHEST precision (no TF32 / bf16 passes on
        # accelerators: ranks hinge on ulps).
        s = scorer(img, cap_b)
        not_own = rows != c2i_b[None, :]  # [N, B]
        i2t_count = jnp.sum((s > best_own[:, None]) & not_own, axis=1, dtype=jnp.int32)
        # t2i compares every image with the own image's entry of this very block, so the own
        # image equals itself bit for bit and never counts.
        if labels is None:
            own_b = jnp.take_along_axis(s, c2i_b[None, :], axis=0)  # [1, B]
        else:  # the best image of the caption's label, from the same block entries
            same = labels[:, None] == labels[c2i_b][None, :]  # [N, B] positives per caption
            own_b = jnp.max(jnp.where(same, s, -jnp.inf), axis=0, keepdims=True)  # [1, B]
        # No positive scores above own_b (their maximum): only negatives are counted.
        t2i_rank = jnp.sum(s > own_b, axis=0, dtype=jnp.int32)  # [B]
        return i2t_acc + i2t_count, t2i_rank

    i2t_ranks, t2i_ranks = _over_blocks(score_block, jnp.zeros((n,), jnp.int32), cap, c2i, block)
    # A non-finite caption entry makes its own score NaN or inf, so `own` covers every caption
    # without another [M, D] pass; images are checked directly as some may have no caption.
    finite = functools.reduce(jnp.logical_and, [jnp.isfinite(x).all() for x in jax.tree.leaves(img)],
                              jnp.isfinite(own).all())
    return i2t_ranks, t2i_ranks, finite


def _over_blocks(fn, carry, cap, c2i, block):
    """``fn(carry, cap_b, c2i_b) -> (carry, y_b [B])`` over consecutive caption blocks.

    ``M // block`` full blocks run in a ``lax.scan`` that slices ``cap`` (an array or a set) in
    place (reshaping it into blocks would copy all of it), then the ragged tail, if any, as one
    smaller block; so there are no padded captions to mask. Returns the final carry and the
    ``y_b`` concatenated.
    """
    m = scoring.rows(cap)
    n_full = m // block

    def body(carry, k):
        start = k * block
        cap_b = jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, start, block), cap)
        return fn(carry, cap_b, lax.dynamic_slice_in_dim(c2i, start, block))

    carry, ys = lax.scan(body, carry, jnp.arange(n_full))
    ys = [ys.reshape(n_full * block)]
    if n_full * block < m:
        tail = slice(n_full * block, None)
        carry, y_tail = fn(carry, scoring.take(cap, tail), c2i[tail])
        ys.append(y_tail)
    return carry, jnp.concatenate(ys)


PROTOCOLS = ("all", "coco", "t2i")


def protocol_metrics(img, cap, cap_to_img, protocol: str, *,
                     image_labels=None, scorer=None) -> dict[str, float]:
    """Test metrics of a dataset's protocol.

    ``all``: every image and caption at once (Flickr30K 1K, validation). ``coco``: the 5-fold
    1K average (``1k/...``) and the full 5K set (``5k/...``). ``t2i``: text-to-image only
    (CUHK-PEDES reports R@1/R@10 of caption queries); with ``image_labels`` (int ``[N]``, the
    source's per-image identities) any image of the caption's person is a hit, as the PEDES
    protocol counts. The other protocols ignore ``image_labels``. ``scorer``: as in ``i2t``.
    """
    if protocol == "all":
        return recall_metrics(img, cap, cap_to_img=cap_to_img, scorer=scorer)
    if protocol == "coco":
        folds = coco_1k_5fold(img, cap, scorer=scorer)
        full = recall_metrics(img, cap, cap_to_img=cap_to_img, scorer=scorer)
        return {**{f"1k/{k}": v for k, v in folds.items()}, **{f"5k/{k}": v for k, v in full.items()},
                "rsum": folds["rsum"]}
    if protocol == "t2i":
        ranks = t2i(img, cap, cap_to_img=cap_to_img, image_labels=image_labels, scorer=scorer)
        return {f"t2i_{k}": float(v) for k, v in ranks.items() if k != "ranks"} | {
            "rsum": ranks["r1"] + ranks["r5"] + ranks["r10"]}
    raise ValueError(f"Unknown eval_protocol={protocol!r}; valid: {', '.join(PROTOCOLS)}.")


def split_metrics(exp, img: np.ndarray, cap: np.ndarray, split: str) -> dict[str, float]:
    """Metrics of a split's embeddings: the config's protocol on test, ``all`` otherwise
    (``exp``: an ``itm_jax.experiment.Experiment``)."""
    src = exp.sources[split]
    protocol = exp.config.eval_protocol if split == "test" else "all"
    # Person identities where the source has them (CUHK-PEDES), for the t2i protocol.
    return protocol_metrics(img, cap, src.cap_to_img, protocol,
                            image_labels=getattr(src, "labels", None), scorer=exp.scorer)
