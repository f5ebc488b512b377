"""VSRN's caption-generation term (Li et al., "Visual Semantic Reasoning for Image-Text
Matching", ICCV 2019, Sec. 3.4): the negative log-likelihood of regenerating each caption from
the image's refined regions, a training term beside the ranking loss (weight 1 in the authors'
recipe). Its inputs come from ``itm_jax.models.vsrn.CaptionGenerator`` and ``caption_targets``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def caption_generation(log_probs: jax.Array, targets: jax.Array, mask: jax.Array, *,
                       with_aux: bool = False):
    """The authors' ``LanguageModelCriterion``: ``-sum_{b,t} log_probs[b, t, targets[b, t]]
    * mask[b, t] / B``, a scalar. It divides by the batch size B, not by the number of
    tokens, so longer captions weigh more.

    Args:
      log_probs: ``[B, T, V]`` from ``CaptionGenerator``.
      targets: ``[B, T]`` integer word ids. mask: ``[B, T]``, 1 where the target counts.
      with_aux: also return ``{"per_token": the loss per counted target}``.
    """
    log_probs, targets, mask = jnp.asarray(log_probs), jnp.asarray(targets), jnp.asarray(mask)
    if log_probs.ndim != 3 or targets.shape != log_probs.shape[:2] or mask.shape != targets.shape:
        raise ValueError(
            f"caption_generation expects log_probs [B, T, V] with targets and mask [B, T]; got "
            f"{log_probs.shape}, {targets.shape} and {mask.shape}. Make them with "
            "caption_targets."
        )
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [B, T]
    mask = mask.astype(picked.dtype)
    total = -jnp.sum(picked * mask)
    loss = total / log_probs.shape[0]
    if with_aux:
        return loss, {"per_token": total / jnp.maximum(jnp.sum(mask), 1.0)}
    return loss
