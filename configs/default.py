"""Default config: VSE++ (max of hinges) on the built-in synthetic dataset.

Precomputed image features (a fixed random conv net over the rendered 64x64 scenes) and a GRU
caption encoder; trains to a useful model on a 2-core CPU in a few minutes (12 epochs, 1872
steps, the last one at a tenth of the learning rate; MH needs them to pass SH, which it ties at
4 epochs):

    python -m itm_jax.main --config=configs/default.py --workdir=workdir/default

Every other config imports this one and changes a few fields; presets after the colon:
``loss=sh|mh|imc|convse|convse++|cmpm|aoq`` swaps the objective for another paper's loss with
its hyper-parameters (the ablation of ``python -m itm_jax.cli.demo``; same encoder and budget;
``aoq`` is round 2 and needs ``--config.aoq.mining_dir``, as do AOQ's other round-2 objectives
``offtri``, ``offquin`` and ``aoq_zero``: MH inside round 2's pipeline, which must train as
``mh``), ``model=scan|bfan|vsrn`` swaps the global-embedding model for one of AOQ's base
models on the data's region features (default ``global``), ``no_warmup`` drops the SH epoch that hardest-negative losses start with, and
``smoke`` shrinks data and steps so a run finishes in seconds (tests):
``configs/default.py:loss=imc,smoke``.
"""

import ml_collections


# `loss=` presets: the losses of the ablation with their papers' hyper-parameters.
LOSSES = {
    "sh": [("sum_of_hinges", dict(margin=0.2))],  # VSE0
    "mh": [("max_of_hinges", dict(margin=0.2))],  # VSE++
    "imc": [("imc", dict(margin=0.2, lam=1.0, delta="l1"))],  # MH + intra-modal constraint
    "convse": [("contrastive_sum_negatives", dict(tau=0.1))],  # ConVSE (CSN)
    "convse++": [("contrastive_max_negative", dict(tau=0.1, margin=0.2))],  # ConVSE++ (CMN)
    "cmpm": [("cmpm", dict())],
    # AOQ round 2 (needs --config.aoq.mining_dir); round 1 is "mh".
    "aoq": [("aoq_loss", dict(variant="adaptive", margin_online=0.2, margin_offline=0.0,
                              alpha=0.3, beta=1.5))],
    # AOQ Table 3's other round-2 objectives: offline triplet (Eq. 3), quintuplet (Eq. 3 + 4).
    "offtri": [("aoq_loss", dict(variant="offtri", margin_online=0.2, margin_offline=0.0))],
    "offquin": [("aoq_loss", dict(variant="offquin", margin_online=0.2, margin_offline=0.0))],
    # Round 2's pipeline (every pair draws its offline negatives) with the AOQ term weighted 0:
    # the objective is MH, so it must train exactly as `mh` does (a check of the pipeline).
    "aoq_zero": [("max_of_hinges", dict(margin=0.2)),
                 ("aoq_loss", dict(weight=0.0, variant="offquin", margin_online=0.2,
                                   margin_offline=0.0))],
}
# Losses that only see the hardest negative start with one epoch of sum of hinges.
WARM_UP = ("mh", "imc", "convse++", "aoq", "offtri", "offquin", "aoq_zero")


# AOQ's base models on the synthetic data's region features (4 regions: the scene and one per
# object): SCAN and BFAN score region and word sets by attention, VSRN reasons over the regions
# into one embedding (without its caption term, which the global models do not have either).
MODELS = ("global", "scan", "bfan", "vsrn")
REGIONS = 4


