"""The optimiser of a run: stages (step ranges with their learning rate, frozen parameters and
loss weights), per-parameter labels and the optax transformation of each stage.

The papers restart the optimiser with a new learning rate when they unfreeze a backbone or add a
loss, so every stage gets a fresh optimiser state (``itm_jax.training.loop``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage: ``[start, end)`` steps with its optimiser and loss weights."""

    index: int
    start: int
    end: int
    learning_rate: float
    freeze: str
    freeze_backbone: bool
    losses: tuple[Mapping[str, Any], ...]


def steps_per_epoch(config, num_captions: int) -> int:
    return max(1, num_captions // config.batch_size)


def to_steps(value: Mapping[str, Any], spe: int, *, prefix: str = "") -> int:
    """``{prefix}steps`` if >= 0, else ``{prefix}epochs * steps_per_epoch``."""
    steps = value.get(f"{prefix}steps", -1)
    return int(steps) if steps is not None and steps >= 0 else int(round(value[f"{prefix}epochs"] * spe))


def make_stages(config, spe: int) -> list[Stage]:
    """``config.stages`` (or one stage from the top-level fields) as step ranges."""
    specs = list(config.stages) or [{}]
    stages, start = [], 0
    for i, spec in enumerate(specs):
        duration = to_steps(spec if ("steps" in spec or "epochs" in spec) else
                            {"steps": config.num_steps, "epochs": config.num_epochs}, spe)
        weights = dict(spec.get("loss_weights", {}))
        losses = []
        for loss in config.losses:
            loss = dict(loss)
            label = loss.get("label", loss["name"])
            loss["weight"] = weights.pop(label, loss.get("weight", 1.0))
            if loss["weight"] != 0:
                losses.append(loss)
        if weights:
            raise ValueError(f"stages[{i}].loss_weights names unknown losses {sorted(weights)}.")
        stages.append(Stage(
            index=i, start=start, end=start + duration,
            learning_rate=spec.get("learning_rate", config.optim.learning_rate),
            freeze=spec.get("freeze", config.optim.freeze),
            freeze_backbone=spec.get("freeze_backbone", config.model.freeze_backbone),
            losses=tuple(losses),
        ))
        start += duration
    return stages


def dotted(path) -> str:
    """A pytree path as ``image_encoder.fc.kernel.value`` (the names freeze regexes match)."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def param_labels(params, freeze: str, multipliers: Sequence[tuple[str, float]] = ()):
    """Per parameter: ``"frozen"`` if its dotted path matches the ``freeze`` regex, else
    ``"x{k}"`` for the first of ``multipliers`` (``(regex, factor)`` pairs) it matches, else
    ``"train"``."""
    frozen = re.compile(freeze) if freeze else None
    patterns = [re.compile(regex) for regex, _ in multipliers]

    def label(path, _):
        name = dotted(path)
        if frozen is not None and frozen.search(name):
            return "frozen"
        return next((f"x{k}" for k, p in enumerate(patterns) if p.search(name)), "train")

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config, stage: Stage, spe: int, params):
    """Adam (or SGD with momentum / Nesterov) with x``lr_decay_factor`` every ``lr_decay_epochs``,
    global-norm clipping, frozen parameters and per-parameter learning-rate multipliers
    (``optim.lr_multipliers``: ``(regex, factor)`` pairs, Caffe/MatConvNet's ``lr_mult``; weight
    decay scales with them, as there).

    Returns ``(tx, schedule)``; the schedule counts steps from the start of the stage.
    """
    o = config.optim
    decay_steps = max(1, to_steps(o, spe, prefix="lr_decay_"))
    lr = optax.exponential_decay(stage.learning_rate, decay_steps, o.lr_decay_factor,
                                 staircase=True)

    def base(factor: float):
        scaled = lr if factor == 1 else (lambda step: factor * lr(step))
        if o.name == "adam":
            return optax.adamw(scaled, weight_decay=o.weight_decay) if o.weight_decay else \
                optax.adam(scaled)
        if o.name == "sgd":
            return optax.chain(optax.add_decayed_weights(o.weight_decay),
                               optax.sgd(scaled, momentum=o.momentum, nesterov=o.nesterov))
        raise ValueError(f"Unknown optim.name={o.name!r}; valid: adam, sgd.")

    multipliers = [(str(regex), float(factor)) for regex, factor in o.lr_multipliers]
    labels = param_labels(params, stage.freeze, multipliers)
    transforms = {"train": base(1.0), "frozen": optax.set_to_zero(),
                  **{f"x{k}": base(f) for k, (_, f) in enumerate(multipliers)}}
    tx = optax.multi_transform(transforms, labels)
    if o.grad_clip > 0:
        # Clip the norm of the gradients that are applied: frozen ones are zeroed first.
        zero_frozen = optax.multi_transform(
            {**{k: optax.identity() for k in transforms}, "frozen": optax.set_to_zero()}, labels)
        tx = optax.chain(zero_frozen, optax.clip_by_global_norm(o.grad_clip), tx)
    return tx, lr
