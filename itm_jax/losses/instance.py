"""Instance loss and the dual-path ranking loss (Zheng et al., "Dual-Path Convolutional
Image-Text Embeddings with Instance Loss", ACM TOMM 2020; authors' code is MatConvNet).

The paper's objective is ``l1 * rank + l2 * L_visual + l3 * L_textual``; the weights per
training stage live in the configs, not here.
"""

from __future__ import annotations

import jax.numpy as jnp

from itm_jax.losses import _common as c
from itm_jax.losses.vse import max_of_hinges


def instance_loss(img_logits, txt_logits, labels, *, reduction: str = "mean", with_aux: bool = False):
    """``L_visual + L_textual`` (Eq. 5-8): softmax cross-entropy of both branches' logits.

    The logits come from one classifier with bias, ``features @ W_share + b``, shared by the
    two branches, with one class per training image (its caption group).

    Args:
      img_logits: ``[B, C]`` image-branch logits. txt_logits: ``[B, C]`` text-branch logits.
      labels: ``[B]`` integer instance ids in ``[0, C)``.
      reduction: ``"mean"`` or ``"sum"`` (the MatConvNet code sums over the batch).
      with_aux: also return ``{"visual", "textual"}``.
    """
    c.check_reduction(reduction)
    img_logits, txt_logits = c.as_float(img_logits), c.as_float(txt_logits)
    if img_logits.ndim != 2 or img_logits.shape != txt_logits.shape:
        raise ValueError(
            f"instance_loss expects img_logits and txt_logits of the same shape [B, C]; got "
            f"{img_logits.shape} and {txt_logits.shape}."
        )
    labels = c.check_labels(labels, img_logits.shape[0])
    visual = c.reduce(c.cross_entropy(img_logits, labels), reduction)
    textual = c.reduce(c.cross_entropy(txt_logits, labels), reduction)
    loss = visual + textual
    return (loss, {"visual": visual, "textual": textual}) if with_aux else loss


def dual_path_ranking(
    scores, *, margin: float = 1.0, positives=None, reduction: str = "mean", with_aux: bool = False
):
    """Dual-path ranking loss (Eq. 4) on L2-normalised features, hardest in-batch negatives.

    Per batch pair k: ``[margin - (S_kk - max_{j neg} S_kj)]_+ + [margin - (S_kk - max_{i neg}
    S_ik)]_+``, which is exactly the max-of-hinges loss with margin 1 (the authors' stage-II
    network file). ``reduction="mean"`` divides the sum over k by B; the authors sum
    (``"sum"``) and mine the image anchor's negative among 256 random captions instead of the
    batch.

    Args:
      scores: ``[B, B]`` cosine similarities. margin: 1.0 in the authors' code.
      positives: optional bool ``[B, B]``; default the diagonal.
      reduction: ``"mean"`` or ``"sum"``. with_aux: also return ``{"i2t", "t2i"}``.
    """
    return max_of_hinges(
        scores, margin=margin, positives=positives, reduction=reduction, with_aux=with_aux
    )