def _parse(arg: str | None) -> dict:
    out = {"loss": "mh", "model": "global", "smoke": False, "no_warmup": False}
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, _, value = item.partition("=")
        if item in ("smoke", "no_warmup"):
            out[item] = True
        elif key == "loss" and value in LOSSES:
            out["loss"] = value
        elif key == "model" and value in MODELS:
            out["model"] = value
        else:
            raise ValueError(f"Unknown preset {item!r} for configs/default.py; valid: smoke, "
                             f"no_warmup, loss={{{','.join(LOSSES)}}}, "
                             f"model={{{','.join(MODELS)}}}.")
    return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = ml_collections.ConfigDict(_parse(arg))
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic"
    c.data.data_dir = ""
    c.data.test_split = "test"
    c.data.caps_per_image = 5
    c.data.max_len = 32
    c.data.vocab_threshold = 4
    c.data.word_vectors = ""  # GloVe / word2vec text file initialising the word embeddings
    c.data.synthetic = ml_collections.ConfigDict(
        dict(seed=0, num_train=4000, num_val=500, num_test=500, regions=0))

    c.model = ml_collections.ConfigDict()
    c.model.image = "precomp"
    c.model.text = "gru"
    c.model.embed_dim = 256
    c.model.word_dim = 128
    c.model.max_len = c.data.get_ref("max_len")
    c.model.normalize = True
    c.model.convse_head = False
    c.model.classifier = "none"
    c.model.gru_impl = "auto"  # GRU encoder: auto (packed at 512+ units on 1 CPU) | scan | packed
    # Architecture options of the paper recipes (itm_jax.models.dual_encoder.build_dual_encoder);
    # these defaults add nothing to the plain encoders above.
    c.model.text_hidden = 0  # recurrent units (per Bi-LSTM direction); 0 = from embed_dim
    c.model.text_dropout = 0.0  # training-mode dropout of the Bi-LSTM / text CNN
    c.model.text_cnn = "small"  # text CNN blocks: small | paper (dual-path, ResNet-50 depth)
    c.model.image_head = "linear"  # after the CNN: linear | projection_1x1 | dual_path
    c.model.image_dropout = 0.0  # dropout of image_head="dual_path"
    c.model.text_head = "none"  # after the text encoder: none | projection_1x1
    c.model.freeze_backbone = False
    c.model.small_cnn_dim = 128
    c.model.mobilenet_alpha = 1.0
    c.model.pretrained = ""  # .npz from `python -m itm_jax.models.convert_weights`
    # Region models (AOQ's base models). VSRN: model.image="vsrn" on region features, its
    # data-set variant ("coco": channels normalised over regions after fc; "f30k": BatchNorm on
    # the image GRU's state instead) and the caption branch (loss "caption_generation").
    c.model.vsrn_variant = "coco"
    c.model.caption_generator = False
    # SCAN / BFAN: model.image="regions", model.text="bigru_words" and model.scorer="scan" or
    # "bfan", with the options of itm_jax.similarity.scan_scores / bfan_scores; "dot" scores
    # global embeddings.
    c.model.scorer = "dot"
    c.model.scan = ml_collections.ConfigDict(dict(
        direction="t2i", raw_feature_norm="clipped_l2norm", agg="mean", lambda_softmax=9.0,
        lambda_lse=6.0))
    c.model.bfan = ml_collections.ConfigDict(dict(focal="equal", lambda_softmax=20.0))

    # The objective: a list of {name, weight, **hyper-parameters} (itm_jax.losses names); the
    # `loss=` preset picks one of LOSSES (the demo's ablation), VSE++'s max of hinges by default.
    c.losses = [ml_collections.ConfigDict(dict(name=name, **{"weight": 1.0, **kw}))
                for name, kw in LOSSES[a.loss]]
    # Build `positives` from image ids (two captions of one image in a batch are not
    # negatives); False reproduces the authors' diagonal-only convention.
    c.use_id_positives = True

    c.batch_size = 128
    # Stage lengths and the learning-rate decay follow `--config.num_epochs` (references).
    c.num_epochs = 12
    c.num_steps = -1  # >= 0 overrides num_epochs
    # Optional list of stages, each {epochs|steps, learning_rate, freeze, freeze_backbone,
    # loss_weights: {label: weight}}; empty = one stage from the fields above. From scratch,
    # hardest-negative losses never leave the collapsed start on this data (MH, `no_warmup`: val
    # R-sum 24 after 4 epochs, where one epoch of SH reaches 128): one epoch of SH first, as
    # VSE-infinity's warm-up.
    c.stages = []
    last_epoch_decay = c.get_ref("num_epochs") - 1  # epochs before the decay (in the stage)
    if a.loss in WARM_UP and not a.no_warmup:
        c.losses.append(ml_collections.ConfigDict(dict(name="sum_of_hinges", weight=0.0,
                                                       margin=0.2)))
        off = {name: 0.0 for name, _ in LOSSES[a.loss]}
        c.stages = [
            ml_collections.ConfigDict(dict(epochs=1, loss_weights=dict(off, sum_of_hinges=1.0))),
            ml_collections.ConfigDict(dict(epochs=c.get_ref("num_epochs") - 1)),
        ]
        last_epoch_decay = c.get_ref("num_epochs") - 2  # a stage's schedule starts with it
    if a.loss == "cmpm":  # CMPM projects unnormalised features (CMPM paper Sec. 3.1)
        c.model.normalize = False

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3  # the papers' 2e-4 is for 30 epochs
    # x0.1 for the last epoch, as the papers' step decays end their schedules.
    c.optim.lr_decay_epochs = last_epoch_decay
    c.optim.lr_decay_steps = -1
    c.optim.lr_decay_factor = 0.1
    c.optim.grad_clip = 2.0
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    # ((regex over parameter paths, factor), ...): per-parameter learning-rate multipliers.
    c.optim.lr_multipliers = ()
    c.optim.weight_decay = 0.0
    c.optim.freeze = ""  # regex over parameter paths, e.g. "image_encoder.backbone"

    # AOQ round 2 (aoq_loss variants other than "online"): the offline hard negatives mined by
    # `itm-mine` from a round-1 model; sample from the first h_t captions / h_i images.
    c.aoq = ml_collections.ConfigDict(dict(
        mining_dir="", h_t=300, h_i=60, resample_matching=True))

    # A run directory whose best (else latest) weights initialise this model where parameter
    # names and shapes match (ConVSE's heads on a trained VSE++ network); "" = random init.
    c.init_from = ""

    c.mesh = ml_collections.ConfigDict(dict(data=-1))
    c.log_every = 50
    c.eval_every = 156  # one epoch
    c.checkpoint_every = 156
    c.keep_checkpoints = 2
    c.eval_batch_size = 500
    c.eval_protocol = "all"

    if a.model != "global":
        c.data.synthetic.regions = REGIONS
        c.model.image = "vsrn" if a.model == "vsrn" else "regions"
        if a.model != "vsrn":
            c.model.text, c.model.scorer = "bigru_words", a.model

    if a.smoke:
        c.data.synthetic.update(num_train=200, num_val=50, num_test=50)
        c.data.vocab_threshold = 1
        c.batch_size = 32
        c.num_steps = 12
        c.stages = []
        c.log_every = 4
        c.eval_every = 6
        c.checkpoint_every = 4
        c.eval_batch_size = 64
        c.model.embed_dim = 32
        c.model.word_dim = 16
    return c
