"""config_checks: one-line errors for each class of config mistake, every shipped config and
preset valid, and the config drift a restart is checked for."""

from __future__ import annotations

import inspect
import json

import jax
import pytest

from itm_jax import config_checks
from itm_jax import losses as L
from itm_jax.config_checks import ABSENT, config_drift, drift_message, validate
from itm_jax.errors import ConfigError
from test_configs import SMOKE_SPECS, SPECS, load
from train_utils import load_config


def _set(path: str, value):
    """A mutation of the config at a dotted path (list entries by index, new keys allowed)."""
    def apply(c):
        *parents, last = path.split(".")
        for key in parents:
            c = c[int(key)] if key.isdigit() else c[key]
        c[int(last) if last.isdigit() else last] = value
    return apply


DEVICES = 4  # tests/conftest.py's simulated CPU devices, which mesh.data=-1 spans

# (configs/default.py preset, mutation, text the message must hold: the field and what is
# valid or the fix).
MISTAKES = {
    # losses: names, hyper-parameter names, ranges and options
    "unknown loss": ("", _set("losses.0.name", "max_hinges"),
                     ["config.losses.0.name='max_hinges'", "max_of_hinges, multimodal_nce"]),
    "no losses": ("loss=sh", _set("losses", []), ["config.losses=[]"]),
    "unknown hyper-parameter": ("", _set("losses.0.margn", 0.1),
                                ["config.losses.0.margn", "valid: margin, reduction"]),
    "trainer's argument": ("", _set("losses.0.positives", True),
                           ["config.losses.0.positives", "no hyper-parameter"]),
    "negative margin": ("", _set("losses.0.margin", -0.2), ["config.losses.0.margin=-0.2", ">= 0"]),
    "nan margin": ("", _set("losses.0.margin", float("nan")), ["config.losses.0.margin=nan"]),
    "margin as text": ("", _set("losses.0", {"name": "max_of_hinges", "margin": "0.2"}),
                       ["config.losses.0.margin='0.2'"]),
    "zero temperature": ("loss=convse", _set("losses.0.tau", 0.0), ["config.losses.0.tau=0.0",
                                                                    "> 0"]),
    "zero eps": ("loss=cmpm", _set("losses.0.eps", 0.0), ["config.losses.0.eps=0.0"]),
    "negative lam": ("loss=imc", _set("losses.0.lam", -1.0), ["config.losses.0.lam=-1.0"]),
    "imc delta": ("loss=imc", _set("losses.0.delta", "l3"),
                  ["config.losses.0.delta='l3'", "cosine, l1, l2, msd"]),
    "imc variant": ("loss=imc", _set("losses.0.variant", "authors"),
                    ["config.losses.0.variant='authors'", "reference, paper"]),
    "imc thresholds": ("loss=imc", _set("losses.0.mu_up", 1.5),
                       ["config.losses.0.mu_up=1.5", "mu_down < mu_up < 1"]),
    "imc chunk": ("loss=imc", _set("losses.0.chunk_size", 0), ["config.losses.0.chunk_size=0"]),
    "aoq alpha": ("loss=aoq", _set("losses.0.alpha", 0.0), ["config.losses.0.alpha=0.0", "> 0"]),
    "aoq beta": ("loss=aoq", _set("losses.0.beta", -1.5), ["config.losses.0.beta=-1.5"]),
    "aoq variant": ("loss=aoq", _set("losses.0.variant", "quintuplet"),
                    ["config.losses.0.variant='quintuplet'", "online, offtri, offquin, adaptive"]),
    "aoq detach": ("loss=aoq", _set("losses.0.detach_weights", 1),
                   ["config.losses.0.detach_weights=1", "True or False"]),
    "reduction": ("", _set("losses.0.reduction", "avg"), ["config.losses.0.reduction='avg'",
                                                          "sum, mean"]),
    "negative weight": ("", _set("losses.0.weight", -1.0), ["config.losses.0.weight=-1.0"]),
    "duplicate label": ("", _set("losses.1.label", "max_of_hinges"),
                        ["config.losses.1.label='max_of_hinges'", "distinct"]),
    "no active term": ("loss=sh", _set("losses.0.weight", 0.0),
                       ["config.losses", "no active loss term"]),
    "classifier for cmpc": ("loss=cmpm", lambda c: c.losses.append({"name": "cmpc"}),
                            ["config.model.classifier='none'", "'norm'"]),
    # stages and their lengths
    "unknown loss_weights": ("", _set("stages.0.loss_weights", {"cmpm": 1.0}),
                             ["stages[0].loss_weights", "cmpm", "max_of_hinges, sum_of_hinges"]),
    "all weights 0 in a stage": ("", _set("stages.0.loss_weights", {"max_of_hinges": 0.0,
                                                                 "sum_of_hinges": 0.0}),
                                 ["config.stages.0.loss_weights", "no active loss term"]),
    "negative stage weight": ("", _set("stages.0.loss_weights.sum_of_hinges", -1.0),
                              ["config.stages.0.loss_weights.sum_of_hinges=-1.0"]),
    "zero-epoch stage": ("", _set("num_epochs", 1), ["config.stages.1.epochs=0"]),
    "zero-step stage": ("smoke", _set("stages", [{"steps": 0}]), ["config.stages.0.steps=0"]),
    "zero epochs": ("loss=sh", _set("num_epochs", 0), ["config.num_epochs=0"]),
    "stage learning rate": ("", _set("stages.1.learning_rate", 0.0),
                            ["config.stages.1.learning_rate=0.0", "> 0"]),
    "stage freeze regex": ("", _set("stages.0.freeze", "(text"),
                           ["config.stages.0.freeze='(text'"]),
    # optimiser
    "learning rate 0": ("", _set("optim.learning_rate", 0.0),
                        ["config.optim.learning_rate=0.0", "> 0"]),
    "optimiser": ("", _set("optim.name", "adamw"), ["optim.name='adamw'", "adam, sgd"]),
    "grad clip": ("", _set("optim.grad_clip", -1.0), ["config.optim.grad_clip=-1.0"]),
    "weight decay": ("", _set("optim.weight_decay", -1e-4), ["config.optim.weight_decay"]),
    "momentum": ("", _set("optim.momentum", 1.0), ["config.optim.momentum=1.0", "< 1"]),
    "decay factor": ("", _set("optim.lr_decay_factor", 0.0), ["config.optim.lr_decay_factor"]),
    "decay every 0 epochs": ("loss=sh", _set("num_epochs", 1),
                             ["config.optim.lr_decay_epochs=0", "lr_decay_factor=1"]),
    "freeze regex": ("", _set("optim.freeze", "[a"), ["config.optim.freeze='[a'"]),
    "multiplier regex": ("", _set("optim.lr_multipliers", (("(conv", 0.1),)),
                         ["config.optim.lr_multipliers.0='(conv'"]),
    "multiplier factor": ("", _set("optim.lr_multipliers", (("conv", -1.0),)),
                          ["config.optim.lr_multipliers.0=-1.0"]),
    # batches, devices, cadence
    "negative batch": ("", _set("batch_size", -4), ["config.batch_size=-4", "multiple of 4"]),
    "batch off the devices": ("", _set("batch_size", 130), ["config.batch_size=130"]),
    "eval batch": ("", _set("eval_batch_size", 0), ["config.eval_batch_size=0"]),
    "mesh 0": ("", _set("mesh.data", 0), ["config.mesh.data=0", "-1 (all 4 devices)"]),
    "mesh too large": ("", _set("mesh.data", 5), ["config.mesh.data=5", "1..4"]),
    "eval_every": ("", _set("eval_every", -1), ["config.eval_every=-1"]),
    "checkpoint_every": ("", _set("checkpoint_every", 0), ["config.checkpoint_every=0"]),
    "log_every": ("", _set("log_every", 0), ["config.log_every=0"]),
    "keep_checkpoints": ("", _set("keep_checkpoints", 0), ["config.keep_checkpoints=0"]),
    "aoq h_t": ("loss=aoq", _set("aoq.h_t", 0), ["config.aoq.h_t=0"]),
    # evaluation, data, model
    "protocol": ("", _set("eval_protocol", "5k"), ["config.eval_protocol='5k'", "all, coco, t2i"]),
    "dataset": ("", _set("data.name", "flickr"), ["config.data.name='flickr'", "synthetic"]),
    "karpathy config": ("", _set("data.name", "karpathy/f30k"),
                        ["config.data.name='karpathy/f30k'", "flickr30k"]),
    "image encoder": ("", _set("model.image", "vit"), ["config.model.image='vit'", "resnet152"]),
    "text encoder": ("", _set("model.text", "lstm"), ["config.model.text='lstm'", "bilstm_max"]),
    "gru_impl": ("", _set("model.gru_impl", "fast"), ["config.model.gru_impl='fast'", "packed"]),
    "model combination": ("", _set("model.image_head", "dual_path"),
                          ["config.model.image_head='dual_path'", "precomp"]),
}


