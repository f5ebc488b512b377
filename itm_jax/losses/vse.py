"""VSE hinge losses: sum of hinges (SH, VSE0) and max of hinges (MH, VSE++).

Faghri et al., "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives", BMVC 2018,
Eq. 3 (SH) and Eq. 5 (MH); written out in IMC paper Eq. 1-2. With the margin ``m``:

    a_ij = [m + S_ij - S_ii]_+   (image i anchor, caption j negative)
    b_ij = [m + S_ij - S_jj]_+   (caption j anchor, image i negative)

positives masked to 0. These are also the online terms of IMC, ConVSE++ and AOQ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from itm_jax.losses import _common as c


def positives_from_ids(image_ids_rows, image_ids_cols) -> jax.Array:
    """Bool ``[Bi, Bt]``: True where row image id equals the caption's image id.

    With it, two captions of one image in the same batch are never negatives of each other (the
    authors' diagonal-only convention treats them as negatives).

    Args:
      image_ids_rows: ``[Bi]`` integer image ids of the rows (images).
      image_ids_cols: ``[Bt]`` integer image ids of the columns (the captions' images).
    """
    rows, cols = jnp.asarray(image_ids_rows), jnp.asarray(image_ids_cols)
    if rows.ndim != 1 or cols.ndim != 1:
        raise ValueError(
            f"positives_from_ids expects 1-D id vectors; got {rows.shape} and {cols.shape}."
        )
    return rows[:, None] == cols[None, :]


def _hinges(scores, margin, positives):
    scores = c.check_matrix(scores)
    pos = c.positive_mask(scores, positives)
    diag = jnp.diagonal(scores)
    a = c.hinge(margin + scores - diag[:, None], ~pos)  # [B, B] image anchors (rows)
    b = c.hinge(margin + scores - diag[None, :], ~pos)  # [B, B] caption anchors (columns)
    return a, b


def sum_of_hinges(
    scores, *, margin: float = 0.2, positives=None, reduction: str = "sum", with_aux: bool = False
):
    """SH / VSE0 loss, ``sum_ij a_ij + sum_ij b_ij`` (VSE++ Eq. 3; IMC paper Eq. 1).

    Args:
      scores: ``[B, B]`` similarities, pair k = ``(image_k, caption_k)``.
      margin: hinge margin ``m``.
      positives: optional bool ``[B, B]`` (see ``positives_from_ids``); default the diagonal.
      reduction: ``"sum"`` (authors' code) or ``"mean"`` (each direction divided by B).
      with_aux: also return ``{"i2t", "t2i"}``, the image-anchor and caption-anchor parts.

    Returns:
      Scalar loss (float32 for half-precision inputs), or ``(loss, aux)``.
    """
    c.check_reduction(reduction)
    a, b = _hinges(scores, margin, positives)
    i2t, t2i = c.reduce(a.sum(axis=1), reduction), c.reduce(b.sum(axis=0), reduction)
    loss = i2t + t2i
    return (loss, {"i2t": i2t, "t2i": t2i}) if with_aux else loss


def max_of_hinges(
    scores, *, margin: float = 0.2, positives=None, reduction: str = "sum", with_aux: bool = False
):
    """MH / VSE++ loss, ``sum_i max_j a_ij + sum_j max_i b_ij`` (VSE++ Eq. 5; IMC paper Eq. 2).

    With ``positives``, the anchor's positive score is its batch pair ``S_kk`` and the other
    positives are excluded from its negatives. An anchor without negatives (B=1) contributes 0.
    Exact ties among hardest negatives split the gradient (``jnp.max``); the authors' PyTorch
    code routes it to the first index. Both are the same loss.

    Args:
      scores: ``[B, B]`` similarities, pair k = ``(image_k, caption_k)``.
      margin: hinge margin ``m``.
      positives: optional bool ``[B, B]``; default the diagonal.
      reduction: ``"sum"`` (authors' code) or ``"mean"`` (each direction averaged over B).
      with_aux: also return ``{"i2t", "t2i"}``.

    Returns:
      Scalar loss, or ``(loss, aux)``.
    """
    c.check_reduction(reduction)
    scores = c.check_matrix(scores)
    h = c.hardest_negatives(scores, c.positive_mask(scores, positives))
    i2t = c.reduce(c.hinge(margin + h.row - h.pos, h.row_has), reduction)
    t2i = c.reduce(c.hinge(margin + h.col - h.pos, h.col_has), reduction)
    loss = i2t + t2i
    return (loss, {"i2t": i2t, "t2i": t2i}) if with_aux else loss
