"""Checks of a run config: ``validate`` before anything is created, ``config_drift`` on restart.

``validate(config)`` raises a one-line ``ConfigError`` for every mistake that shows without
building the model, reading data or tracing: unknown names (losses, their hyper-parameters and
options, datasets, encoders, optimisers, protocols), values out of range (margins,
temperatures, loss weights, learning rates, stage lengths, cadences, batch sizes that do not
split over the devices) and regexes that do not compile. The message names the field as its
``--config.`` flag (list entries as ``losses.0.margin``), the value, what is valid and the fix.
It calls ``jax.device_count()``, so a multi-process run calls it after
``jax.distributed.initialize``.

``config_drift(saved, new)`` lists the fields in which a restart's config differs from the
run's ``config.json``, leaving out ``SAFE_FIELDS``, which cannot change what the run trains;
``drift_message`` is the refusal.
"""

from __future__ import annotations

import inspect
import json
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from itm_jax import losses as L
from itm_jax import similarity
from itm_jax.data.datasets import DATASETS
from itm_jax.errors import ConfigError
from itm_jax.evaluation.metrics import PROTOCOLS
from itm_jax.losses import _common
from itm_jax.models import dual_encoder, set_encoder, vsrn
from itm_jax.models.text import GRU_IMPLS
from itm_jax.objective import GLOBAL_OUTPUTS, required_outputs
from itm_jax.training.optim import make_optimizer, make_stages

# Fields that cannot change the numbers a run trains, as dotted names or prefixes (``mesh``
# covers ``mesh.data``). A restart may change them freely:
SAFE_FIELDS = (
    # Where the same inputs live: the data, AOQ's mined lists, and what initialises a fresh
    # model (word vectors, ImageNet weights, a base run; read only while no checkpoint exists,
    # i.e. while nothing has been trained).
    "data.data_dir", "data.word_vectors", "model.pretrained", "aoq.mining_dir", "init_from",
    # When to validate, log and checkpoint, and how many checkpoints to keep: they read the
    # state, never write it (validation runs the model in eval mode; a checkpoint restores the
    # data iterator with the state).
    "eval_every", "log_every", "checkpoint_every", "keep_checkpoints",
    # Evaluation only: its batch size (rows are embedded independently) and what the final
    # test measures.
    "eval_batch_size", "eval_protocol", "data.test_split",
    # How the same function runs: the device count (the global batch and the score matrix are
    # the same on any mesh, and a run resumes on any number of devices) and the GRU's kernel
    # (scan or packed, equal to float32 rounding).
    "mesh", "model.gru_impl",
)
# Not safe, although they look harmless: num_steps / num_epochs (stage lengths and the
# learning-rate decay follow them), batch_size (steps per epoch, the negatives of each batch),
# seed (initialisation, data order), anything of the data, model, losses, stages or optimiser.

# Model outputs only some model configs provide, and the ``model.classifier`` that does.
_CLASSIFIER_OUTPUTS = {"img_logits": "shared", "txt_logits": "shared", "cls_weight": "norm"}
# Loss-spec keys the objective reads itself; the rest are the loss's keyword arguments.
_SPEC_KEYS = ("name", "weight", "label")
# Keyword arguments the trainer passes, not the config.
_TRAINER_ARGUMENTS = ("positives", "with_aux")
# Ranges of the numeric loss hyper-parameters, by name: (test, what is valid).
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
HYPER_PARAMETER_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "margin": _NON_NEGATIVE, "margin_online": _NON_NEGATIVE, "margin_offline": _NON_NEGATIVE,
    "tau": _POSITIVE,  # temperatures divide the scores
    "eps": _POSITIVE,  # CMPM's log(q + eps) is -inf for q = 0 otherwise
    "lam": _NON_NEGATIVE, "image_weight": _NON_NEGATIVE, "text_weight": _NON_NEGATIVE,
    # AOQ's adaptive weight beta - (s_off - s_on) / alpha: alpha divides; beta <= 0 turns the
    # online hinges' weights negative (alpha = inf, beta = 1 is offquin).
    "alpha": _POSITIVE, "beta": _POSITIVE,
    "mu_down": _NON_NEGATIVE, "mu_up": _POSITIVE,  # IMC thresholds, related below
    "chunk_size": (lambda v: v >= 1, "None (automatic) or an integer >= 1"),
}


