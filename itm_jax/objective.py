"""A weighted sum of named losses over one batch of model outputs.

Configs describe an objective as a list of ``{name, weight, **hyper-parameters}``
(``config.losses``); combined objectives from the papers (CMPM + CMPC, instance + ranking,
IMC) are such lists, not code paths. This module routes each loss to the model outputs it
reads, so the losses themselves stay pure functions of arrays.

Model outputs (a mapping; a loss only reads the keys it needs):
  ``scores [B, B]``: image-caption similarities of the global batch.
  ``img_emb, txt_emb [B, D]``: L2-normalised embeddings (IMC, MVN).
  ``img_feat, txt_feat [B, D]``: raw features (CMPM, CMPC normalise inside).
  ``labels [B]``: class / identity ids. ``cls_weight [D, C]``: the CMPC classifier.
  ``img_logits, txt_logits [B, C]``: shared-classifier logits (instance loss).
  ``s_i_toff, s_ioff_t, s_ioff_toff, s_itilde_ttilde [B]``: AOQ offline scores.
  ``caption_log_probs [B, T, V]``, ``caption_targets, caption_mask [B, T]``: VSRN's caption
  branch (``model.caption_generator``).
  ``positives [B, B]`` (optional): bool mask, passed to every loss that takes one.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from itm_jax import losses as L
from itm_jax.similarity import l2_normalize

_ARGUMENTS = {
    "sum_of_hinges": ("scores",),
    "max_of_hinges": ("scores",),
    "dual_path_ranking": ("scores",),
    "contrastive_sum_negatives": ("scores",),
    "contrastive_max_negative": ("scores",),
    "imc": ("scores", "img_emb", "txt_emb"),
    "multimodal_nce": ("img_emb", "txt_emb"),
    "cmpm": ("img_feat", "txt_feat", "labels"),
    "cmpc": ("img_feat", "txt_feat", "labels", "cls_weight"),
    "instance_loss": ("img_logits", "txt_logits", "labels"),
    "aoq_loss": ("scores", "s_i_toff", "s_ioff_t", "s_ioff_toff", "s_itilde_ttilde"),
    "caption_generation": ("caption_log_probs", "caption_targets", "caption_mask"),
}


# Loss families whose terms read more than the batch pairs: the factory (``module:function``,
# imported only when a config uses the loss, so losses stay pure array functions) returns the
# family's ``BatchExtra`` for a run config, or None when this config needs nothing extra.
_EXTRAS = {"aoq_loss": "itm_jax.aoq.extra:from_config"}


class BatchExtra(Protocol):
    """Extra training-batch items a loss family needs, and the model outputs made from them.

    The data pipeline adds ``keys`` to every training example (``random_map``), the train step
    passes them to the model, and ``outputs`` (traced inside the step) turns them into outputs
    the family's losses read. Extra images and captions (``rows``) are embedded in the same
    forward pass as the batch's own, so that a model with train-mode BatchNorm (VSRN)
    normalises them all with one set of batch statistics and updates its running statistics
    once per step. The trainer only sees this interface.
    """

    keys: tuple[str, ...]

    def random_map(self, tokenize, transform) -> Any:
        """A ``grain.transforms.RandomMap`` adding ``keys`` to a training example."""

    def rows(self, batch: Mapping[str, jax.Array]) -> tuple[dict, dict]:
        """The extra images and captions to embed, ``({"image" | "image_feat": [E, ...]},
        {"tokens": [F, L], "length": [F]})``, fields named as the batch's."""

    def outputs(self, model, batch: Mapping[str, jax.Array], out: Mapping[str, jax.Array],
                images, captions) -> dict[str, jax.Array]:
        """Extra model outputs from the batch's extra items (``out``: the outputs so far;
        ``images``, ``captions``: the embedded ``rows``, as the model embeds the batch's)."""


def batch_extras(config, train_source) -> list[BatchExtra]:
    """The ``BatchExtra`` of every loss family of ``config.losses`` that declares one."""
    extras = []
    for name in dict.fromkeys(_name(spec) for spec in config.losses):
        if name in _EXTRAS:
            module, function = _EXTRAS[name].split(":")
            extra = getattr(importlib.import_module(module), function)(config, train_source)
            if extra is not None:
                extras.append(extra)
    return extras


