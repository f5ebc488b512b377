"""Pieces shared by the paper configs: preset parsing, stages, dataset blocks, the smoke preset.

Each paper config starts from ``configs/default.py`` and calls these helpers, so a dataset block
or the smoke preset reads the same in every file (big_vision's ``configs/common.py`` pattern).
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections

# Dotted paths of the CNN backbone's parameters, e.g. image_encoder.backbone.layer1.0.conv1.kernel.
BACKBONE = r"^image_encoder\.backbone\."


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """``"key=value,flag"`` -> typed options, as big_vision's ``configs/common.py:parse_arg``.

    Each option's type is its default's: a bool option is set by its bare name (``smoke``) or
    ``name=true|false``; int, float and str options are cast from ``key=value``. Unknown keys and
    malformed values raise ``ValueError`` naming the valid options.

    Example: ``parse_arg("loss=sh,smoke", loss="mh", smoke=False)``
    -> ``{loss: "sh", smoke: True}``.
    """
    out = dict(defaults)
    for item in (s.strip() for s in (arg or "").split(",")):
        if not item:
            continue
        key, eq, value = (s.strip() for s in item.partition("="))
        if key not in defaults:
            raise ValueError(
                f"Unknown preset option {key!r} in {arg!r}; valid: {', '.join(defaults)}.")
        default = defaults[key]
        if isinstance(default, bool):
            if not eq or value.lower() in ("1", "true", "yes"):
                out[key] = True
            elif value.lower() in ("0", "false", "no"):
                out[key] = False
            else:
                raise ValueError(f"Preset option {key!r} is a flag; got {key}={value!r}.")
        elif not eq:
            kind = type(default).__name__
            raise ValueError(f"Preset option {key!r} needs a value: {key}=<{kind}>.")
        else:
            try:
                out[key] = type(default)(value)
            except ValueError:
                kind = type(default).__name__
                raise ValueError(f"Preset option {key}={value!r} is not a {kind}.") from None
    return ml_collections.ConfigDict(out)


def is_smoke(arg: str | None) -> bool:
    """Whether the preset string asks for the ``smoke`` run (synthetic data, a few steps)."""
    return "smoke" in (s.strip() for s in (arg or "").split(","))


def check_choice(name: str, value: str, valid: Mapping | tuple) -> None:
    if value not in valid:
        raise ValueError(f"Unknown preset {name}={value!r}; valid: {', '.join(valid)}.")


def stage(epochs: float, learning_rate: float, *, freeze_backbone: bool = False,
          loss_weights: Mapping[str, float] | None = None) -> ml_collections.ConfigDict:
    """One entry of ``config.stages``; a frozen backbone is also excluded from the optimiser.

    ``freeze_backbone`` stops the backbone's gradients and keeps its BatchNorm statistics; the
    ``freeze`` regex additionally keeps weight decay and momentum from moving it. Locked here,
    because ``config.lock()`` does not reach ConfigDicts inside lists: a misspelt
    ``--config.stages[0].learning_rte`` must fail too.
    """
    return _locked(dict(
        epochs=float(epochs), steps=-1, learning_rate=float(learning_rate),
        freeze=BACKBONE if freeze_backbone else "", freeze_backbone=freeze_backbone,
        loss_weights=ml_collections.ConfigDict(dict(loss_weights or {})),
    ))


def loss(name: str, **kwargs) -> ml_collections.ConfigDict:
    """One entry of ``config.losses``: ``{name, weight, **hyper-parameters}``, locked as a stage."""
    return _locked(dict(name=name, weight=float(kwargs.pop("weight", 1.0)), **kwargs))


def _locked(fields: dict) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(fields)
    c.lock()
    return c


def _cadence(c, *, every: int = 1000) -> None:
    c.log_every = 100
    c.eval_every = every
    c.checkpoint_every = every


def flickr30k(c) -> None:
    """Karpathy's Flickr30K split (29,000 / 1,014 / 1,000 images); test = the 1K images at once."""
    c.data.name = "karpathy/flickr30k"
    c.data.data_dir = ""  # the TFDS data_dir ("" = ~/tensorflow_datasets)
    c.eval_protocol = "all"
    _cadence(c)


def coco(c, *, restval: bool = True) -> None:
    """Karpathy's COCO split; ``restval`` adds the 30,504 "restval" images to training (113,287).

    Test = the 5K split: the 5-fold 1K average (``1k/...``) and the full 5K set (``5k/...``).
    """
    c.data.name = "karpathy/coco_restval" if restval else "karpathy/coco"
    c.data.data_dir = ""  # the TFDS data_dir ("" = ~/tensorflow_datasets)
    c.eval_protocol = "coco"
    _cadence(c, every=2000)


def cuhk_pedes(c) -> None:
    """CUHK-PEDES (34,054 / 3,078 / 3,074 images); text-to-image retrieval only."""
    c.data.name = "cuhk_pedes"
    c.data.data_dir = ""  # required: the folder holding reid_raw.json and imgs/
    c.eval_protocol = "t2i"
    _cadence(c)


def precomp(c, *, test_split: str, protocol: str) -> None:
    """VSE++/SCAN precomputed features (``{split}_ims.npy``, ``{split}_caps.txt``) in data_dir."""
    c.data.name = "precomp"
    c.data.data_dir = ""  # required: e.g. data/coco_precomp or data/f30k_precomp
    c.data.test_split = test_split
    c.eval_protocol = protocol
    _cadence(c)


def smoke(c, *, image: str) -> None:
    """Same losses, heads, text encoder, dropout and stages on tiny synthetic data: seconds on
    a CPU.

    ``image="cnn"`` swaps the CNN for ``small_cnn`` on the 64x64 ``synthetic_images``;
    ``image="precomp"`` uses the ``synthetic`` precomputed features; ``image="regions"`` their
    region form (4 regions: the scene and one per object) for the region models (SCAN, BFAN,
    VSRN), whose encoders stay. Every stage runs 2 steps (a single-stage config 3); one
    validation at the end. The test split is evaluated with the ``all`` protocol (the ``coco``
    protocol needs the 5,000-image test set).
    """
    if image == "precomp":
        c.data.name, c.model.image = "synthetic", "precomp"
    elif image == "regions":
        c.data.name = "synthetic"
        c.data.synthetic.regions = 4
    else:
        c.data.name, c.model.image = "synthetic_images", "small_cnn"
        c.model.small_cnn_dim = 16
    c.data.data_dir = ""
    c.data.test_split = "test"
    c.data.vocab_threshold = 1
    c.data.synthetic.update(num_train=64, num_val=16, num_test=16)
    c.model.embed_dim = 32
    c.model.word_dim = 16
    # Tiny sizes, same structure: LSTM units still apart from embed_dim where a recipe sets
    # them (then a text head maps them), the small text-CNN stack instead of the paper's.
    c.model.text_hidden = min(c.model.text_hidden, 24)
    c.model.text_cnn = "small"
    c.batch_size = 16
    c.eval_batch_size = 32
    c.eval_protocol = "all"
    c.log_every, c.eval_every, c.checkpoint_every = 1, 1000, 1000
    c.num_steps = 3
    for s in c.stages:
        s.steps = 2