def validate(config) -> None:
    """Raises ``ConfigError`` for the first mistake in ``config`` (see the module docstring)."""
    devices = _data_devices(config)
    _check_losses(config)
    _check_stages(config)
    _check_optim(config)
    for field in ("batch_size", "eval_batch_size"):
        value = config[field]
        if not (_is_int(value) and value > 0 and value % devices == 0):
            raise _error(field, value, f"a positive multiple of {devices}, the data-parallel "
                         f"devices of mesh.data={config.mesh.data}",
                         f"pass --config.{field}=<a positive multiple of {devices}>")
    _number("eval_every", config.eval_every, "an integer >= 0 (0: no validation)",
            lambda v: v >= 0, integer=True)
    for field in ("log_every", "checkpoint_every", "keep_checkpoints"):
        _number(field, config[field], "an integer >= 1", lambda v: v >= 1, integer=True)
    _choice("eval_protocol", config.eval_protocol, PROTOCOLS)
    _check_data(config.data)
    _check_model(config.model, config.losses)
    for field in ("h_t", "h_i"):
        _number(f"aoq.{field}", config.aoq[field], "an integer >= 1", lambda v: v >= 1,
                integer=True)


# ----- validate's parts ------------------------------------------------------------------------
def _error(field: str, value: Any, valid: str, fix: str = "") -> ConfigError:
    fix = fix or f"pass --config.{field} in that range"
    return ConfigError(f"config.{field}={value!r} is invalid; valid: {valid}. Fix: {fix}.")


def _choice(field: str, value, valid: Sequence[str], fix: str = "") -> None:
    if value not in valid:
        raise _error(field, value, ", ".join(valid),
                     fix or f"pass --config.{field}=<one of them>")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(field: str, value, valid: str, ok: Callable[[Any], bool], *, integer=False,
            fix: str = "") -> None:
    kind = _is_int(value) if integer else (
        isinstance(value, numbers.Real) and not isinstance(value, bool))
    if not (kind and ok(value)):
        raise _error(field, value, valid, fix)


def _regex(field: str, value) -> None:
    try:
        re.compile(value)
    except (re.error, TypeError) as e:
        raise _error(field, value, r"a Python regex over parameter paths, e.g. "
                     r"'^image_encoder\.backbone\.'", f"correct the pattern ({e})") from None


def _data_devices(config) -> int:
    """The size of the mesh's ``data`` axis: ``mesh.data``, or every device for -1."""
    count, n = jax.device_count(), config.mesh.data
    if not (_is_int(n) and (n == -1 or 1 <= n <= count)):
        raise _error("mesh.data", n, f"-1 (all {count} devices) or 1..{count}",
                     "pass --config.mesh.data=-1")
    return count if n == -1 else n


def _check_losses(config) -> None:
    if not config.losses:
        raise _error("losses", list(config.losses), "a list of {name, weight, ...}",
                     "add a loss, e.g. --config=configs/default.py:loss=mh")
    labels = {}
    for i, spec in enumerate(config.losses):
        where = f"losses.{i}"
        name = spec.get("name")
        try:
            fn = L.get(name)
        except ValueError:
            raise _error(f"{where}.name", name, ", ".join(L.names()),
                         f"pass --config.{where}.name=<one of them>") from None
        _number(f"{where}.weight", spec.get("weight", 1.0), ">= 0 (0: off unless a stage's "
                "loss_weights turns it on)", lambda v: v >= 0)
        label = spec.get("label", name)
        if label in labels:
            raise _error(f"{where}.label", label, f"distinct labels; {labels[label]} is "
                         f"labelled {label!r} too", f"set --config.{where}.label")
        labels[label] = where
        _check_hyper_parameters(where, fn, spec)


