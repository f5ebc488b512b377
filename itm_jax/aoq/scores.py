"""AOQ round 2's offline scores inside the train step (Chen, Deng and Luo, ECCV 2020, Eq. 3-4)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from itm_jax import scoring
from itm_jax.similarity import l2_normalize


def offline_rows(batch: Mapping[str, jax.Array]) -> tuple[dict, dict]:
    """The offline items' images ``[i_off; i_tilde]`` and captions ``[t_off; t_tilde]``
    (``2B`` rows each, fields named as the batch's), for the model to embed with the batch."""
    def rows(roles, keys):
        return {k: jnp.concatenate([batch[f"{r}_{k}"] for r in roles])
                for k in keys if f"{roles[0]}_{k}" in batch}

    return (rows(("i_off", "i_tilde"), ("image", "image_feat")),
            rows(("t_off", "t_tilde"), ("tokens", "length")))


def offline_scores(scorer, img, txt, imgs, caps) -> dict[str, jax.Array]:
    """AOQ's offline score vectors ``[B]`` (scored as the batch scores are), the inputs of
    ``itm_jax.losses.aoq.aoq_loss``: ``s_i_toff``, ``s_ioff_t``, ``s_ioff_toff``,
    ``s_itilde_ttilde``.

    ``scorer``: the model's (``itm_jax.scoring``; None: cosines of the features, which are
    normalised here); ``img, txt``: the batch pairs' ``(i_k, t_k)`` normalised embeddings
    ``[B, D]`` or sets; ``imgs``, ``caps``: the embedded ``offline_rows``, ``[i_off; i_tilde]``
    and ``[t_off; t_tilde]`` (``2B`` rows, features or sets), embedded in the batch's forward
    pass (``itm_jax.training.step.model_outputs``).
    """
    if scorer is None:
        scorer, imgs, caps = scoring.DotScorer(), l2_normalize(imgs), l2_normalize(caps)
    b = scoring.rows(img)
    i_off, i_tilde = scoring.take(imgs, slice(0, b)), scoring.take(imgs, slice(b, None))
    t_off, t_tilde = scoring.take(caps, slice(0, b)), scoring.take(caps, slice(b, None))
    return {
        "s_i_toff": scorer.pairs(img, t_off),
        "s_ioff_t": scorer.pairs(i_off, txt),
        "s_ioff_toff": scorer.pairs(i_off, t_off),
        "s_itilde_ttilde": scorer.pairs(i_tilde, t_tilde),
    }