def test_tests_run_on_the_devices_the_messages_name():
    assert jax.device_count() == DEVICES


@pytest.mark.parametrize("name", MISTAKES)
def test_each_mistake_is_one_line_naming_the_field(name):
    arg, mutate, expected = MISTAKES[name]
    config = load_config("default.py", arg)
    validate(config)  # the preset itself is valid: the mutation is the mistake
    mutate(config)
    with pytest.raises(ConfigError) as err:
        validate(config)
    message = str(err.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, (text, message)


def test_messages_state_the_valid_values_and_the_fix():
    config = load_config("default.py", "")
    config.batch_size = -4
    with pytest.raises(ConfigError, match=r"^config\.batch_size=-4 is invalid; valid: a positive "
                       r"multiple of 4, .* Fix: pass --config\.batch_size="):
        validate(config)


@pytest.mark.parametrize("name,arg", SPECS + SMOKE_SPECS,
                         ids=[f"{n}:{p}" for n, p in SPECS + SMOKE_SPECS])
def test_every_shipped_config_and_preset_validates(name, arg):
    validate(load(name, arg))


@pytest.mark.parametrize("arg", ["", "smoke", "no_warmup", *(f"loss={k}" for k in (
    "sh", "mh", "imc", "convse", "convse++", "cmpm", "aoq"))])
def test_default_presets_validate(arg):
    validate(load("default", arg))


def test_what_tests_and_the_trainer_legitimately_use_validates():
    config = load_config()
    # A run of 0 steps (the initial model), no validation, no decay, one device, plain dicts.
    config.num_steps, config.eval_every, config.mesh.data, config.batch_size = 0, 0, 1, 30
    config.optim.update(lr_decay_factor=1.0, lr_decay_epochs=0)
    config.losses = [{"name": "imc", "delta": "l1", "margin": 0.2, "chunk_size": None},
                     {"name": "sum_of_hinges", "weight": 0.0}]
    config.stages = []
    validate(config)
    config.stages = [{"steps": 2, "freeze": "text_encoder"},
                     {"steps": 2, "learning_rate": 1e-3, "loss_weights": {"sum_of_hinges": 0.5}}]
    validate(config)


def test_every_loss_hyper_parameter_has_a_rule_its_default_passes():
    for name in L.names():
        fn = L.get(name)
        for key, p in inspect.signature(fn).parameters.items():
            if p.kind is not p.KEYWORD_ONLY or key in ("positives", "with_aux"):
                continue
            if isinstance(p.default, str):
                assert p.default in config_checks.loss_options(fn, key), (name, key)
            elif not isinstance(p.default, bool):
                test, _ = config_checks.HYPER_PARAMETER_RANGES[key]
                assert p.default is None or test(p.default), (name, key)


# ----- config drift ----------------------------------------------------------------------------
def _json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def test_identical_configs_do_not_drift():
    assert config_drift(_json(load("vse_f30k")), _json(load("vse_f30k"))) == []


@pytest.mark.parametrize("override", [
    "--config.data.data_dir=/mnt/tfds", "--config.data.word_vectors=/mnt/glove.txt",
    "--config.model.pretrained=/mnt/r152.npz", "--config.eval_every=500", "--config.log_every=1",
    "--config.checkpoint_every=10", "--config.keep_checkpoints=5", "--config.eval_batch_size=64",
    "--config.mesh.data=2", "--config.model.gru_impl=scan", "--config.eval_protocol=coco",
])
def test_safe_fields_do_not_drift(override, monkeypatch):
    saved = _json(load("vse_f30k"))
    new = _json(load("vse_f30k", "", override, monkeypatch=monkeypatch))
    assert new != saved
    assert config_drift(saved, new) == []
    assert len(config_drift(saved, new, safe=())) == 1  # listed when nothing is safe


def test_unsafe_fields_are_listed():
    saved = _json(load("default"))
    new = json.loads(json.dumps(saved))
    new["losses"][0].update(name="sum_of_hinges", margin=0.1)
    new["eval_every"] = 1  # safe: not listed
    assert config_drift(saved, new) == [("losses.0.name", "max_of_hinges", "sum_of_hinges"),
                                        ("losses.0.margin", 0.2, 0.1)]


def test_a_longer_schedule_drifts_where_it_changes_the_training(monkeypatch):
    # configs/default.py: the second stage and the decay follow num_epochs.
    saved = _json(load("default"))
    new = _json(load("default", "", "--config.num_epochs=20", monkeypatch=monkeypatch))
    assert config_drift(saved, new) == [("num_epochs", 12, 20), ("stages.1.epochs", 11, 19),
                                        ("optim.lr_decay_epochs", 10, 18)]


def test_fields_on_one_side_only_are_listed():
    saved = _json(load("default", "loss=sh"))
    new = json.loads(json.dumps(saved))
    new["losses"].append({"name": "cmpm", "weight": 0.0})
    del new["aoq"]["h_t"]
    new["stages"] = [{"steps": 5}]
    assert config_drift(saved, new) == [
        ("stages", [], ABSENT), ("aoq.h_t", 300, ABSENT), ("losses.1.name", ABSENT, "cmpm"),
        ("losses.1.weight", ABSENT, 0.0), ("stages.0.steps", ABSENT, 5)]
    # The run directory records the drift as JSON.
    assert json.loads(json.dumps(config_drift(saved, new)))[0] == ["stages", [], "<absent>"]


def test_drift_message_lists_fields_and_both_ways_on():
    drift = [("losses.0.name", "max_of_hinges", "sum_of_hinges"), ("stages", [], ABSENT)]
    message = drift_message("workdir/run", drift)
    assert "\n" not in message and message.startswith("workdir/run ")
    assert 'losses.0.name: "max_of_hinges" -> "sum_of_hinges"' in message
    assert "stages: [] -> <absent>" in message
    assert "--workdir" in message and "--accept_config_change" in message
    many = [(f"losses.0.f{k}", k, k + 1) for k in range(9)] + [("x", "a" * 100, 1)]
    message = drift_message("w", many)
    assert "losses.0.f4: 4 -> 5" in message and "f5" not in message
    assert "and 5 more" in message and len(message) < 500
    assert "a" * 50 not in drift_message("w", many[-1:])  # long values are cut


def test_drift_of_real_presets_names_the_loss():
    saved = _json(load("vse_f30k", "loss=mh"))
    new = _json(load("vse_f30k", "loss=sh"))
    assert config_drift(saved, new) == [("losses.0.name", "max_of_hinges", "sum_of_hinges")]


REGION_MISTAKES = {  # (config, preset, mutation, text the message must hold)
    "scan option value": ("scan_f30k.py", "smoke", _set("model.scan.agg", "median"),
                          ["config.model.scan", "agg='median'", "logsumexp"]),
    "scan option name": ("scan_f30k.py", "smoke", _set("model.scan.lambda", 9.0),
                         ["config.model.scan.lambda", "lambda_softmax"]),
    "bfan focal": ("bfan_f30k.py", "smoke", _set("model.bfan.focal", "soft"),
                   ["config.model.bfan", "focal"]),
    "set model, dot scorer": ("scan_f30k.py", "smoke", _set("model.scorer", "dot"),
                              ["config.model.scorer='dot'", "scan, bfan"]),
    "unknown scorer": ("scan_f30k.py", "smoke", _set("model.scorer", "clip"),
                       ["config.model.scorer='clip'", "dot, scan, bfan"]),
    "set model, embedding loss": ("scan_f30k.py", "smoke",
                                  _set("losses.0", {"name": "imc", "margin": 0.2}),
                                  ["imc reads global embeddings", "max_of_hinges"]),
    "caption term without branch": ("vsrn_f30k.py", "smoke", _set("model.caption_generator", False),
                                    ["caption_generator", "caption_generation"]),
    "vsrn variant": ("vsrn_f30k.py", "smoke", _set("model.vsrn_variant", "f8k"),
                     ["config.model.vsrn_variant='f8k'", "coco, f30k"]),
}


@pytest.mark.parametrize("name", REGION_MISTAKES)
def test_region_model_mistakes_are_one_line(name):
    config_file, arg, mutate, expected = REGION_MISTAKES[name]
    config = load_config(config_file, arg)
    validate(config)
    mutate(config)
    with pytest.raises(ConfigError) as err:
        validate(config)
    message = str(err.value)
    assert "\n" not in message and all(text in message for text in expected), message
