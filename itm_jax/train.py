"""Training and evaluation: ``train_and_evaluate(config, workdir)``.

One ``jax.jit`` train step over a device ``Mesh`` with a ``data`` axis spanning every device of
every process: the batch is sharded along it, parameters and optimiser state are replicated.
The model embeds the local rows; the score matrix ``img @ txt.T`` inside the step is the
*global* one (XLA gathers the columns), so every loss sees the same objective on 1 or 1000
devices. The old state is donated. A non-finite loss leaves the state untouched and stops the
run with the step and the loss terms, keeping the last good checkpoint.

Resume order: the latest checkpoint in ``workdir/checkpoints`` (params, optimiser state, step,
RNG state and the data iterator), else a fresh start. Stages (``config.stages``) run one after
another, each with its own optimiser (the papers restart the optimiser with a new learning rate
when they unfreeze a backbone or add a loss).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from itm_jax import checkpointing, evaluation
from itm_jax.data import pipeline
from itm_jax.data.datasets import get_sources, image_dim
from itm_jax.data.offline import OfflineSampler
from itm_jax.data.vocab import Vocabulary, build_vocab_for
from itm_jax.data.word_vectors import load_word_vectors
from itm_jax.metric_writer import MetricWriter, Progress
from itm_jax.models.dual_encoder import DualEncoder, build_dual_encoder
from itm_jax.models.mobilenet import MobileNetV1
from itm_jax.models.pretrained import load_keras_mobilenet, load_torchvision_resnet
from itm_jax.objective import objective, outputs_from_features
from itm_jax.similarity import l2_normalize

# Batch fields the model and the objective read; the rest stays on the host.
_MODEL_KEYS = ("image", "image_feat", "tokens", "length", "image_id", "label")
# AOQ round 2's offline items (itm_jax.data.offline), as ``{role}_{field}`` batch fields.
_OFFLINE_KEYS = tuple(f"{role}_{k}" for role in ("i_off", "i_tilde") for k in ("image", "image_feat")) + \
    tuple(f"{role}_{k}" for role in ("t_off", "t_tilde") for k in ("tokens", "length"))


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: Any  # nnx.State of nnx.Param
    rest: Any  # nnx.State of everything else (BatchNorm statistics, RNG counters)
    opt_state: Any


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


def make_mesh(config) -> Mesh:
    """``data`` axis over all devices of all processes (``config.mesh.data = -1``)."""
    n = config.mesh.data if config.mesh.data > 0 else jax.device_count()
    # Auto axes: XLA places the gathers (e.g. the score matrix's columns), not our code.
    return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n],
                         axis_types=(jax.sharding.AxisType.Auto,))


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


def copy_matching(tree, stored, source: str, *, strict: bool = False):
    """``tree`` with each leaf replaced by the leaf of ``stored`` at the same dotted path, where
    the shapes agree (e.g. a base network's weights under a model that adds heads). ``strict``:
    every leaf must be there (the stored model is this model)."""
    flat = {dotted(p): v for p, v in jax.tree_util.tree_flatten_with_path(stored)[0]}
    copied = []

    def pick(path, x):
        v = flat.get(dotted(path))
        if v is None or v.shape != x.shape:
            if strict:
                raise ValueError(
                    f"{source} has {'no' if v is None else v.shape} {dotted(path)} where this "
                    f"config's model has {x.shape}: pass the config that trained it.")
            return x
        copied.append(dotted(path))
        return jnp.asarray(v, x.dtype)

    out = jax.tree_util.tree_map_with_path(pick, tree)
    total = len(jax.tree.leaves(tree))
    if total and not copied:
        raise ValueError(f"init_from={source!r}: no parameter has the same name and shape as in "
                         "this model; is it a run of a related config?")
    if not strict:
        print(f"init_from {source}: {len(copied)}/{total} arrays copied")
    return out


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


def load_pretrained_backbone(model: DualEncoder, path: str) -> None:
    """ImageNet weights converted by ``python -m itm_jax.models.convert_weights`` (``.npz``)."""
    if not path:
        return
    backbone = getattr(model.image_encoder, "backbone", None)
    if backbone is None:
        raise ValueError(f"model.pretrained={path!r} needs a CNN image encoder, not precomp.")
    load = load_keras_mobilenet if isinstance(backbone, MobileNetV1) else load_torchvision_resnet
    load(backbone, path)


def model_outputs(model: DualEncoder, batch: Mapping[str, jax.Array], use_id_positives: bool):
    out = model(batch)
    out = outputs_from_features(
        out.pop("img_feat"), out.pop("txt_feat"),
        image_ids=batch["image_id"] if use_id_positives else None,
        labels=batch.get("label"), **out,
    )
    if "t_off_tokens" in batch:
        out.update(offline_scores(model, batch, out["img_emb"], out["txt_emb"]))
    return out


def offline_scores(model: DualEncoder, batch: Mapping[str, jax.Array], img_emb, txt_emb):
    """AOQ's offline score vectors ``[B]`` (cosine, like the batch scores; spec "AOQ").

    ``img_emb, txt_emb [B, D]``: the normalised embeddings of the batch pairs ``(i_k, t_k)``.
    The offline items are embedded by the same model in two calls of ``2B`` rows.
    """
    def rows(roles, keys):
        return {k: jnp.concatenate([batch[f"{r}_{k}"] for r in roles])
                for k in keys if f"{roles[0]}_{k}" in batch}

    b = img_emb.shape[0]
    imgs = l2_normalize(model.embed_images(rows(("i_off", "i_tilde"), ("image", "image_feat"))))
    caps = l2_normalize(model.embed_captions(rows(("t_off", "t_tilde"), ("tokens", "length"))))
    i_off, i_tilde, t_off, t_tilde = imgs[:b], imgs[b:], caps[:b], caps[b:]
    return {
        "s_i_toff": jnp.sum(img_emb * t_off, -1),
        "s_ioff_t": jnp.sum(i_off * txt_emb, -1),
        "s_ioff_toff": jnp.sum(i_off * t_off, -1),
        "s_itilde_ttilde": jnp.sum(i_tilde * t_tilde, -1),
    }


def train_step(state: TrainState, batch, *, graphdef, tx, losses, use_id_positives):
    """One optimisation step; returns ``(state, metrics, finite)``."""

    def loss_fn(params):
        # copy: BatchNorm statistics and RNG counters are updated inside this trace.
        model = nnx.merge(graphdef, params, state.rest, copy=True)
        total, terms = objective(model_outputs(model, batch, use_id_positives), losses)
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


def protocol_metrics(img, cap, cap_to_img, protocol: str, *,
                     image_labels=None) -> dict[str, float]:
    """Test metrics of a dataset's protocol.

    ``all``: every image and caption at once (Flickr30K 1K, validation). ``coco``: the 5-fold
    1K average (``1k/...``) and the full 5K set (``5k/...``). ``t2i``: text-to-image only
    (CUHK-PEDES reports R@1/R@10 of caption queries); with ``image_labels`` (int ``[N]``, the
    source's per-image identities) any image of the caption's person is a hit, as the PEDES
    protocol counts. The other protocols ignore ``image_labels``.
    """
    if protocol == "all":
        return evaluation.recall_metrics(img, cap, cap_to_img=cap_to_img)
    if protocol == "coco":
        folds = evaluation.coco_1k_5fold(img, cap)
        full = evaluation.recall_metrics(img, cap, cap_to_img=cap_to_img)
        return {**{f"1k/{k}": v for k, v in folds.items()}, **{f"5k/{k}": v for k, v in full.items()},
                "rsum": folds["rsum"]}
    if protocol == "t2i":
        t2i = evaluation.t2i(img, cap, cap_to_img=cap_to_img, image_labels=image_labels)
        return {f"t2i_{k}": float(v) for k, v in t2i.items() if k != "ranks"} | {
            "rsum": t2i["r1"] + t2i["r5"] + t2i["r10"]}
    raise ValueError(f"Unknown eval_protocol={protocol!r}; valid: all, coco, t2i.")


class Trainer:
    """Builds data, model and step functions from a config; runs and resumes training."""

    def __init__(self, config, workdir: str | pathlib.Path):
        self.config, self.workdir = config, pathlib.Path(workdir)
        self.mesh = make_mesh(config)
        self.repl = NamedSharding(self.mesh, P())
        self.rows = NamedSharding(self.mesh, P("data"))
        self.sources = get_sources(config.data)
        self.vocab = self._vocab()
        train = self.sources["train"]
        self.spe = steps_per_epoch(config, train.num_captions)
        self.stages = make_stages(config, self.spe)
        self.num_steps = self.stages[-1].end
        self.tokenize = functools.partial(self.vocab.encode, max_len=config.data.max_len)
        self.offline = self._offline_sampler()
        self.model = build_dual_encoder(
            config.model, vocab_size=len(self.vocab),
            # One class per person (CUHK-PEDES) or per training image (instance loss, CMPC).
            num_classes=getattr(train, "num_identities", train.num_images),
            image_dim=image_dim(train), word_vectors=self._word_vectors(),
            rngs=nnx.Rngs(config.seed),
        )
        load_pretrained_backbone(self.model, config.model.get("pretrained", ""))
        self.ckpt = checkpointing.Checkpoints(self.workdir / "checkpoints",
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

    # ----- state -------------------------------------------------------------------------
    def _split(self, stage: Stage, *, train: bool):
        if hasattr(self.model.image_encoder, "freeze_backbone"):
            self.model.image_encoder.freeze_backbone = stage.freeze_backbone
        self.model.train() if train else self.model.eval()
        return nnx.split(self.model, nnx.Param, ...)

    def init_state(self, stage: Stage, tx) -> TrainState:
        _, params, rest = self._split(stage, train=True)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                           opt_state=tx.init(params))
        # A copy: the step donates its state, and the model's own arrays must outlive it.
        return jax.device_put(jax.tree.map(jnp.copy, state), self.repl)

    def global_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(self.rows, np.asarray(v))
                for k, v in batch.items() if k in _MODEL_KEYS or k in _OFFLINE_KEYS}

    def loader(self):
        return pipeline.train_loader(self.sources["train"], global_batch_size=self.config.batch_size,
                                     seed=self.config.seed, tokenize=self.tokenize,
                                     offline=self.offline)

    def _offline_sampler(self) -> OfflineSampler | None:
        """AOQ round 2: the sampler over the lists of ``config.aoq.mining_dir`` (or None)."""
        a, train = self.config.aoq, self.sources["train"]
        offline = [dict(s) for s in self.config.losses
                   if s["name"] == "aoq_loss" and s.get("variant", "adaptive") != "online"]
        if not a.mining_dir:
            if offline:
                raise ValueError(
                    f"aoq_loss variant {offline[0].get('variant', 'adaptive')!r} needs offline "
                    "hard negatives: run `itm-mine` with a round-1 model and set "
                    "--config.aoq.mining_dir=RUN/mining (or use variant='online').")
            return None
        from itm_jax.mining import load_mined  # itm_jax.mine imports this module

        i2t, t2i, _ = load_mined(a.mining_dir, train, h_t=a.h_t, h_i=a.h_i)
        return OfflineSampler(train, i2t, t2i, h_t=a.h_t, h_i=a.h_i,
                              captions_per_image=self.config.data.caps_per_image,
                              resample_matching=a.resample_matching)

    # ----- evaluation ----------------------------------------------------------------------
    @functools.cached_property
    def _embed_fn(self):
        graphdef, _, _ = self._split(self.stages[-1], train=False)

        @functools.partial(jax.jit, static_argnums=0, out_shardings=self.repl)
        def run(kind, params, rest, batch):
            model = nnx.merge(graphdef, params, rest)
            return model.embed_images(batch) if kind == "images" else model.embed_captions(batch)

        return run

    def embed(self, params, rest, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``[N, D]`` image and ``[M, D]`` caption outputs of a split, index order."""
        src, bs = self.sources[split], self.config.eval_batch_size
        out = {}
        for kind in ("images", "captions"):
            rows = []
            for batch in pipeline.eval_batches(src, batch_size=bs, kind=kind,
                                               tokenize=self.tokenize):
                mask = jax.make_array_from_process_local_data(self.rows, batch["mask"])
                # Cosine scores for every model, also those trained on unnormalised outputs
                # (CMPM, the instance loss), as the papers evaluate.
                emb = l2_normalize(self._embed_fn(kind, params, rest, self.global_batch(batch)))
                rows.append(np.asarray(emb)[np.asarray(jax.device_get(mask))])
            out[kind] = np.concatenate(rows)
        return out["images"], out["captions"]

    def evaluate(self, params, rest, split: str = "val") -> dict[str, float]:
        return self.metrics(*self.embed(params, rest, split), split)

    def metrics(self, img: np.ndarray, cap: np.ndarray, split: str) -> dict[str, float]:
        """Metrics of a split's embeddings: the config's protocol on test, ``all`` otherwise."""
        src = self.sources[split]
        protocol = self.config.eval_protocol if split == "test" else "all"
        # Person identities where the source has them (CUHK-PEDES), for the t2i protocol.
        return protocol_metrics(img, cap, src.cap_to_img, protocol,
                                image_labels=getattr(src, "labels", None))

    def initial_weights(self):
        """``(params, rest)`` of the freshly initialised model (the untrained baseline)."""
        _, params, rest = self._split(self.stages[-1], train=False)
        return jax.device_put((params, rest), self.repl)

    def best_weights(self):
        """``(params, rest)`` of the best validation checkpoint (params-only restore)."""
        _, params, rest = self._split(self.stages[-1], train=False)
        return self.ckpt.restore_best(jax.device_put(TrainState(0, params, rest, None), self.repl))

    # ----- training ------------------------------------------------------------------------
    def train(self) -> TrainState:
        c = self.config
        state, it = None, iter(self.loader())
        restored = self.ckpt.latest_step()
        with MetricWriter(self.workdir) as writer:
            for stage in self.stages:
                if restored is not None and restored >= stage.end:
                    continue
                graphdef, params, _ = self._split(stage, train=True)
                tx, schedule = make_optimizer(c, stage, self.spe, params)
                fresh = self.init_state(stage, tx)
                if restored is not None and restored >= stage.start and state is None:
                    state = self.ckpt.restore(restored, fresh, it)
                elif state is not None:  # next stage: new optimiser on the trained weights
                    state = fresh.replace(step=state.step, params=state.params, rest=state.rest,
                                          opt_state=jax.device_put(tx.init(state.params), self.repl))
                else:
                    state = self._init_from(fresh)
                state = self._run_stage(stage, state, it, graphdef, tx, schedule, writer)
        return state

    def _init_from(self, state: TrainState) -> TrainState:
        """A fresh state with the weights of ``config.init_from`` (a run directory) where names
        and shapes match: ConVSE's heads start on a trained VSE++ base network."""
        source = self.config.get("init_from", "")
        if not source:
            return state
        _, stored = checkpointing.read_weights(source)
        params = copy_matching(state.params, stored["params"], source)
        rest = copy_matching(state.rest, stored["rest"], source) if jax.tree.leaves(state.rest) \
            else state.rest
        return state.replace(params=jax.device_put(params, self.repl),
                             rest=jax.device_put(rest, self.repl))

    def _run_stage(self, stage, state, it, graphdef, tx, schedule, writer) -> TrainState:
        c = self.config
        step_fn = jax.jit(
            functools.partial(train_step, graphdef=graphdef, tx=tx, losses=stage.losses,
                              use_id_positives=c.use_id_positives),
            in_shardings=(self.repl, self.rows), out_shardings=(self.repl, self.repl, self.repl),
            donate_argnums=0,
        )
        step = int(state.step)
        progress = Progress(self.num_steps, start=step, every=c.log_every,
                            desc=f"stage {stage.index}")
        pending = None  # the previous step's (step, metrics, finite), checked one step late
        try:
            while step < stage.end:
                batch = self.global_batch(next(it))
                state, metrics, finite = step_fn(state, batch)
                if pending is not None:
                    self._check_finite(*pending)
                step += 1
                pending = (step, metrics, finite)
                if step % c.log_every == 0 or step == stage.end:
                    self._check_finite(*pending)
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    lr = float(schedule(step - 1 - stage.start))
                    writer.write(step, {**values, "lr": lr, "stage": stage.index})
                    progress.update(step, {"loss": values["loss"]})
                if c.eval_every > 0 and (step % c.eval_every == 0 or step == self.num_steps):
                    self._validate(step, state, writer)
                if step % c.checkpoint_every == 0 or step == stage.end:
                    self._check_finite(*pending)
                    self.ckpt.save(step, state, it)
            self._check_finite(*pending) if pending else None
        finally:
            progress.close()
        return state

    @staticmethod
    def _check_finite(step, metrics, finite):
        if not bool(finite):
            terms = {k: float(v) for k, v in jax.device_get(metrics).items()}
            raise FloatingPointError(
                f"Non-finite loss at step {step}: {terms}. The update was not applied and the "
                "last good checkpoint is kept; lower the learning rate, check the inputs, or "
                "raise the temperature/epsilon of the loss."
            )

    def _validate(self, step, state, writer):
        metrics = self.evaluate(state.params, state.rest, "val")
        writer.write(step, {f"val/{k}": v for k, v in metrics.items()})
        self.ckpt.save_best(step, state, metrics["rsum"])


def train_and_evaluate(config, workdir: str | pathlib.Path) -> dict[str, float]:
    """Trains (resuming from ``workdir``), then evaluates the best checkpoint on the test split.

    Returns the test metrics (also written to ``workdir/test_metrics.json``).
    """
    workdir = pathlib.Path(workdir)
    trainer = Trainer(config, workdir)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    state = trainer.train()
    params, rest = trainer.best_weights() if config.eval_every > 0 else (state.params, state.rest)
    metrics = trainer.evaluate(params, rest, "test")
    if jax.process_index() == 0:
        (workdir / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        with MetricWriter(workdir) as writer:
            writer.write(int(state.step), {f"test/{k}": v for k, v in metrics.items()})
    return metrics
