"""Paper configs (configs/*.py) and launch scripts (launch/*).

Every config loads locked through ``ml_collections.config_flags`` with each of its presets, names
valid losses and hyper-parameters, and builds the stage schedule its docstring's ``Schedule:``
line states. The smoke presets train end to end on the synthetic data for a representative
subset (one run per distinct image/text/head/loss combination; see ``SMOKE_RUNS``), so the file
stays within a few minutes on two CPU cores.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from itm_jax import losses as L
from itm_jax.experiment import Experiment
from itm_jax.training import loop, optim
from itm_jax.models.dual_encoder import build_dual_encoder
from itm_jax.objective import objective, outputs_from_features, required_outputs

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # configs do `from configs import default`, as itm_jax.main arranges
    sys.path.insert(0, str(ROOT))

from configs import common  # noqa: E402

NOT_RECIPES = {"__init__", "common", "default"}
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem not in NOT_RECIPES)
# Presets each config family accepts (besides `smoke`, which every config accepts).
FAMILY_PRESETS = {"vse": ["loss=sh", "loss=mh"], "convse": ["loss=csn", "loss=cmn"],
                  "cmpm": ["", "cmpc"],
                  "aoq_round2": [f"variant={v}" for v in ("adaptive", "offquin", "offtri", "online")]
                  + ["model=scan", "model=bfan"],
                  "scan": [f"direction={d},agg={a}" for d in ("t2i", "i2t") for a in ("lse", "avg")],
                  "bfan": ["focal=equal", "focal=prob"]}
# Region models keep their encoders in the smoke preset (on synthetic region features).
REGION_MODELS = ("regions", "vsrn")
LAUNCH = ["launch/local.sh", "launch/tpu_pod.sh", "launch/slurm_gpu.sbatch", "launch/aoq.sh"]


def presets(name: str) -> list[str]:
    family = name.rsplit("_", 1)[0]  # aoq_round2_f30k -> aoq_round2, else the loss family
    return FAMILY_PRESETS.get(family, FAMILY_PRESETS.get(name.split("_")[0], [""]))


SPECS = [(n, p) for n in CONFIGS for p in presets(n)]
SMOKE_SPECS = [(n, ",".join(filter(None, [p, "smoke"]))) for n, p in SPECS]
SPEC_IDS = [f"{n}:{p}" for n, p in SPECS]


def load(name: str, arg: str = "", *overrides: str, monkeypatch=None):
    """The config as ``itm_jax.main`` loads it: ``--config=configs/<name>.py[:arg]``, locked."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True)
    argv = ["prog", f"--config={ROOT / 'configs' / name}.py" + (f":{arg}" if arg else ""),
            *overrides]
    if monkeypatch is not None:  # config_flags reads field overrides from sys.argv itself
        monkeypatch.setattr(sys, "argv", argv)
    fv(argv)
    return fv.config


def test_every_config_is_covered():
    expected = {"vse_f30k", "vse_coco", "imc_f30k", "imc_coco", "cmpm_f30k", "cmpm_coco",
                "cmpm_cuhk_pedes", "dual_path_f30k", "dual_path_coco", "convse_f30k",
                "convse_coco", "aoq_round1_f30k", "aoq_round1_coco", "aoq_round2_f30k",
                "aoq_round2_coco", "scan_f30k", "scan_coco", "bfan_f30k", "bfan_coco",
                "vsrn_f30k", "vsrn_coco"}
    assert set(CONFIGS) == expected


# ----- loading ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,arg", SPECS + SMOKE_SPECS,
                         ids=SPEC_IDS + [f"{n}:{p}" for n, p in SMOKE_SPECS])
def test_loads_locked(name, arg):
    c = load(name, arg)
    assert c.is_locked
    with pytest.raises(AttributeError):
        c.optim.learnig_rate = 1.0
    with pytest.raises(AttributeError):
        c.num_epoch = 3
    # config.lock() does not reach ConfigDicts inside lists; configs/common.py locks them.
    for entry in [*c.losses, *c.stages]:
        assert entry.is_locked
        with pytest.raises(AttributeError):
            entry.margn = 0.1
    # Fields are typed: a wrong type is an error too.
    with pytest.raises(TypeError):
        c.batch_size = "big"


