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
max-pooled Bi-LSTM trained together from the start; Adam 2e-4 for 50 epochs, no decay; batch 16;
512-d unnormalised embeddings, 512-d words; CMPM ``eps=1e-8``; ``cmpc`` adds CMPC with the
normalised classifier. Captions up to 56 tokens (PEDES sentences average 19.6 words; the
dual-path paper's PEDES window; the CMPM paper gives no length). No gradient clipping.
Differs: no ImageNet weights from the config; 256 LSTM units per direction and no 1x1 conv + BN
head; dot-product evaluation of unnormalised outputs; the classifier gets one class per
training *image* (``Trainer`` passes ``num_images``), of which only the 11,003 identity ids are
ever used as labels; recall counts only the caption's own image as a hit (the PEDES protocol
counts any image of the same person). See docs/reproducing.md.

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
