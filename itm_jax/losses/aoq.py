"""Adaptive Offline Quintuplet loss (Chen et al., "Adaptive Offline Quintuplet Loss for
Image-Text Matching", ECCV 2020; authors' code sunnychencool/AOQ).

The available text of Eq. 5 is garbled; this follows the authors' code (``docs/losses.md``,
"AOQ"). The offline negatives come from the mining job; their scores are computed by the train
step and passed in as ``[B]`` vectors, so the loss stays a pure function of scores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from itm_jax.losses import _common as c

VARIANTS = ("online", "offtri", "offquin", "adaptive")


def aoq_loss(
    scores,
    s_i_toff=None,
    s_ioff_t=None,
    s_ioff_toff=None,
    s_itilde_ttilde=None,
    *,
    variant: str = "adaptive",
    margin_online: float = 0.2,
    margin_offline: float = 0.0,
    alpha: float = 0.3,
    beta: float = 1.5,
    positives=None,
    detach_weights: bool = False,
    reduction: str = "sum",
    with_aux: bool = False,
):
    """AOQ loss over the batch pairs k, positive score ``P_k = S_kk``.

    Online hinges (= MH terms): ``h_i = [g1 + max_{j neg} S_kj - P]_+``,
    ``h_t = [g1 + max_{i neg} S_ik - P]_+``. Offline hinges ``[g2 + s - P]_+`` for
    ``s_i_toff = S(i_k, t_off)``, ``s_ioff_t = S(i_off, t_k)`` (Eq. 3, offline triplet) and
    ``s_ioff_toff = S(i_off, t_off)``, ``s_itilde_ttilde = S(i~, t~)`` (Eq. 4, quintuplet).
    Adaptive weights (Eq. 5, authors' code): ``w_i = beta - (s_i_toff - on_i) / alpha``,
    ``w_t = beta - (s_ioff_t - on_t) / alpha``, not clamped and differentiated through unless
    ``detach_weights``.

    - ``"online"``: ``h_i + h_t`` (round 1; equals ``max_of_hinges``).
    - ``"offtri"``: online + the two Eq. 3 offline hinges.
    - ``"offquin"``: offtri + the two Eq. 4 hinges.
    - ``"adaptive"`` (default): offquin with ``h_i, h_t`` replaced by ``w_i h_i, w_t h_t``.

    Args:
      scores: ``[B, B]`` batch similarities.
      s_i_toff, s_ioff_t, s_ioff_toff, s_itilde_ttilde: ``[B]`` offline scores (unused and may
        be None for ``"online"``).
      variant: one of ``VARIANTS``. margin_online: g1 (0.2). margin_offline: g2 (0).
      alpha, beta: adaptive weight parameters (0.3, 1.5).
      positives: optional bool ``[B, B]`` for the online negatives; default the diagonal.
      detach_weights: stop the gradient through ``w_i, w_t``.
      reduction: ``"sum"`` over k (authors' code) or ``"mean"``.
      with_aux: also return ``{"online", "offline"}`` and, for adaptive, ``{"w_i", "w_t"}``
        batch means.
    """
    c.check_choice(variant, VARIANTS, "variant")
    c.check_reduction(reduction)
    scores = c.check_matrix(scores)
    b = scores.shape[0]
    h = c.hardest_negatives(scores, c.positive_mask(scores, positives))
    h_i = c.hinge(margin_online + h.row - h.pos, h.row_has)
    h_t = c.hinge(margin_online + h.col - h.pos, h.col_has)
    aux = {}
    if variant == "online":
        online, offline = h_i + h_t, jnp.zeros_like(h_i)
    else:
        names = ("s_i_toff", "s_ioff_t", "s_ioff_toff", "s_itilde_ttilde")
        given = (s_i_toff, s_ioff_t, s_ioff_toff, s_itilde_ttilde)
        used = 2 if variant == "offtri" else 4
        off = []
        for name, v in zip(names[:used], given[:used]):
            if v is None:
                raise ValueError(f"aoq_loss(variant={variant!r}) needs {name}; got None.")
            off.append(c.check_vector(v, b, name))
        offline = sum(c.hinge(margin_offline + s - h.pos) for s in off)
        if variant == "adaptive":
            w_i = beta - (off[0] - h.row) / alpha
            w_t = beta - (off[1] - h.col) / alpha
            if detach_weights:
                w_i, w_t = jax.lax.stop_gradient(w_i), jax.lax.stop_gradient(w_t)
            online = w_i * h_i + w_t * h_t
            aux = {"w_i": w_i.mean(), "w_t": w_t.mean()}
        else:
            online = h_i + h_t
    online, offline = c.reduce(online, reduction), c.reduce(offline, reduction)
    loss = online + offline
    return (loss, {"online": online, "offline": offline, **aux}) if with_aux else loss