def test_unknown_presets_fail():
    # config_flags reports the config's ValueError as an illegal flag value.
    with pytest.raises(flags.IllegalFlagValueError, match="valid: sh, mh"):
        load("vse_f30k", "loss=xx")
    with pytest.raises(flags.IllegalFlagValueError, match="Unknown preset option 'cmpc'"):
        load("imc_f30k", "cmpc")
    with pytest.raises(flags.IllegalFlagValueError, match="is a flag"):
        load("cmpm_f30k", "cmpc=maybe")


def test_parse_arg():
    a = common.parse_arg("loss=sh, smoke ,n=3,lr=0.5,cmpc=false", loss="mh", smoke=False, n=1,
                         lr=1.0, cmpc=True)
    assert (a.loss, a.smoke, a.n, a.lr, a.cmpc) == ("sh", True, 3, 0.5, False)
    assert common.parse_arg(None, smoke=False).smoke is False
    with pytest.raises(ValueError, match="needs a value"):
        common.parse_arg("n", n=1)
    with pytest.raises(ValueError, match="not a int"):
        common.parse_arg("n=x", n=1)


def test_cli_overrides_reach_list_entries(monkeypatch):
    c = load("vse_f30k", "loss=mh", "--config.stages[1].learning_rate=1e-5",
             "--config.losses[0].margin=0.05", monkeypatch=monkeypatch)
    assert c.stages[1].learning_rate == 1e-5 and c.losses[0].margin == 0.05
    with pytest.raises(AttributeError, match="learning_rate"):
        load("convse_f30k", "", "--config.stages[0].learnin_rate=1e-5", monkeypatch=monkeypatch)


def test_default_schedule_follows_num_epochs(monkeypatch):
    # configs/default.py: the SH warm-up epoch, then the loss; x0.1 for the last epoch. Both
    # follow --config.num_epochs; a stage's schedule counts from the stage's start.
    spe = 156
    for arg, epochs, warm in (("", 4, True), ("loss=sh", 4, False), ("loss=imc", 7, True),
                              ("no_warmup", 6, False)):
        c = load("default", arg, f"--config.num_epochs={epochs}", monkeypatch=monkeypatch)
        stages = optim.make_stages(c, spe)
        assert [(s.start, s.end) for s in stages] == (
            [(0, spe), (spe, epochs * spe)] if warm else [(0, epochs * spe)])
        assert stages[0].losses[0]["name"] == (
            "sum_of_hinges" if warm or arg == "loss=sh" else "max_of_hinges")
        decay_at = stages[-1].start + optim.to_steps(c.optim, spe, prefix="lr_decay_")
        assert decay_at == (epochs - 1) * spe
    with pytest.raises(flags.IllegalFlagValueError, match="no_warmup"):
        load("default", "warmup")


def test_docstrings_state_target_command_and_data():
    for name in CONFIGS:
        doc = importlib.import_module(f"configs.{name}").__doc__
        assert f"python -m itm_jax.main --config=configs/{name}.py" in doc, name
        assert "--workdir=" in doc and "Target" in doc and "differ" in doc.lower(), name
        c = load(name, presets(name)[0])
        assert f'data.name="{c.data.name}"' in doc, name
        assert "data.data_dir" in doc, name


# ----- losses ------------------------------------------------------------------------------------
def _dummy_outputs(b=6, d=8, classes=10):
    k = jax.random.split(jax.random.key(0), 6)
    labels = jnp.array([0, 0, 1, 2, 3, 4])[:b]
    offline = jax.random.uniform(k[5], (4, b), minval=-1, maxval=1)
    return outputs_from_features(
        jax.random.normal(k[0], (b, d)), jax.random.normal(k[1], (b, d)),
        image_ids=labels, labels=labels,
        img_logits=jax.random.normal(k[2], (b, classes)),
        txt_logits=jax.random.normal(k[3], (b, classes)),
        cls_weight=jax.random.normal(k[4], (d, classes)),
        **dict(zip(("s_i_toff", "s_ioff_t", "s_ioff_toff", "s_itilde_ttilde"), offline)),
        caption_log_probs=jax.nn.log_softmax(jax.random.normal(k[5], (b, 4, classes))),
        caption_targets=jnp.ones((b, 4), jnp.int32), caption_mask=jnp.ones((b, 4)),
    )


