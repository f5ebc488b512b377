"""Evaluation: retrieval metrics (``metrics``: the VSE++ protocol, COCO 5-fold 1K / 5K,
Flickr30K 1K), embeddings of a split (``embed``) and the HTML report (``report``).

The metric functions are importable from here: ``from itm_jax import evaluation;
evaluation.recall_metrics(img, cap)``.
"""

from itm_jax.evaluation.metrics import (
    coco_1k_5fold,
    i2t,
    protocol_metrics,
    recall_metrics,
    t2i,
)

__all__ = ["coco_1k_5fold", "i2t", "protocol_metrics", "recall_metrics", "t2i"]
