"""Dual-path CNN with instance loss (Zheng et al., "Dual-Path Convolutional Image-Text
Embeddings with Instance Loss") on Flickr30K with ResNet-50.

Target: dual-path paper Table I "Ours (ResNet-50) Stage II", Flickr30K 1K test, i2t R@1/5/10 |
t2i R@1/5/10 (no R-sum in the paper; median ranks 1 and 2):
    53.9 80.9 89.9 | 39.2 69.8 80.8
  (after stage I, "Ours (ResNet-50) Stage I": 41.2 69.7 78.9 | 28.6 56.2 67.8)

    python -m itm_jax.main --config=configs/dual_path_f30k.py --workdir=workdir/dual_path_f30k

Data: data.name="karpathy/flickr30k" (``python -m itm_jax.data.karpathy --config flickr30k``);
data.data_dir = that TFDS data_dir ("" = ~/tensorflow_datasets). One instance class per
training image: 29,000 (the paper's split has 29,783).

Schedule: 240 @ 1e-3 frozen, 40 @ 0.1, 20 @ 0.01.

Recipe. Paper (Sec. III, V, VI-B): SGD, momentum 0.9, batch 32; ResNet-50 image CNN followed by
fc 2048 -> 2048, BatchNorm, ReLU, fc 2048 -> 2048 (``model.image_head="dual_path"``,
``DualPathHead``); the ResNet-50-deep text CNN over a 32-word window with position shift
(``model.text_cnn="paper"``, 300-d words, 2048-d head: ``TextCNN.paper``); dropout 0.75 on both
CNNs (``model.image_dropout``, ``model.text_dropout``); one shared classifier W_share (with
bias) over both branches (``model.classifier="shared"``), applied to the raw features
(``model.normalize=False``; the ranking loss scores L2-normalised features, which the objective
always does); stage I: image CNN fixed, instance loss only (Eq. 9 lambda 0:1:1), lr 0.001,
"until convergence"; stage II: whole network, rank + instance, ranking margin 1 with the hardest
negative. Authors' code (layumi/Image-Text-Embedding, MatConvNet): stage II starts from the
stage I checkpoint of epoch 240 (``resnet52_new_hope_word_Rankloss.m``; the paper's Fig. 8 shows
convergence after 240 epochs); weight decay 1e-4; no gradient clipping; the only Flickr30K
stage-II training script in the repository (the VGG-19 one) runs 40 epochs at the base rate
then 20 at a tenth. Its image head (``resnet52_new_hope_word2_pool.m``) has a BatchNorm and a
ReLU after the second fc too, which ``DualPathHead``'s default ``variant="reference"`` follows.
Loss weights (Eq. 9, rank:image:text): one loss entry per term, so that each stage sets all
three through ``loss_weights``: ``instance_visual`` and ``instance_textual`` are
``instance_loss`` with ``text_weight=0`` / ``image_weight=0``. Stage I 0:1:1 (paper and code);
stage II 0:1:0.1, the authors' Flickr30K weights (docs/losses.md, "Instance loss and
dual-path ranking"; the paper says 1:1:1; the VGG-19 Flickr30K script in the repository
and the COCO script use 2:1:0.1, which dual_path_coco.py follows: set
``--config.losses.0.weight=2`` for it here). Learning rates: the code's global rate (0.1 in stage II, then a tenth) with
its per-parameter multipliers (``LR_MULTIPLIERS``: image CNN x0.001, its BatchNorm x0.02, first
convolution x0.0001, word embedding x0.001, new layers x1) and SGD with Nesterov momentum; stage
I at the paper's 0.001 (its CNN is frozen). Losses average over the batch: MatConvNet divides the summed loss gradient by the
batch size. Also differs: ImageNet weights and word2vec vectors are given per run
(``--config.model.pretrained``, ``--config.data.word_vectors``; docs/reproducing.md); the
ranking negative is the in-batch hardest (the code: hardest of 256 random captions for image
anchors); evaluation ranks the final (post-ReLU, single-view) outputs by
cosine, where the authors' test code (``test/extract_pic_feature_word2_plus_52.m``)
L2-normalises the BatchNorm outputs before the last ReLU, summed over the image and its mirror
and over every window position of a caption.

Presets: ``smoke`` (synthetic 64x64 images, small CNN, 2 steps/stage).
"""

from configs import common, default

# Stage I (paper Sec. V and the authors' scripts): instance loss only, image:text 1:1.
STAGE_I_WEIGHTS = {"dual_path_ranking": 0.0, "instance_visual": 1.0, "instance_textual": 1.0}
# The authors' per-parameter learning-rate multipliers (MatConvNet `params(i).learningRate`,
# coco_word2_Rankloss.m): the pretrained parts move slowly under the global rate, the new
# layers at full rate. First match wins.
LR_MULTIPLIERS = (
    (r"^image_encoder\.backbone\.conv1\.", 1e-4),  # the first convolution
    (r"^image_encoder\.backbone\..*(bn\d*|downsample\.1)\.", 0.02),  # BatchNorm
    (r"^image_encoder\.backbone\.", 1e-3),  # the other convolutions
    (r"^text_encoder\.embed\.", 1e-3),  # word2vec-initialised word embedding
)


def get_config(arg=None):
    a = common.parse_arg(arg, smoke=False)
    c = default.get_config()
    common.flickr30k(c)
    c.data.max_len = 32
    c.model.image = "resnet50"
    c.model.image_head = "dual_path"
    c.model.image_dropout = 0.75
    c.model.text = "text_cnn"
    c.model.text_cnn = "paper"
    c.model.text_dropout = 0.75
    c.model.embed_dim = 2048
    c.model.word_dim = 300
    c.model.classifier = "shared"
    c.model.normalize = False
    # Eq. 9's three terms, weighted rank:image:text = 0:1:0.1 as the spec's Flickr30K scripts.
    c.losses = [
        common.loss("dual_path_ranking", weight=0.0, margin=1.0, reduction="mean"),
        common.loss("instance_loss", label="instance_visual", text_weight=0.0,
                    reduction="mean"),
        common.loss("instance_loss", label="instance_textual", weight=0.1, image_weight=0.0,
                    reduction="mean"),
    ]
    c.batch_size = 32
    c.eval_batch_size = 128
    c.optim.name = "sgd"
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.grad_clip = 0.0
    c.optim.lr_decay_factor = 1.0
    c.optim.nesterov = True
    c.optim.lr_multipliers = LR_MULTIPLIERS
    c.stages = [
        common.stage(240, 1e-3, freeze_backbone=True, loss_weights=STAGE_I_WEIGHTS),
        common.stage(40, 0.1),
        common.stage(20, 0.01),
    ]
    if a.smoke:
        common.smoke(c, image="cnn")
    return c
