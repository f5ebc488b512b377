"""Default config: VSE++ (max of hinges) on the built-in synthetic dataset.

Precomputed image features (a fixed random conv net over the rendered 64x64 scenes) and a GRU
caption encoder; trains to a useful model on a 2-core CPU in a few minutes (validation R-sum
about 330 after 4 epochs, 624 steps):

    python -m itm_jax.main --config=configs/default.py --workdir=workdir/default

Every other config imports this one and changes a few fields; presets after the colon:
``configs/default.py:smoke`` shrinks data and steps so a run finishes in seconds (tests).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
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
        dict(seed=0, num_train=4000, num_val=500, num_test=500))

    c.model = ml_collections.ConfigDict()
    c.model.image = "precomp"
    c.model.text = "gru"
    c.model.embed_dim = 256
    c.model.word_dim = 128
    c.model.max_len = c.data.get_ref("max_len")
    c.model.normalize = True
    c.model.convse_head = False
    c.model.classifier = "none"
    c.model.freeze_backbone = False
    c.model.small_cnn_dim = 128
    c.model.mobilenet_alpha = 1.0
    c.model.pretrained = ""  # .npz from `python -m itm_jax.models.convert_weights`

    # The objective: a list of {name, weight, **hyper-parameters} (itm_jax.losses names).
    c.losses = [
        ml_collections.ConfigDict(dict(name="max_of_hinges", weight=1.0, margin=0.2)),
        ml_collections.ConfigDict(dict(name="sum_of_hinges", weight=0.0, margin=0.2)),
    ]
    # Build `positives` from image ids (two captions of one image in a batch are not
    # negatives); False reproduces the authors' diagonal-only convention.
    c.use_id_positives = True

    c.batch_size = 128
    c.num_epochs = 4
    c.num_steps = -1  # >= 0 overrides num_epochs
    # Optional list of stages, each {epochs|steps, learning_rate, freeze, freeze_backbone,
    # loss_weights: {label: weight}}; empty = one stage from the fields above. From scratch,
    # MH alone never leaves the collapsed start on this data (val R-sum 14 after 400 steps,
    # where SH reaches 256): one epoch of SH first, as VSE-infinity's warm-up does.
    c.stages = [
        ml_collections.ConfigDict(dict(
            epochs=1, loss_weights=dict(max_of_hinges=0.0, sum_of_hinges=1.0))),
        ml_collections.ConfigDict(dict(epochs=3)),
    ]

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3  # the papers' 2e-4 is for 30 epochs
    c.optim.lr_decay_epochs = 8
    c.optim.lr_decay_steps = -1
    c.optim.lr_decay_factor = 0.1
    c.optim.grad_clip = 2.0
    c.optim.momentum = 0.9
    c.optim.weight_decay = 0.0
    c.optim.freeze = ""  # regex over parameter paths, e.g. "image_encoder.backbone"

    c.mesh = ml_collections.ConfigDict(dict(data=-1))
    c.log_every = 50
    c.eval_every = 156  # one epoch
    c.checkpoint_every = 156
    c.keep_checkpoints = 2
    c.eval_batch_size = 500
    c.eval_protocol = "all"

    if arg == "smoke":
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
    elif arg:
        raise ValueError(f"Unknown preset {arg!r} for configs/default.py; valid: smoke.")
    return c