@pytest.mark.parametrize("name,arg", SPECS, ids=SPEC_IDS)
def test_losses_are_valid(name, arg):
    c = load(name, arg)
    for spec in c.losses:
        fn = L.get(spec.name)  # raises on an unknown name
        params = inspect.signature(fn).parameters
        valid = {p for p, v in params.items() if v.kind is v.KEYWORD_ONLY}
        valid -= {"with_aux", "positives"}  # set by the trainer, not by configs
        assert set(spec) - {"name", "weight", "label"} <= valid, (spec.name, valid)
        # 0 lists a term a stage or a derived config switches on (dual-path Flickr30K's rank).
        assert spec.weight >= 0
    assert any(spec.weight > 0 for spec in c.losses)
    # The values too: the objective runs on dummy outputs and every term is finite.
    total, terms = objective(_dummy_outputs(), [dict(s) for s in c.losses])
    assert np.isfinite(float(total)) and all(np.isfinite(float(v)) for v in terms.values())
    # The model provides what the losses read.
    needs = required_outputs(c.losses)
    assert ("cls_weight" in needs) == (c.model.classifier == "norm")
    assert ("img_logits" in needs) == (c.model.classifier == "shared")
    if needs & {"img_feat", "txt_feat"}:  # CMPM/CMPC take the unnormalised features
        assert not c.model.normalize


# ----- schedules -------------------------------------------------------------------------------
_ITEM = re.compile(r"^(\d+(?:\.\d+)?) @ ([0-9.e+-]+)(?: \(x([0-9.]+) every (\d+)\))?( frozen)?$")


def documented_schedule(name, arg=""):
    """``[(epochs, lr, decay_every or None, frozen)]`` from the docstring's ``Schedule:`` line,
    or its ``Schedule (preset|preset): `` line for those presets."""
    doc = importlib.import_module(f"configs.{name}").__doc__
    lines = dict(re.findall(r"^Schedule(?: \((.+)\))?: (.+)$", doc, re.M))
    own = [text for presets, text in lines.items() if presets and
           any(p in arg.split(",") for p in presets.split("|"))]
    line = own[0] if own else lines[""]
    out = []
    for item in line.rstrip(".").split(", "):
        m = _ITEM.match(item)
        assert m, f"{name}: cannot parse schedule item {item!r}"
        out.append((float(m[1]), float(m[2]), m[4] and int(m[4]), bool(m[5])))
        if m[3]:
            assert float(m[3]) == 0.1
    return out


@pytest.mark.parametrize("name,arg", SPECS, ids=SPEC_IDS)
def test_stages_match_docstring(name, arg):
    c, spe = load(name, arg), 100
    stages = optim.make_stages(c, spe)
    documented = documented_schedule(name, arg)
    assert len(stages) == len(documented)
    decay_steps = optim.to_steps(c.optim, spe, prefix="lr_decay_")
    start = 0
    for s, (epochs, lr, every, frozen) in zip(stages, documented):
        assert (s.start, s.end) == (start, start + round(epochs * spe))
        assert math.isclose(s.learning_rate, lr, rel_tol=1e-9)
        assert s.freeze_backbone == frozen
        # A frozen backbone is also kept out of the optimiser (weight decay, momentum).
        assert (s.freeze == common.BACKBONE) == (frozen and c.model.image != "precomp")
        if every:
            assert c.optim.lr_decay_factor == 0.1 and decay_steps == every * spe
        else:  # no decay inside the stage
            assert c.optim.lr_decay_factor == 1.0 or decay_steps >= s.end - s.start
        assert s.losses, f"stage {s.index} has no active loss"
        start = s.end


