"""Image-text matching losses as pure functions of batch similarity matrices.

Every loss takes arrays and keyword hyper-parameters and returns a scalar (or ``(loss, aux)``
with ``with_aux=True``); ``docs/losses.md`` gives each one's equation and options. ``get(name)``
looks a loss up by name for configs (``config.losses[i].name``).
"""

from __future__ import annotations

from collections.abc import Callable

from itm_jax.losses.aoq import aoq_loss
from itm_jax.losses.caption import caption_generation
from itm_jax.losses.cmpm import cmpc, cmpm
from itm_jax.losses.convse import (
    contrastive_max_negative,
    contrastive_sum_negatives,
    multimodal_nce,
)
from itm_jax.losses.imc import imc
from itm_jax.losses.instance import dual_path_ranking, instance_loss
from itm_jax.losses.vse import max_of_hinges, positives_from_ids, sum_of_hinges

_REGISTRY: dict[str, Callable] = {
    f.__name__: f
    for f in (
        sum_of_hinges,
        max_of_hinges,
        imc,
        cmpm,
        cmpc,
        instance_loss,
        dual_path_ranking,
        contrastive_sum_negatives,
        contrastive_max_negative,
        multimodal_nce,
        aoq_loss,
        caption_generation,
    )
}


def names() -> tuple[str, ...]:
    """Sorted names of the registered losses."""
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Callable:
    """The loss function registered as ``name``; ``ValueError`` listing valid names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown loss {name!r}; valid names: {', '.join(names())}.") from None


__all__ = [*names(), "positives_from_ids", "get", "names"]