def _check_hyper_parameters(where: str, fn: Callable, spec: Mapping) -> None:
    """Names against ``fn``'s keyword arguments, values against their defaults' types, ranges
    and option lists."""
    params = {p: v for p, v in inspect.signature(fn).parameters.items()
              if v.kind is v.KEYWORD_ONLY and p not in _TRAINER_ARGUMENTS}
    for key, value in spec.items():
        field = f"{where}.{key}"
        if key in _SPEC_KEYS:
            continue
        if key not in params:
            raise ConfigError(
                f"config.{field}: {fn.__name__} has no hyper-parameter {key!r}; valid: "
                f"{', '.join(params)} (and the objective's name, weight, label). Fix: rename "
                f"or remove {field}.")
        default = params[key].default
        if isinstance(default, str):
            _choice(field, value, loss_options(fn, key),
                    f"pass --config.{field}=<one of them> (default {default!r})")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise _error(field, value, "True or False")
        elif value is not None or default is not None:  # None: chunk_size's automatic
            test, valid = HYPER_PARAMETER_RANGES[key]
            # The one optional numeric hyper-parameter (chunk_size) counts rows.
            _number(field, value, valid, test, integer=default is None,
                    fix=f"pass --config.{field}=<{valid}> (default {default})")
    if "mu_down" in params:
        _check_imc_thresholds(where, {k: spec.get(k, params[k].default)
                                      for k in ("mu_down", "mu_up", "variant")})


def _check_imc_thresholds(where: str, t: Mapping) -> None:
    """``mu_down < mu_up`` (else the IMC terms are 0); fractions of the batch (< 1) for the
    reference variant, which thresholds at ranks ``round(mu * B)``."""
    reference = t["variant"] == "reference"
    if not (t["mu_down"] < t["mu_up"] and (t["mu_up"] < 1 or not reference)):
        valid = ("0 <= mu_down < mu_up < 1 (fractions of the batch)" if reference else
                 "0 <= mu_down < mu_up (distances)")
        raise _error(f"{where}.mu_up", t["mu_up"], f"{valid}; mu_down={t['mu_down']}",
                     f"pass --config.{where}.mu_down and --config.{where}.mu_up in that range")


def loss_options(fn: Callable, key: str) -> tuple[str, ...]:
    """The valid values of a loss's string hyper-parameter, from the code that checks them."""
    if key == "variant":  # each loss family's own
        return inspect.getmodule(fn).VARIANTS
    return {"delta": similarity.DISTANCES, "reduction": _common.REDUCTIONS}[key]


def _check_stages(config) -> None:
    stages = list(config.stages)
    labels = [spec.get("label", spec["name"]) for spec in config.losses]
    for i, spec in enumerate(stages or [{}]):
        # As make_stages reads them: the stage's own length, else the top-level fields.
        own = "steps" in spec or "epochs" in spec
        steps, epochs = ((spec.get("steps", -1), spec.get("epochs")) if own else
                         (config.num_steps, config.num_epochs))
        steps_field, epochs_field = ((f"stages.{i}.steps", f"stages.{i}.epochs") if own else
                                     ("num_steps", "num_epochs"))
        _number(steps_field, steps, "an integer: >= 0 steps, or -1 to count epochs",
                lambda v: True, integer=True)
        if steps >= 0:
            # A run of 0 steps (the initial model) is asked for as num_steps=0, without stages.
            zero_ok = not stages
            _number(steps_field, steps, ">= 0 without stages" if zero_ok else ">= 1",
                    lambda v: v >= (0 if zero_ok else 1), integer=True,
                    fix="" if zero_ok else f"pass --config.{steps_field}=<steps >= 1> or "
                    "remove the stage")
        else:
            _number(epochs_field, epochs, "> 0", lambda v: v > 0,
                    fix=f"pass --config.{epochs_field}=<epochs > 0> or "
                    f"--config.{steps_field}=<steps >= 1>")
        if "learning_rate" in spec:
            _learning_rate(f"stages.{i}.learning_rate", spec["learning_rate"])
        if "freeze" in spec:
            _regex(f"stages.{i}.freeze", spec["freeze"])
        for label, weight in spec.get("loss_weights", {}).items():
            _number(f"stages.{i}.loss_weights.{label}", weight, ">= 0", lambda v: v >= 0)
    try:  # make_stages resolves each stage's loss weights and rejects unknown labels
        resolved = make_stages(config, 1)
    except ValueError as e:
        raise ConfigError(f"{e} Valid: {', '.join(labels)} (each loss's label, else its "
                          "name). Fix: name only these in that stage's loss_weights.") from None
    for stage in resolved:
        if not stage.losses:
            field = f"stages.{stage.index}.loss_weights" if stages else "losses"
            raise ConfigError(
                f"config.{field}: stage {stage.index} has no active loss term (every weight of "
                f"{', '.join(labels)} is 0); give one a weight > 0 in --config.{field}.")


