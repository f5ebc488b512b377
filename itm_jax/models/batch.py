"""The batch fields a model reads, and extra rows (AOQ's offline items) embedded with them."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx


def with_rows(batch: Mapping[str, jax.Array], images=None, captions=None) -> dict:
    """``batch``'s image and caption fields with the rows of ``images`` / ``captions`` appended,
    so that one forward pass embeds them all (BatchNorm statistics over every row)."""
    out = dict(batch)
    for fields in (images, captions):
        for k, v in (fields or {}).items():
            out[k] = jnp.concatenate([batch[k], v])
    return out


def shares_batch_statistics(model: nnx.Module) -> bool:
    """Whether ``model`` normalises with statistics over the batch (BatchNorm, in train mode):
    then extra rows must be embedded in the batch's forward pass, so that every row is
    normalised alike and the running statistics move once per step. Without such layers a
    row's embedding does not depend on the other rows, and the extra rows are embedded on their
    own (which keeps the batch's float rounding that of a step without them)."""
    return bool(jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
