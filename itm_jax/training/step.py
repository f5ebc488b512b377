"""The train state and one optimisation step, as pure functions of arrays.

The step is jitted over a device ``Mesh`` by ``itm_jax.training.loop``: the batch is sharded
along ``data``, parameters and optimiser state are replicated. The model embeds the local rows;
the score matrix ``img @ txt.T`` inside the step is the *global* one (XLA gathers the columns),
so every loss sees the same objective on 1 or 1000 devices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from itm_jax import scoring
from itm_jax.objective import BatchExtra, objective, outputs_from_features, outputs_from_sets


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: Any  # nnx.State of nnx.Param
    rest: Any  # nnx.State of everything else (BatchNorm statistics, RNG counters)
    opt_state: Any


def model_outputs(model, batch: Mapping[str, jax.Array], *, use_id_positives: bool,
                  extras: Sequence[BatchExtra] = ()) -> dict[str, jax.Array]:
    """The objective's inputs for one batch: scores, embeddings, features, logits, and the
    outputs of the loss families' batch extras (``itm_jax.objective.batch_extras``).

    A model with a ``scorer`` outputs sets (``img_set``, ``txt_set``) that it scores itself;
    otherwise the scores are the cosines of its features. The extras' images and captions are
    embedded in the batch's forward pass (``BatchExtra.rows``).
    """
    rows = [extra.rows(batch) for extra in extras]
    out = model(batch, extra_images=_concat([r[0] for r in rows]),
                extra_captions=_concat([r[1] for r in rows]))
    extra_img, extra_txt = out.pop("extra_images", None), out.pop("extra_captions", None)
    ids = {"image_ids": batch["image_id"] if use_id_positives else None,
           "labels": batch.get("label")}
    if "img_set" in out:
        out = outputs_from_sets(out.pop("img_set"), out.pop("txt_set"), model.scorer, **ids, **out)
    else:
        out = outputs_from_features(out.pop("img_feat"), out.pop("txt_feat"), **ids, **out)
    start_img = start_txt = 0
    for extra, (images, captions) in zip(extras, rows, strict=True):
        n_img, n_txt = scoring.rows(images), scoring.rows(captions)
        out.update(extra.outputs(
            model, batch, out, scoring.take(extra_img, slice(start_img, start_img + n_img)),
            scoring.take(extra_txt, slice(start_txt, start_txt + n_txt))))
        start_img, start_txt = start_img + n_img, start_txt + n_txt
    return out


def _concat(parts: Sequence[Mapping[str, jax.Array]]) -> dict[str, jax.Array] | None:
    """The extras' rows of one kind, concatenated field by field (None without extras)."""
    if not parts:
        return None
    return {k: jnp.concatenate([p[k] for p in parts]) for k in parts[0]}


def train_step(state: TrainState, batch, *, graphdef, tx, losses, use_id_positives,
               extras: Sequence[BatchExtra] = ()):
    """One optimisation step; returns ``(state, metrics, finite)``.

    A non-finite loss leaves ``state`` as it was (``finite`` is False); the loop stops the run.
    """

    def loss_fn(params):
        # copy: BatchNorm statistics and RNG counters are updated inside this trace.
        model = nnx.merge(graphdef, params, state.rest, copy=True)
        outputs = model_outputs(model, batch, use_id_positives=use_id_positives, extras=extras)
        total, terms = objective(outputs, losses)
        return total, (terms, nnx.state(model, nnx.Not(nnx.Param)))

    (loss, (terms, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    finite = jnp.isfinite(loss)

    def update(state):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          rest=rest, opt_state=opt_state)

    # A non-finite loss must not reach the parameters: keep the last good state. A cond rather
    # than a select between the old and new states, which is one more pass over the parameters
    # and both Adam moments every step.
    new = jax.lax.cond(finite, update, lambda state: state, state)
    metrics = {"loss": loss, **{f"loss/{k}": v for k, v in terms.items()},
               "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(new.params)}
    return new, metrics, finite
