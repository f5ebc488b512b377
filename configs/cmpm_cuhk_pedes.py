"""CMPM / CMPM+CMPC (Zhang and Lu, "Deep Cross-Modal Projection Learning for Image-Text
Matching", ECCV 2018) on CUHK-PEDES with MobileNet.

Targets: CMPM paper Table 3, CUHK-PEDES test, text-to-image R@1 | R@10 (the paper reports only
these two; our ``t2i`` protocol also logs R@5):
    default (CMPM):   "CMPM"       44.02 | 77.00
    cmpc (CMPM+CMPC): "CMPM+CMPC"  49.37 | 79.27

    python -m itm_jax.main --config=configs/cmpm_cuhk_pedes.py:cmpc \\
        --workdir=workdir/cmpm_cmpc_pedes --config.data.data_dir=/data/CUHK-PEDES

Data: data.name="cuhk_pedes"; data.data_dir (required) = the folder holding reid_raw.json and
imgs/. Labels (CMPC classes) are person ids (11,003 training identities).

Schedule: 50 @ 2e-4.

Recipe (paper Sec. 4.1 and the spec's "Authors' recipe"): MobileNet v1 (alpha 1) and the
max-pooled Bi-LSTM (512 units per direction over 512-d words) trained together from the start;
Adam 2e-4 for 50 epochs, no decay; batch 16; a 1x1 conv + BatchNorm to the 512-d embedding on
both branches (``projection_1x1``; under the MobileNet arg scope, BatchNorm decay 0.9997 and
epsilon 1e-3, which ``build_dual_encoder`` picks for ``model.image="mobilenet"``), fed
unnormalised into the losses; CMPM ``eps=1e-8``; ``cmpc`` adds CMPC with the normalised
classifier, one class per training identity (``itm_jax.experiment.Experiment`` passes ``num_identities``; the
authors' script: ``--num_classes=11004``). Dropout 0.3 on the word embeddings (the code's
``lstm_dropout_keep_prob`` 0.7). Captions up to 56 tokens (PEDES sentences average 19.6 words;
the dual-path paper's PEDES window; the CMPM paper gives no length). No gradient clipping.
Test: text-to-image recall by identity, as the PEDES protocol and the authors'
``recall_at_k``: a caption query is a hit when any image of its person is in the top K
(``protocol_metrics`` passes the source's per-image ``labels``).
Differs: ImageNet weights are given per run (``--config.model.pretrained``); the code's LSTM
output dropout, learned initial states and forget-gate bias (as cmpm_f30k.py); the 1x1 heads
keep the ResNet scope's kernel initialiser (MobileNet's scope: truncated normal, stddev 0.09).
See docs/reproducing.md.

Presets: ``cmpc`` (CMPM+CMPC), ``smoke`` (synthetic 64x64 images, small CNN, 3 steps).
"""

from configs import common, default


def get_config(arg=None):
    a = common.parse_arg(arg, cmpc=False, smoke=False)
    c = default.get_config()
    common.cuhk_pedes(c)
    c.data.max_len = 56
    c.model.image = "mobilenet"
    c.model.mobilenet_alpha = 1.0
    c.model.text = "bilstm_max"
    c.model.embed_dim = 512
    c.model.word_dim = 512
    c.model.text_hidden = 512
    c.model.text_dropout = 0.3
    c.model.image_head = "projection_1x1"
    c.model.text_head = "projection_1x1"
    c.model.normalize = False
    c.losses = [common.loss("cmpm", eps=1e-8)]
    if a.cmpc:
        c.model.classifier = "norm"
        c.losses.append(common.loss("cmpc"))
    c.batch_size = 16
    c.eval_batch_size = 128
    c.stages = []  # one stage from the fields below
    c.num_epochs = 50
    c.optim.learning_rate = 2e-4
    c.optim.lr_decay_factor = 1.0
    c.optim.grad_clip = 0.0
    if a.smoke:
        common.smoke(c, image="cnn")
    return c
