"""CMPM / CMPM+CMPC (Zhang and Lu, "Deep Cross-Modal Projection Learning for Image-Text
Matching", ECCV 2018) on Flickr30K with ResNet-152.

Targets: CMPM paper Table 1, Flickr30K 1K test, i2t R@1/5/10 | t2i R@1/5/10:
    default (CMPM):  "CMPM (ResNet-152)"        48.3 75.6 84.5 | 35.7 63.6 74.1
    cmpc (CMPM+CMPC): "CMPM +CMPC (ResNet-152)" 49.6 76.8 86.1 | 37.3 65.7 75.5
    (R-sum 391.0 as IMC Table 2 and ConVSE Table IV print it; the CMPM paper gives none.)

    python -m itm_jax.main --config=configs/cmpm_f30k.py:cmpc --workdir=workdir/cmpm_cmpc_f30k

Data: data.name="karpathy/flickr30k" (``python -m itm_jax.data.karpathy --config flickr30k``);
data.data_dir = that TFDS data_dir ("" = ~/tensorflow_datasets). Labels (CMPC classes) are the
training images (29,000 classes; the paper's split has 29,783).

Schedule: 15 @ 2e-4 frozen, 30 @ 2e-5.

Recipe (paper Sec. 4.1 and the spec's "Authors' recipe", YingZhangDUT/Cross-Modal-Projection-
Learning): Adam; batch 32; ResNet-152 frozen for 15 epochs at 2e-4, then all layers 30 epochs at
2e-5 (no decay within a stage); Bi-LSTM over 512-d words with 512 units per direction
(``model.text_hidden``; the authors' ``num_lstm_units``), max-pooled over time (``bilstm_max``)
to 1024-d; on both branches a bias-free 1x1 conv + BatchNorm to the 512-d embedding
(``model.image_head = model.text_head = "projection_1x1"``, the authors'
``build_joint_embeddings`` under the ResNet arg scope), fed unnormalised into the losses
(``model.normalize=False``); CMPM ``eps=1e-8``; ``cmpc`` adds CMPC with one bias-free classifier
whose columns are normalised (``model.classifier="norm"``), both losses weighted 1. No gradient
clipping (none is stated). Dropout 0.3 on the Bi-LSTM's word embeddings: the code's
``lstm_dropout_keep_prob`` 0.7 (the paper states none). Evaluation ranks by cosine similarity,
as the paper's test stage.
Differs: ImageNet weights are given per run (``--config.model.pretrained``,
docs/reproducing.md); the code's LSTM dropout also drops the LSTM outputs, its initial states
are learned and TF's forget-gate bias is 1 (here: embeddings only, zero states, Flax's
initialisation).

Presets: ``cmpc`` (CMPM+CMPC), ``smoke`` (synthetic 64x64 images, small CNN, 2 steps/stage).
"""

from configs import common, default


def get_config(arg=None):
    a = common.parse_arg(arg, cmpc=False, smoke=False)
    c = default.get_config()
    common.flickr30k(c)
    c.model.image = "resnet152"
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
    c.batch_size = 32
    c.eval_batch_size = 128
    c.optim.grad_clip = 0.0
    c.optim.lr_decay_factor = 1.0
    c.stages = [common.stage(15, 2e-4, freeze_backbone=True), common.stage(30, 2e-5)]
    if a.smoke:
        common.smoke(c, image="cnn")
    return c
