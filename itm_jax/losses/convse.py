"""Contrastive VSE losses (Jain et al., "ConVSE: Contrastive Visual-Semantic Embeddings";
authors' code anuragjain96/ConVsepp): the sum-of-negatives loss ConVSE (l_CSN), the
max-negative loss ConVSE++ (l_CMN), and the multimodal NT-Xent baseline (MVN).

All are computed from ``log_softmax`` / hinges, never from ``exp`` of raw logits: the
authors' exp/log form overflows in float32 for ``tau <= 0.01``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from itm_jax.losses import _common as c
from itm_jax.losses.vse import max_of_hinges


def _multi_positive_nll(logp: jax.Array, pos: jax.Array, axis: int) -> jax.Array:
    """Mean over anchors (with >= 1 positive) of the mean ``-log p`` of their positives."""
    count = pos.sum(axis=axis)
    nll = -jnp.sum(jnp.where(pos, logp, 0.0), axis=axis) / jnp.maximum(count, 1)
    has = count > 0
    return jnp.sum(jnp.where(has, nll, 0.0)) / jnp.maximum(has.sum(), 1)


def contrastive_sum_negatives(scores, *, tau: float = 0.1, positives=None, with_aux: bool = False):
    """ConVSE loss l_CSN (ConVSE paper Eq. 6-8): InfoNCE over the batch in both directions.

    ``mean_i[-log softmax_j(S_ij / tau)[i]] + mean_j[-log softmax_i(S_ij / tau)[j]]``; the
    denominator includes the positive. With ``positives`` (several per row, e.g. from
    ``positives_from_ids``), each anchor takes the mean of ``-log p`` over its positives, the
    denominator still spanning the whole row (column), and anchors without a positive are left
    out of the mean; then ``scores`` may be ``[Bi, Bt]``.

    Args:
      scores: ``[B, B]`` (or ``[Bi, Bt]`` with explicit positives) similarities.
      tau: temperature (paper: 0.1).
      positives: optional bool mask of the shape of ``scores``; default the diagonal.
      with_aux: also return ``{"i2t", "t2i"}``.
    """
    scores = c.check_matrix(scores, square=positives is None)
    pos = c.positive_mask(scores, positives)
    logits = scores / tau
    i2t = _multi_positive_nll(jax.nn.log_softmax(logits, axis=1), pos, axis=1)
    t2i = _multi_positive_nll(jax.nn.log_softmax(logits, axis=0), pos, axis=0)
    loss = i2t + t2i
    return (loss, {"i2t": i2t, "t2i": t2i}) if with_aux else loss


def contrastive_max_negative(
    scores, *, tau: float = 0.1, margin: float = 0.2, positives=None, with_aux: bool = False
):
    """ConVSE++ loss l_CMN (ConVSE paper Eq. 12-14), hardest negative only.

    ``mean_i [(max_{j neg} S_ij + m - S_ii) / tau]_+ + mean_j [(max_{i neg} S_ij + m - S_jj)
    / tau]_+``. The authors' exp/log form equals this exactly, i.e. the MH loss averaged over
    anchors and divided by tau, which is how it is computed (stable for any tau).

    Args:
      scores: ``[B, B]`` similarities. tau: temperature (0.1). margin: 0.2.
      positives: optional bool ``[B, B]``; default the diagonal.
      with_aux: also return ``{"i2t", "t2i"}``.
    """
    loss, aux = max_of_hinges(
        scores, margin=margin, positives=positives, reduction="mean", with_aux=True
    )
    loss, aux = loss / tau, {k: v / tau for k, v in aux.items()}
    return (loss, aux) if with_aux else loss


def multimodal_nce(img_emb, txt_emb, *, tau: float = 0.1, with_aux: bool = False):
    """MVN baseline (the ConVSE code's ``SimCLR`` option): NT-Xent over ``z = [img; txt]``.

    For each of the 2B anchors a with partner p (its pair in the other modality):
    ``-log(exp(z_a . z_p / tau) / sum_{k != a} exp(z_a . z_k / tau))``, mean over anchors.
    Same-modality items are negatives too. Embeddings are used as given (normalise first).

    Args:
      img_emb: ``[B, D]``. txt_emb: ``[B, D]``. tau: temperature (0.1).
      with_aux: also return ``{"i2t", "t2i"}`` (means over image and caption anchors).
    """
    img_emb, txt_emb = c.as_float(img_emb), c.as_float(txt_emb)
    if img_emb.ndim != 2 or img_emb.shape != txt_emb.shape:
        raise ValueError(
            f"multimodal_nce expects img_emb and txt_emb of the same shape [B, D]; got "
            f"{img_emb.shape} and {txt_emb.shape}."
        )
    b = img_emb.shape[0]
    z = jnp.concatenate([img_emb, txt_emb], axis=0)  # [2B, D]
    logits = (z @ z.T) / tau  # [2B, 2B]
    logits = jnp.where(jnp.eye(2 * b, dtype=bool), -jnp.inf, logits)
    partner = jnp.roll(jnp.arange(2 * b), b)
    nll = jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(2 * b), partner]  # [2B]
    i2t, t2i = nll[:b].mean(), nll[b:].mean()
    loss = nll.mean()
    return (loss, {"i2t": i2t, "t2i": t2i}) if with_aux else loss