def outputs_from_features(
    img_feat: jax.Array,
    txt_feat: jax.Array,
    *,
    image_ids: jax.Array | None = None,
    labels: jax.Array | None = None,
    **extra: jax.Array,
) -> dict[str, jax.Array]:
    """Model outputs of a batch from the two branches' features ``[B, D]``.

    Embeddings are the L2-normalised features and ``scores`` their cosine matrix.
    ``image_ids [B]`` adds ``positives`` (two captions of one image are not negatives);
    ``labels [B]`` the class ids; ``extra`` (e.g. ``img_logits``, ``cls_weight``, AOQ's offline
    scores) is passed through.
    """
    img_emb, txt_emb = l2_normalize(img_feat), l2_normalize(txt_feat)
    out = {
        "img_feat": img_feat,
        "txt_feat": txt_feat,
        "img_emb": img_emb,
        "txt_emb": txt_emb,
        "scores": img_emb @ txt_emb.T,  # [B, B]
        **extra,
    }
    return _with_ids(out, image_ids, labels)


def outputs_from_sets(img_set, txt_set, scorer, *, image_ids: jax.Array | None = None,
                      labels: jax.Array | None = None, **extra: jax.Array) -> dict[str, jax.Array]:
    """Model outputs of a batch from sets: regions ``[B, R, D]`` and words ``{"words": [B, L, D],
    "length": [B]}``, scored by ``scorer`` (``itm_jax.scoring.AttentionScorer``) into the global
    ``scores [B, B]``; the sets stay as ``img_set``, ``txt_set`` (AOQ scores its offline items
    against them). There are no embeddings: losses that read them need a global model.
    ``image_ids``, ``labels`` and ``extra``: as in ``outputs_from_features``."""
    out = {"img_set": img_set, "txt_set": txt_set, "scores": scorer(img_set, txt_set), **extra}
    return _with_ids(out, image_ids, labels)


def _with_ids(out: dict, image_ids, labels) -> dict:
    if image_ids is not None:
        out["positives"] = L.positives_from_ids(image_ids, image_ids)
    if labels is not None:
        out["labels"] = labels
    return out


# Outputs only a model of global embeddings has: a set model's regions and words have no
# single vector per image or caption.
GLOBAL_OUTPUTS = ("img_feat", "txt_feat", "img_emb", "txt_emb")


def required_outputs(loss_specs: Sequence[Mapping]) -> set[str]:
    """The model-output keys an objective reads (so a model computes only those)."""
    return {key for spec in loss_specs for key in _ARGUMENTS[_name(spec)]}


def _name(spec: Mapping) -> str:
    name = spec.get("name")
    L.get(name)  # an unknown name raises the ValueError listing the valid ones
    return name


def objective(
    outputs: Mapping[str, jax.Array], loss_specs: Sequence[Mapping]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``sum_k weight_k * loss_k(outputs)`` and each unweighted term by name.

    Args:
      outputs: model outputs of one global batch (keys above).
      loss_specs: ``[{name, weight=1, label=name, **hyper-parameters}, ...]``; ``label`` names
        the term in the returned metrics when one loss appears twice.

    Returns:
      ``(total, terms)`` with ``terms[label]`` the scalar value of each loss.
    """
    if not loss_specs:
        raise ValueError("The objective needs at least one loss in config.losses.")
    total, terms = jnp.zeros((), jnp.float32), {}
    for spec in loss_specs:
        spec = dict(spec)
        name = _name(spec)
        weight, label = spec.pop("weight", 1.0), spec.pop("label", name)
        del spec["name"]
        missing = [k for k in _ARGUMENTS[name] if k not in outputs]
        if missing and "scores" in outputs and set(missing) <= set(GLOBAL_OUTPUTS):
            raise ValueError(
                f"Loss {name!r} needs global embeddings ({', '.join(missing)}); this model scores "
                "sets of regions and words by attention: use a loss of the score matrix "
                f"({', '.join(n for n, a in _ARGUMENTS.items() if a[0] == 'scores' and len(a) == 1)}).")
        if missing:
            raise ValueError(f"Loss {name!r} needs model outputs {missing}; got {sorted(outputs)}.")
        fn = L.get(name)
        params = inspect.signature(fn).parameters
        valid = [p for p, v in params.items() if v.kind is v.KEYWORD_ONLY and p != "with_aux"]
        unknown = sorted(set(spec) - set(valid))
        if unknown:
            raise ValueError(f"Loss {name!r} has no hyper-parameter {unknown}; valid: {valid}.")
        if "positives" in params and outputs.get("positives") is not None:
            spec.setdefault("positives", outputs["positives"])
        if label in terms:
            raise ValueError(f"Two losses are labelled {label!r}; give each a distinct 'label'.")
        terms[label] = fn(*(outputs[k] for k in _ARGUMENTS[name]), **spec)
        total = total + weight * terms[label]
    return total, terms
