"""Training system: sharded parity, resume, overrides, non-finite losses, stages."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from itm_jax.errors import RunError
from itm_jax.experiment import Experiment
from itm_jax.training import loop, optim
from itm_jax.training.metric_writer import MetricWriter
from itm_jax.training.step import TrainState, train_step
from train_utils import ROOT, assert_same_params, flat_params, load_config

LOSSES = {
    "mh": [{"name": "max_of_hinges", "margin": 0.2}],
    "imc": [{"name": "imc", "delta": "l1", "margin": 0.2}],
    "convse": [{"name": "contrastive_sum_negatives", "tau": 0.1}],
}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # One synthetic cache for the session: generating it is the slow part of a smoke run.
    monkeypatch.setenv("ITM_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _train(config, workdir):
    return loop.train(Experiment(config, workdir))


def _config(steps=3, devices=1, losses="mh", **overrides):
    c = load_config()
    c.num_steps = steps
    c.mesh.data = devices
    c.eval_every = 0
    c.checkpoint_every = 100
    c.losses = LOSSES[losses]
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


@pytest.mark.parametrize("losses", sorted(LOSSES))
def test_four_devices_match_one(tmp_path, losses):
    one = _train(_config(devices=1, losses=losses), tmp_path / "one")
    four = _train(_config(devices=4, losses=losses), tmp_path / "four")
    assert int(four.step) == 3
    assert next(iter(jax.tree.leaves(four.params))).sharding.num_devices == 4
    assert_same_params(one, four)
    # The run moved the parameters (a test of nothing would pass too).
    init = Experiment(_config(steps=0, devices=1, losses=losses), tmp_path / "zero")
    init_params = flat_params(loop.fresh_state(init, init.stages[0], optim.make_optimizer(
        init.config, init.stages[0], init.spe, init.split(init.stages[0], train=True)[1])[0]))
    moved = [np.abs(v - init_params[k]).max() for k, v in flat_params(one).items()]
    assert max(moved) > 1e-5


def test_resume_continues_the_same_run(tmp_path):
    full = _train(_config(steps=6), tmp_path / "full")
    _train(_config(steps=3, checkpoint_every=3), tmp_path / "resumed")
    # A kill during the write of a later checkpoint leaves only orbax's temporary directory.
    partial = tmp_path / "resumed" / "checkpoints" / "5.orbax-checkpoint-tmp-1700000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "_METADATA").write_text("{trunc")
    resumed_exp = Experiment(_config(steps=6, checkpoint_every=3), tmp_path / "resumed")
    assert resumed_exp.checkpoints.latest_step() == 3
    resumed = loop.train(resumed_exp)
    assert int(resumed.step) == 6
    assert_same_params(full, resumed, rtol=1e-6, atol=1e-7)


def test_resume_on_another_device_count(tmp_path):
    one = _train(_config(steps=4), tmp_path / "one")
    _train(_config(steps=2, devices=4, checkpoint_every=2), tmp_path / "moved")
    moved = _train(_config(steps=4, devices=1), tmp_path / "moved")
    assert next(iter(jax.tree.leaves(moved.params))).sharding.num_devices == 1
    assert_same_params(one, moved)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    _train(_config(steps=2, checkpoint_every=2), tmp_path)
    c = _config(steps=4, checkpoint_every=1)
    c.losses = [{"name": "max_of_hinges", "margin": float("nan")}]
    exp = Experiment(c, tmp_path)
    with pytest.raises(loop.NonFiniteLoss, match="Non-finite loss at step 3"):
        loop.train(exp)
    assert exp.checkpoints.latest_step() == 2
    good = Experiment(_config(steps=2), tmp_path)
    stage = good.stages[0]
    tx, _ = optim.make_optimizer(good.config, stage, good.spe, good.split(stage, train=True)[1])
    restored = good.checkpoints.restore(2, loop.fresh_state(good, stage, tx), iter(good.loader()))
    assert all(np.isfinite(v).all() for v in flat_params(restored).values())


def test_a_non_finite_step_returns_its_input_state(tmp_path):
    # The guard inside the step: a NaN loss leaves parameters, Adam moments and the step count
    # as they were; a finite loss changes every one of them.
    exp = Experiment(_config(), tmp_path)
    stage = exp.stages[0]
    graphdef, params, _ = exp.split(stage, train=True)
    tx, _ = optim.make_optimizer(exp.config, stage, exp.spe, params)
    batch = exp.global_batch(next(iter(exp.loader())))
    before = jax.device_get(loop.fresh_state(exp, stage, tx))
    for margin, finite in ((float("nan"), False), (0.2, True)):
        step = jax.jit(functools.partial(
            train_step, graphdef=graphdef, tx=tx, use_id_positives=True,
            losses=({"name": "max_of_hinges", "weight": 1.0, "margin": margin},)))
        after, metrics, ok = jax.device_get(step(loop.fresh_state(exp, stage, tx), batch))
        assert bool(ok) == finite == bool(np.isfinite(metrics["loss"]))
        assert int(after.step) == int(before.step) + finite
        for part in ("params", "opt_state"):
            leaves = zip(jax.tree.leaves(getattr(after, part)),
                         jax.tree.leaves(getattr(before, part)))
            changed = [not np.array_equal(x, y) for x, y in leaves if np.size(x) > 1]
            assert changed and all(c == finite for c in changed), part


def test_stages_switch_weights_and_freeze(tmp_path):
    c = _config(steps=-1)
    c.losses = [{"name": "max_of_hinges", "margin": 0.2}, {"name": "sum_of_hinges", "weight": 0.0}]
    c.stages = [
        {"steps": 2, "freeze": "text_encoder"},
        {"steps": 2, "learning_rate": 1e-3, "loss_weights": {"sum_of_hinges": 0.5}},
    ]
    exp = Experiment(c, tmp_path)
    s0, s1 = exp.stages
    assert (s0.start, s0.end, s1.start, s1.end) == (0, 2, 2, 4)
    assert [l["name"] for l in s0.losses] == ["max_of_hinges"]
    assert [(l["name"], l["weight"]) for l in s1.losses] == [("max_of_hinges", 1.0),
                                                             ("sum_of_hinges", 0.5)]
    _, params, _ = exp.split(s0, train=True)
    before = flat_params(TrainState(0, params, None, None))
    tx, _ = optim.make_optimizer(c, s0, exp.spe, params)
    after = loop._run_stage(exp, s0, loop.fresh_state(exp, s0, tx), iter(exp.loader()), tx,
                            lambda s: 0.0, MetricWriter(tmp_path, enabled=False),
                            loop.StopRequest())
    after = flat_params(after)
    text = [k for k in before if "text_encoder" in k]
    image = [k for k in before if "image_encoder" in k]
    assert text and image
    assert all(np.array_equal(before[k], after[k]) for k in text)
    assert any(not np.array_equal(before[k], after[k]) for k in image)
    # Both stages end to end: a new optimiser on the trained weights at the boundary.
    assert int(_train(c, tmp_path / "both").step) == 4
    with pytest.raises(ValueError, match="unknown losses"):
        c.stages[1]["loss_weights"] = {"cmpm": 1.0}
        optim.make_stages(c, 10)


def _main(tmp_path, *overrides):
    env = {**os.environ, "ITM_JAX_CACHE": os.environ["ITM_JAX_CACHE"], "XLA_FLAGS": ""}
    return subprocess.run(
        [sys.executable, "-m", "itm_jax.main", "--config=configs/default.py:smoke",
         f"--workdir={tmp_path}", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_cli_override_reaches_the_loss_and_typos_fail(tmp_path):
    run = _main(tmp_path / "ok", "--config.losses.0.margin=0.5", "--config.num_steps=2",
                "--config.eval_every=2")
    assert run.returncode == 0, run.stderr[-3000:]
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert config["losses"][0]["margin"] == 0.5
    stage = optim.make_stages(load_config().__class__(config), 10)[0]
    assert stage.losses[0]["margin"] == 0.5
    # itm-eval restores the best weights and reproduces the run's test numbers.
    from itm_jax.run import load_run

    tested = json.loads((tmp_path / "ok" / "test_metrics.json").read_text())
    assert load_run(tmp_path / "ok").evaluate("test") == pytest.approx(tested)
    bad = _main(tmp_path / "bad", "--config.losses.0.margn=0.5")
    assert bad.returncode != 0
    assert "margn" in bad.stderr and "margin" in bad.stderr


def test_word_vectors_and_pretrained_from_config(tmp_path):
    c = _config(steps=0)
    words = ["red", "circle", "square"]
    vectors = np.arange(len(words) * c.model.word_dim, dtype=np.float32).reshape(len(words), -1)
    glove = tmp_path / "glove.txt"
    glove.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in zip(words, vectors)))
    c.data.word_vectors = str(glove)
    exp = Experiment(c, tmp_path / "run")
    table = np.asarray(exp.model.text_encoder.embed.embedding[...])
    for word, vector in zip(words, vectors):
        np.testing.assert_array_equal(table[exp.vocab.id(word)], vector)
    c.model.pretrained = str(tmp_path / "resnet50.npz")
    with pytest.raises(ValueError, match="needs a CNN image encoder"):
        Experiment(c, tmp_path / "run2")


def _one_update(config, params, grads, steps=1):
    stage = optim.make_stages(config, 10)[0]
    tx, _ = optim.make_optimizer(config, stage, 10, params)
    """The summed updates of ``steps`` steps with constant ``grads``."""
    params, grads = (jax.tree.map(lambda x: np.asarray(x, np.float32), t) for t in (params, grads))
    state, total = tx.init(params), jax.tree.map(np.zeros_like, params)
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        total = jax.tree.map(lambda t, u: t + np.asarray(u).astype(np.float64), total, updates)
    return total


def test_learning_rate_multipliers_scale_the_matched_parameters_only():
    c = _config()
    c.optim.update(name="sgd", momentum=0.0, grad_clip=0.0, weight_decay=0.0)
    rng = np.random.default_rng(0)
    params = {"image_encoder": {"backbone": {"w": rng.normal(size=(3,))}, "fc": rng.normal(size=(2,))},
              "text_encoder": {"w": rng.normal(size=(4,))}}
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape), params)
    plain = _one_update(c, params, grads)
    c.optim.lr_multipliers = ((r"^image_encoder\.backbone\.", 0.001), (r"encoder", 0.5))
    scaled = _one_update(c, params, grads)
    lr = c.optim.learning_rate
    np.testing.assert_allclose(plain["image_encoder"]["fc"], -lr * grads["image_encoder"]["fc"])
    # The first matching pattern wins.
    np.testing.assert_allclose(scaled["image_encoder"]["backbone"]["w"],
                               0.001 * plain["image_encoder"]["backbone"]["w"], rtol=1e-6)
    np.testing.assert_allclose(scaled["image_encoder"]["fc"], 0.5 * plain["image_encoder"]["fc"])
    np.testing.assert_allclose(scaled["text_encoder"]["w"], 0.5 * plain["text_encoder"]["w"])


def test_nesterov_and_clipping_act_on_the_applied_gradients():
    c = _config()
    c.optim.update(name="sgd", momentum=0.9, nesterov=True, grad_clip=0.0, weight_decay=0.0)
    params = {"a": np.ones(3), "b": np.ones(2)}
    grads = {"a": np.array([3.0, 0.0, 4.0]), "b": np.array([10.0, 0.0])}
    ref = optax.sgd(c.optim.learning_rate, momentum=0.9, nesterov=True)
    state, expect = ref.init(params), {k: np.zeros_like(v) for k, v in params.items()}
    for _ in range(3):
        u, state = ref.update(grads, state)
        expect = {k: expect[k] + np.asarray(u[k]) for k in u}
    got = _one_update(c, params, grads, steps=3)
    for k in params:
        np.testing.assert_allclose(got[k], expect[k], rtol=1e-6)
    # Frozen "b" does not count towards the clipped norm: "a" alone has norm 5 -> scaled by 1/5.
    c.optim.update(momentum=0.0, nesterov=False, grad_clip=1.0, freeze="^b")
    got = _one_update(c, params, grads)
    np.testing.assert_allclose(got["a"], -c.optim.learning_rate * grads["a"] / 5.0, rtol=1e-6)
    np.testing.assert_array_equal(got["b"], 0.0)


def test_init_from_copies_a_base_run_and_leaves_new_heads_fresh(tmp_path):
    base = _config(steps=3)
    base.eval_every = 3
    _train(base, tmp_path / "base")
    stored = Experiment(base, tmp_path / "base").weights("best")[0]
    c = _config(steps=1)
    c.model.convse_head = True
    c.optim.learning_rate = 0.0  # the one step must not move the copied weights
    c.init_from = str(tmp_path / "base")
    got = flat_params(_train(c, tmp_path / "heads"))
    want = flat_params(TrainState(0, stored, None, None))
    heads = [k for k in got if "head" in k]
    assert heads and not any("head" in k for k in want)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert (tmp_path / "heads" / "vocab.json").read_text() == \
        (tmp_path / "base" / "vocab.json").read_text()
    c.init_from = str(tmp_path / "nothing")
    with pytest.raises(RunError, match="No checkpoint"):
        _train(c, tmp_path / "other")