def _learning_rate(field: str, value) -> None:
    _number(field, value, "> 0 (0 never moves the weights)", lambda v: v > 0,
            fix=f"pass --config.{field}=<rate > 0>; keep parameters fixed with a freeze regex")


def _check_optim(config) -> None:
    o = config.optim
    _learning_rate("optim.learning_rate", o.learning_rate)
    _regex("optim.freeze", o.freeze)
    for field, value, valid, ok in (
        ("grad_clip", o.grad_clip, ">= 0 (0: no clipping)", lambda v: v >= 0),
        ("weight_decay", o.weight_decay, ">= 0", lambda v: v >= 0),
        ("momentum", o.momentum, "0 <= momentum < 1", lambda v: 0 <= v < 1),
        ("lr_decay_factor", o.lr_decay_factor, "0 < factor <= 1 (1: no decay)",
         lambda v: 0 < v <= 1),
    ):
        _number(f"optim.{field}", value, valid, ok)
    if o.lr_decay_factor != 1:
        steps = o.lr_decay_steps
        field, value = (("lr_decay_steps", steps) if _is_int(steps) and steps >= 0 else
                        ("lr_decay_epochs", o.lr_decay_epochs))
        _number(f"optim.{field}", value, "> 0, the interval between decays",
                lambda v: v > 0, fix=f"pass --config.optim.{field}=<interval > 0> or "
                "--config.optim.lr_decay_factor=1 (no decay)")
    for k, pair in enumerate(o.lr_multipliers):
        field = f"optim.lr_multipliers.{k}"
        if not (isinstance(pair, Sequence) and len(pair) == 2):
            raise _error(field, pair, "a (regex, factor) pair")
        _regex(field, pair[0])
        _number(field, pair[1], "a factor >= 0", lambda v: v >= 0)
    try:  # the optimiser over no parameters: make_optimizer's own check of optim.name
        make_optimizer(config, make_stages(config, 1)[0], 1, {})
    except ValueError as e:
        raise ConfigError(f"{e} Fix: pass --config.optim.name=<one of them>.") from None


def _check_data(data) -> None:
    name = data.name
    if name.startswith("karpathy/"):
        from itm_jax.data.karpathy import Karpathy  # only where it is used: it imports TFDS

        valid = tuple(f"karpathy/{c.name}" for c in Karpathy.BUILDER_CONFIGS)
        if name in valid:
            return
    _choice("data.name", name, DATASETS)


def _check_model(model, losses) -> None:
    """The builder's kinds and option combinations, and the classifier the losses read."""
    for field, valid in (("image", dual_encoder.IMAGE_ENCODERS),
                         ("text", dual_encoder.TEXT_ENCODERS),
                         ("classifier", dual_encoder.CLASSIFIERS),
                         ("image_head", dual_encoder.IMAGE_HEADS),
                         ("text_head", dual_encoder.TEXT_HEADS),
                         ("text_cnn", dual_encoder.TEXT_CNN_BLOCKS)):
        _choice(f"model.{field}", model[field], valid)
    _choice("model.gru_impl", model.get("gru_impl", "auto"), GRU_IMPLS)
    options = {k: model.get(k, v) for k, v in dual_encoder.OPTIONS.items()}
    try:
        dual_encoder.check_options(model.image, model.text, options,
                                    convse_head=model.get("convse_head", False))
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None
    for output in sorted(required_outputs(losses)):
        classifier = _CLASSIFIER_OUTPUTS.get(output)
        if classifier and model.classifier != classifier:
            raise _error("model.classifier", model.classifier,
                         f"{classifier!r} for the losses reading {output}",
                         f"pass --config.model.classifier={classifier}")
    _check_region_models(model, losses)