@pytest.mark.parametrize("name,arg", SMOKE_SPECS, ids=[f"{n}:{p}" for n, p in SMOKE_SPECS])
def test_smoke_keeps_the_recipe_and_is_tiny(name, arg):
    full, smoke = load(name, arg.removesuffix("smoke").rstrip(",")), load(name, arg)
    assert smoke.data.name in ("synthetic", "synthetic_images")
    kept = ("precomp", *REGION_MODELS)
    assert smoke.model.image == (full.model.image if full.model.image in kept else "small_cnn")
    assert (smoke.data.synthetic.regions > 0) == (full.model.image in REGION_MODELS)
    for key in ("text", "classifier", "convse_head", "normalize", "image_head", "text_head",
                "text_dropout", "image_dropout", "scorer", "scan", "bfan", "vsrn_variant",
                "caption_generator"):
        assert smoke.model[key] == full.model[key], key
    # Sizes shrink, structure stays: LSTM units apart from embed_dim stay apart.
    assert bool(smoke.model.text_hidden) == bool(full.model.text_hidden)
    assert smoke.model.text_hidden <= 24 and smoke.model.text_cnn == "small"
    assert [dict(x) for x in smoke.losses] == [dict(x) for x in full.losses]
    stages = optim.make_stages(smoke, 100)
    assert len(stages) == len(optim.make_stages(full, 100))
    assert [s.end - s.start for s in stages] == ([2] * len(stages) if smoke.stages else [3])
    assert [(s.learning_rate, s.freeze_backbone, s.losses) for s in stages] == [
        (s.learning_rate, s.freeze_backbone, s.losses) for s in optim.make_stages(full, 100)]


# ----- models ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,arg", SPECS, ids=SPEC_IDS)
def test_model_options_build(name, arg):
    """Every recipe's model fields are a valid combination. A small CNN stands in for the
    ImageNet backbones (tracing ResNet-152 takes long); the heads see its feature size."""
    c = load(name, arg)
    cfg = dict(c.model)
    if cfg["image"] not in ("precomp", *REGION_MODELS):
        cfg.update(image="small_cnn", small_cnn_dim=16)
    model = nnx.eval_shape(lambda: build_dual_encoder(
        cfg, vocab_size=50, num_classes=10, image_dim=8, rngs=nnx.Rngs(0)))
    if cfg["image"] == "regions":  # sets of regions and words, scored by attention
        assert model.scorer.name == c.model.scorer
        assert model.text_encoder.embed_dim == model.image_encoder.embed_dim == c.model.embed_dim
        return
    text = model.text_encoder if model.txt_head is None else model.txt_head
    assert model.image_encoder.embed_dim == text.out_dim == c.model.embed_dim


# ----- smoke training --------------------------------------------------------------------------
# One run per distinct model/loss combination, to keep the file within a few minutes on two
# cores (each stage compiles its own train step). The presets left out differ from a run below
# only in the dataset block (f30k vs coco; smoke replaces it) or in a loss that
# test_losses_are_valid evaluates: vse (small CNN + GRU + sum/max of hinges, frozen -> fine-tuned)
# is convse's base stages without the heads; ConVSE (csn) and CMPM alone swap one loss.
SMOKE_RUNS = [
    "imc_f30k:smoke",               # Bi-LSTM (mean), IMC; frozen CNN, one stage
    "cmpm_f30k:cmpc,smoke",         # Bi-LSTM (max), 1x1 heads, CMPM + CMPC, norm classifier
    "dual_path_f30k:smoke",         # text CNN, dual-path head, dropout, shared classifier, 3 stages
    "convse_f30k:loss=cmn,smoke",   # GRU + ConVSE heads; MH frozen -> fine-tuned -> ConVSE++
    "aoq_round1_f30k:smoke",        # precomputed (synthetic) features + GRU, MH
]
# The region models (SCAN, BFAN, VSRN) train in tests/test_region_models.py.


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ITM_JAX_CACHE", str(tmp_path_factory.mktemp("itm_jax_cache")))
        yield


@pytest.mark.parametrize("spec", SMOKE_RUNS)
def test_smoke_trains(spec, tmp_path):
    name, _, arg = spec.partition(":")
    c = load(name, arg)
    exp = Experiment(c, tmp_path)
    state = loop.train(exp)
    assert int(state.step) == exp.stages[-1].end
    assert (tmp_path / "checkpoints").is_dir()


# ----- launch scripts --------------------------------------------------------------------------
@pytest.mark.parametrize("path", LAUNCH)
def test_launch_scripts(path):
    script = ROOT / path
    assert "itm_jax.main" in script.read_text()
    run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
