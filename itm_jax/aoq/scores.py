"""AOQ round 2's offline scores inside the train step (Chen, Deng and Luo, ECCV 2020, Eq. 3-4)."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from itm_jax.similarity import l2_normalize


def offline_scores(model, batch: Mapping[str, jax.Array], img_emb, txt_emb) -> dict[str, jax.Array]:
    """AOQ's offline score vectors ``[B]`` (cosine, like the batch scores), the inputs of
    ``itm_jax.losses.aoq.aoq_loss``: ``s_i_toff``, ``s_ioff_t``, ``s_ioff_toff``,
    ``s_itilde_ttilde``.

    ``model``: the ``DualEncoder``; ``img_emb, txt_emb [B, D]``: the normalised embeddings of the
    batch pairs ``(i_k, t_k)``; ``batch``: the offline items' ``{role}_{field}`` fields
    (``itm_jax.aoq.sampler.OfflineItems``). The offline items are embedded by the same model in
    two calls of ``2B`` rows.
    """
    def rows(roles, keys):
        return {k: jnp.concatenate([batch[f"{r}_{k}"] for r in roles])
                for k in keys if f"{roles[0]}_{k}" in batch}

    b = img_emb.shape[0]
    imgs = l2_normalize(model.embed_images(rows(("i_off", "i_tilde"), ("image", "image_feat"))))
    caps = l2_normalize(model.embed_captions(rows(("t_off", "t_tilde"), ("tokens", "length"))))
    i_off, i_tilde, t_off, t_tilde = imgs[:b], imgs[b:], caps[:b], caps[b:]
    return {
        "s_i_toff": jnp.sum(img_emb * t_off, -1),
        "s_ioff_t": jnp.sum(i_off * txt_emb, -1),
        "s_ioff_toff": jnp.sum(i_off * t_off, -1),
        "s_itilde_ttilde": jnp.sum(i_tilde * t_tilde, -1),
    }
