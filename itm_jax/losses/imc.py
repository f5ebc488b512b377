"""Intra-Modal Constraint loss (Chen et al., "Intra-Modal Constraint Loss for Image-Text
Retrieval", ICIP 2022; authors' code CanonChen/IMC).

Eq. 3: ``L = MH(scores) + IMC(T) + IMC(I)``; Eq. 4 penalises intra-modal non-pairs whose
distance lies between two thresholds, pushing same-modality items apart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from itm_jax import similarity
from itm_jax.losses import _common as c
from itm_jax.losses.vse import max_of_hinges

VARIANTS = ("reference", "paper")


def _row_normalize(d: jax.Array) -> jax.Array:
    """``d / max(||d_n||_2, 1e-12)`` per row, as ``F.normalize`` in the authors' code."""
    return d / jnp.maximum(similarity.safe_sqrt(jnp.sum(jnp.square(d), axis=1, keepdims=True)), 1e-12)


def _imc_reference(x, delta, mu_down, mu_up, chunk_size):
    """Authors' code: sum of masked (row-normalised) distances over ordered pairs, / B."""
    b = x.shape[0]
    if delta == "cosine":
        sim = x @ x.T - jnp.eye(b, dtype=x.dtype)
        keep = jax.lax.stop_gradient((sim > mu_up) & (sim < 1.0 - mu_down))
        # The authors keep the similarity itself (not 1 - cos) for the cosine case.
        return jnp.sum(jnp.where(keep, sim, 0.0)) / b
    r = _row_normalize(similarity.pairwise_distances(x, delta, chunk_size=chunk_size))
    # Thresholds come from row 0 only, at Python-rounded (half-to-even) ranks, as the authors.
    lo_idx, hi_idx = round(mu_down * b), round(mu_up * b)
    if not 0 <= lo_idx <= hi_idx < b:
        raise ValueError(
            f"IMC thresholds need 0 <= round(mu_down*B) <= round(mu_up*B) < B; got mu_down="
            f"{mu_down}, mu_up={mu_up}, B={b}."
        )
    row0 = jnp.sort(jax.lax.stop_gradient(r[0]))
    keep = (row0[lo_idx] < r) & (r < row0[hi_idx])
    return jnp.sum(jnp.where(jax.lax.stop_gradient(keep), r, 0.0)) / b


def _imc_paper(x, delta, mu_down, mu_up, chunk_size):
    """Eq. 4: sum over ordered pairs n != m of delta inside (mu_down, mu_up)."""
    d = similarity.pairwise_distances(x, delta, chunk_size=chunk_size)
    off_diag = ~jnp.eye(x.shape[0], dtype=bool)
    keep = jax.lax.stop_gradient(off_diag & (mu_down < d) & (d < mu_up))
    return jnp.sum(jnp.where(keep, d, 0.0))


def imc(
    scores,
    img_emb,
    txt_emb,
    *,
    margin: float = 0.2,
    lam: float = 1.0,
    delta: str = "l1",
    mu_down: float = 0.05,
    mu_up: float = 0.5,
    variant: str = "reference",
    positives=None,
    chunk_size: int | None = None,
    with_aux: bool = False,
):
    """IMC loss: ``max_of_hinges(scores) + lam * IMC(txt_emb) + lam * IMC(img_emb)`` (Eq. 3).

    ``variant="reference"`` (default, authors' code), for the B rows of X:
      - cosine: ``C = X X^T - I``; ``IMC = sum(C * [mu_up < C < 1 - mu_down]) / B``.
      - l1 / l2 / msd: distances ``D``, row-normalised ``R = D / ||D_n||``; thresholds ``lo, hi``
        = sorted ``R[0]`` at ranks ``round(mu_down*B)``, ``round(mu_up*B)``;
        ``IMC = sum(R * [lo < R < hi]) / B``.
    ``variant="paper"`` (Eq. 4): ``IMC = sum_{n != m} delta_nm * [mu_down < delta_nm < mu_up]``
    with the plain distance (cosine distance ``1 - cos``).
    Masks and thresholds carry no gradient. Pairwise L1/L2/MSD are computed in row chunks
    (``similarity.pairwise_distances``), so memory is O(B * chunk * D).

    Args:
      scores: ``[B, B]`` image-caption similarities.
      img_emb: ``[B, D]`` image embeddings (already L2-normalised; not normalised here).
      txt_emb: ``[B, D]`` caption embeddings (same).
      margin: MH margin. lam: weight of both IMC terms (Table 3: 1).
      delta: ``"l1"`` (best in Table 3), ``"l2"``, ``"msd"`` or ``"cosine"``.
      mu_down, mu_up: thresholds (paper: 0.05, 0.5).
      variant: ``"reference"`` or ``"paper"``.
      positives: optional bool ``[B, B]`` for the MH term.
      chunk_size: rows per block of the pairwise distances (default: automatic).
      with_aux: also return ``{"mh", "imc_img", "imc_txt"}`` (IMC terms before ``lam``).

    Returns:
      Scalar loss, or ``(loss, aux)``.
    """
    c.check_choice(variant, VARIANTS, "variant")
    c.check_choice(delta, similarity.DISTANCES, "delta")
    scores = c.check_matrix(scores)
    img_emb, txt_emb = c.as_float(img_emb), c.as_float(txt_emb)
    b = scores.shape[0]
    if img_emb.ndim != 2 or img_emb.shape[0] != b or txt_emb.shape != img_emb.shape:
        raise ValueError(
            f"imc expects img_emb and txt_emb of shape [B, D] with B={b} (from scores "
            f"{scores.shape}); got {img_emb.shape} and {txt_emb.shape}."
        )
    term = _imc_reference if variant == "reference" else _imc_paper
    mh = max_of_hinges(scores, margin=margin, positives=positives)
    imc_img = term(img_emb, delta, mu_down, mu_up, chunk_size)
    imc_txt = term(txt_emb, delta, mu_down, mu_up, chunk_size)
    loss = mh + lam * (imc_txt + imc_img)
    return (loss, {"mh": mh, "imc_img": imc_img, "imc_txt": imc_txt}) if with_aux else loss