def _check_region_models(model, losses) -> None:
    """Scorers, their options, and the losses a model of region and word sets can feed."""
    scorer = model.get("scorer", "dot")
    _choice("model.scorer", scorer, ("dot", *set_encoder.SCORERS))
    _choice("model.vsrn_variant", model.get("vsrn_variant", "coco"), vsrn.VARIANTS)
    names = [spec["name"] for spec in losses]
    if ("caption_generation" in names) != bool(model.get("caption_generator", False)):
        raise ConfigError(
            "config.model.caption_generator and the loss 'caption_generation' go together (VSRN's "
            "caption branch and its term): set both, or neither.")
    if model.image != "regions":
        return
    if scorer == "dot":
        raise _error("model.scorer", scorer, ", ".join(set_encoder.SCORERS),
                     "model.image='regions' is scored by attention: pass --config.model.scorer=scan")
    options = dict(model[scorer])
    fn = getattr(similarity, f"{scorer}_scores")
    valid = [p for p, v in inspect.signature(fn).parameters.items() if v.kind is v.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"config.model.{scorer}.{unknown[0]}: {fn.__name__} has no option "
                          f"{unknown[0]!r}; valid: {', '.join(valid)}.")
    try:  # the score checks its own options; one tiny pair is enough to run them
        x = jax.numpy.ones((1, 1, 2))
        fn(x, x, jax.numpy.ones((1,), jax.numpy.int32), **options)
    except ValueError as e:
        raise ConfigError(f"config.model.{scorer}: {e}") from None
    needs = sorted(required_outputs(losses) & set(GLOBAL_OUTPUTS))
    if needs:
        readers = [n for n in names if required_outputs([{"name": n}]) & set(needs)]
        raise ConfigError(
            f"config.losses: {', '.join(readers)} reads global embeddings ({', '.join(needs)}), "
            "which model.image='regions' (sets of regions and words scored by attention) does "
            "not have: use a loss of the score matrix, e.g. max_of_hinges.")


# ----- config drift ----------------------------------------------------------------------------
class _Absent(str):
    """The value of a field on the side that lacks it: JSON-serialisable (``"<absent>"``) and
    told apart from a real string by its type."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent("<absent>")


def config_drift(saved: Mapping, new: Mapping, *,
                 safe: Sequence[str] = SAFE_FIELDS) -> list[tuple[str, Any, Any]]:
    """``(dotted field, saved value, new value)`` for every field outside ``safe`` in which two
    configs' JSON forms (``json.loads(config.to_json_best_effort())``) differ, in order.

    Lists compare element by element (``losses.0.margin``); a field on one side only has
    ``ABSENT`` on the other; an empty list or mapping is a value (``stages: [] -> ...``).
    """
    a, b = _flatten(saved), _flatten(new)
    fields = list(a) + [f for f in b if f not in a]
    return [(f, a.get(f, ABSENT), b.get(f, ABSENT)) for f in fields
            if not _is_safe(f, safe) and (f not in a or f not in b or a[f] != b[f])]


def _is_safe(field: str, safe: Sequence[str]) -> bool:
    return any(field == s or field.startswith(s + ".") for s in safe)


def _flatten(value, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {prefix: value}
    out = {}
    for key, item in items:
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out if out or not prefix else {prefix: value}


def drift_message(workdir, drift: Sequence[tuple[str, Any, Any]], *, shown: int = 5) -> str:
    """One line: the run in ``workdir`` was started with another config (the first ``shown``
    differing fields, saved -> new), and the two ways on."""
    fields = ", ".join(f"{f}: {_short(a)} -> {_short(b)}" for f, a, b in drift[:shown])
    more = f" and {len(drift) - shown} more" if len(drift) > shown else ""
    return (f"{workdir} holds a run with another config ({fields}{more}): pass a new --workdir "
            "to start a new run, or --accept_config_change to continue this one with the new "
            "config (recorded in its config_history.jsonl).")


def _short(value, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, _Absent) else json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
