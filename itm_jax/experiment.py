"""The experiment: everything a run is made of, built from ``(config, workdir)``.

Training, evaluation, mining, the report, the demo and the run API all start from an
``Experiment``: the device mesh, the data sources, the vocabulary, the model, the loss families'
batch extras and the checkpoints of the run directory. Nothing here trains or evaluates.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from itm_jax.data import pipeline
from itm_jax.data.datasets import get_sources, image_dim
from itm_jax.data.vocab import Vocabulary, build_vocab_for
from itm_jax.data.word_vectors import load_word_vectors
from itm_jax.errors import RunError
from itm_jax.models.dual_encoder import DualEncoder, build_dual_encoder
from itm_jax.models.mobilenet import MobileNetV1
from itm_jax.models.pretrained import (
    load_authors_weights,
    load_keras_mobilenet,
    load_torchvision_resnet,
)
from itm_jax.models.set_encoder import SetEncoder
from itm_jax.models.vsrn import VSRNImageEncoder
from itm_jax.objective import batch_extras
from itm_jax.training import checkpointing
from itm_jax.training.optim import Stage, make_stages, steps_per_epoch

# Batch fields every model reads; the loss families' extras add theirs, the rest stays on the host.
MODEL_KEYS = ("image", "image_feat", "tokens", "length", "image_id", "label")


def make_mesh(config) -> Mesh:
    """``data`` axis over all devices of all processes (``config.mesh.data = -1``)."""
    n = config.mesh.data if config.mesh.data > 0 else jax.device_count()
    # Auto axes: XLA places the gathers (e.g. the score matrix's columns), not our code.
    return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n],
                         axis_types=(jax.sharding.AxisType.Auto,))


def load_pretrained(model, path: str) -> None:
    """``model.pretrained``: weights converted by ``python -m itm_jax.models.convert_weights``
    (``.npz``): ImageNet weights of a CNN image encoder's backbone, or the authors' SCAN, BFAN
    or VSRN model."""
    if not path:
        return
    if isinstance(model, SetEncoder) or isinstance(model.image_encoder, VSRNImageEncoder):
        load_authors_weights(model, path)
        return
    backbone = getattr(model.image_encoder, "backbone", None)
    if backbone is None:
        raise ValueError(f"model.pretrained={path!r} needs a CNN image encoder or a SCAN, BFAN "
                         "or VSRN model, not precomp.")
    load = load_keras_mobilenet if isinstance(backbone, MobileNetV1) else load_torchvision_resnet
    load(backbone, path)


class Experiment:
    """Mesh, data, vocabulary, model and checkpoints of the run in ``workdir`` under ``config``.

    Attributes:
      config, workdir: as given. mesh: the ``data`` mesh; repl / rows: its replicated and
        batch-sharded shardings. sources: ``{"train", "val", "test"}`` data sources.
      vocab, tokenize: the run's vocabulary (``workdir/vocab.json``; built from the training
        captions on a fresh run) and ``caption -> (tokens, length)``.
      stages, num_steps, spe: the training schedule (steps per epoch ``spe``).
      model: the ``DualEncoder`` (freshly initialised). extras: the loss families' batch
        extras. checkpoints: ``workdir/checkpoints`` and ``workdir/best``.
    """

    def __init__(self, config, workdir: str | pathlib.Path):
        self.config, self.workdir = config, pathlib.Path(workdir)
        self.mesh = make_mesh(config)
        self.repl = NamedSharding(self.mesh, P())
        self.rows = NamedSharding(self.mesh, P("data"))
        self.sources = get_sources(config.data)
        train = self.sources["train"]
        self.vocab = self._vocab()
        self.tokenize = functools.partial(self.vocab.encode, max_len=config.data.max_len)
        self.spe = steps_per_epoch(config, train.num_captions)
        self.stages = make_stages(config, self.spe)
        self.num_steps = self.stages[-1].end
        self.extras = batch_extras(config, train)
        self.model = build_dual_encoder(
            config.model, vocab_size=len(self.vocab),
            # One class per person (CUHK-PEDES) or per training image (instance loss, CMPC).
            num_classes=getattr(train, "num_identities", train.num_images),
            image_dim=image_dim(train), word_vectors=self._word_vectors(),
            rngs=nnx.Rngs(config.seed),
        )
        load_pretrained(self.model, config.model.get("pretrained", ""))
        self.checkpoints = checkpointing.Checkpoints(self.workdir / "checkpoints",
                                                     keep=config.keep_checkpoints)

    def _word_vectors(self) -> np.ndarray | None:
        path = self.config.data.get("word_vectors", "")
        if not path:
            return None
        vectors, found = load_word_vectors(path, self.vocab, dim=self.config.model.word_dim)
        print(f"word vectors: {found}/{len(self.vocab)} vocabulary words found in {path}")
        return vectors

    def _vocab(self) -> Vocabulary:
        path = self.workdir / "vocab.json"
        # A model initialised from another run keeps that run's word ids.
        source = pathlib.Path(self.config.get("init_from", "") or self.workdir) / "vocab.json"
        for candidate in (path, source):
            if candidate.exists():
                vocab = Vocabulary.load(candidate)
                if candidate != path and jax.process_index() == 0:
                    self.workdir.mkdir(parents=True, exist_ok=True)
                    vocab.save(path)
                return vocab
        vocab = build_vocab_for(self.sources["train"], threshold=self.config.data.vocab_threshold)
        if jax.process_index() == 0:
            self.workdir.mkdir(parents=True, exist_ok=True)
            vocab.save(path)
        return vocab

    # ----- model state ---------------------------------------------------------------------
    def split(self, stage: Stage | None = None, *, train: bool):
        """``(graphdef, params, rest)`` of the model in ``stage``'s mode (default: the last
        stage's, as evaluated), in train or eval mode."""
        stage = stage or self.stages[-1]
        if hasattr(self.model.image_encoder, "freeze_backbone"):
            self.model.image_encoder.freeze_backbone = stage.freeze_backbone
        self.model.train() if train else self.model.eval()
        return nnx.split(self.model, nnx.Param, ...)

    def weights(self, which: str = "best") -> tuple[Any, Any, dict[str, Any]]:
        """``(params, rest, info)``: the ``"best"`` validation checkpoint, the ``"latest"``
        training checkpoint, or the ``"initial"`` (untrained) model, placed replicated.
        ``info = {"kind", "step", "checkpoint"}``."""
        _, params, rest = self.split(train=False)
        params, rest = jax.device_put((params, rest), self.repl)
        if which == "initial":
            return params, rest, {"kind": "initial", "step": 0, "checkpoint": ""}
        if which == "best":
            step = self.checkpoints.best.best_step()
            if step is None:
                raise RunError(
                    f"No best checkpoint under {self.workdir / 'best'}: the run never validated "
                    "(config.eval_every > 0 turns validation on); use the latest checkpoint.")
            params, rest = self.checkpoints.restore_best(params, rest)
        elif which == "latest":
            step, stored = checkpointing.read_weights(self.workdir, kind="checkpoints")
            params, rest = (jax.device_put(checkpointing.copy_matching(
                tree, stored[k], str(self.workdir), strict=True), self.repl)
                for tree, k in ((params, "params"), (rest, "rest")))
        else:
            raise ValueError(f"Unknown checkpoint {which!r}; valid: best, latest, initial.")
        kind = "best" if which == "best" else "checkpoints"
        return params, rest, {"kind": which, "step": int(step),
                              "checkpoint": str((self.workdir / kind / str(step)).absolute())}

    @property
    def scorer(self):
        """The model's ``itm_jax.scoring`` scorer (attention for set models), None for global
        embeddings (their dot product)."""
        return getattr(self.model, "scorer", None)

    # ----- data ----------------------------------------------------------------------------
    def batch_keys(self) -> tuple[str, ...]:
        return MODEL_KEYS + tuple(k for extra in self.extras for k in extra.keys)

    def global_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """A process-local host batch as global arrays sharded over ``data`` (model keys only)."""
        keys = self.batch_keys()
        return {k: jax.make_array_from_process_local_data(self.rows, np.asarray(v))
                for k, v in batch.items() if k in keys}

    def loader(self):
        """The shuffled training batches (with the extras' items), resumable by checkpoint."""
        return pipeline.train_loader(self.sources["train"], global_batch_size=self.config.batch_size,
                                     seed=self.config.seed, tokenize=self.tokenize,
                                     extras=self.extras)

    @functools.cached_property
    def embed_fn(self):
        """``embed_fn(kind, params, rest, batch) -> [B, D]`` outputs of ``"images"`` or
        ``"captions"`` (jitted, eval mode, replicated output)."""
        graphdef, _, _ = self.split(train=False)

        @functools.partial(jax.jit, static_argnums=0, out_shardings=self.repl)
        def run(kind, params, rest, batch):
            model = nnx.merge(graphdef, params, rest)
            return model.embed_images(batch) if kind == "images" else model.embed_captions(batch)

        return run

