"""Instance loss and the dual-path ranking loss (Zheng et al., "Dual-Path Convolutional
Image-Text Embeddings with Instance Loss", ACM TOMM 2020; authors' code is MatConvNet).

The paper's objective is ``l1 * rank + l2 * L_visual + l3 * L_textual`` (Eq. 9); the weights
per training stage live in the configs (``instance_loss`` takes ``l2 : l3`` as ``image_weight``
and ``text_weight``), not here.
"""

from __future__ import annotations

from itm_jax.losses import _common as c
from itm_jax.losses.vse import max_of_hinges


def instance_loss(
    img_logits,
    txt_logits,
    labels,
    *,
    image_weight: float = 1.0,
    text_weight: float = 1.0,
    reduction: str = "mean",
    with_aux: bool = False,
):
    """``image_weight * L_visual + text_weight * L_textual`` (Eq. 5-8, weighted as in Eq. 9).

    Softmax cross-entropy of both branches' logits against the instance labels. The logits come
    from one classifier with bias, ``features @ W_share + b``, shared by the two branches, with
    one class per training image (its caption group).

    The two weights are Eq. 9's ``lambda_2`` and ``lambda_3`` up to a common factor: the paper
    uses 1:1 in both stages, the authors' stage-II scripts 1:0.1 (COCO, Flickr30K) or 1:0.5
    (CUHK-PEDES) next to a ranking weight of 2. ``image_weight=0`` or ``text_weight=0`` gives
    one branch's term alone, so that a config can weight the two per training stage.

    Args:
      img_logits: ``[B, C]`` image-branch logits. txt_logits: ``[B, C]`` text-branch logits.
      labels: ``[B]`` integer instance ids in ``[0, C)``.
      image_weight: weight of ``L_visual``. text_weight: weight of ``L_textual``.
      reduction: ``"mean"`` or ``"sum"`` (the MatConvNet code sums over the batch).
      with_aux: also return ``{"visual", "textual"}``, both before their weights.
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
    loss = image_weight * visual + text_weight * textual
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
