"""Dual-path CNN with instance loss (Zheng et al., "Dual-Path Convolutional Image-Text
Embeddings with Instance Loss") on COCO with ResNet-50.

Target: dual-path paper Table VIII "Ours (ResNet-50) Stage II", COCO 5K test split, i2t
R@1/5/10 | t2i R@1/5/10 (no R-sum in the paper; IMC Table 1 prints it for "DPC"):
    1K (5-fold average)  65.6 89.8 95.5 | 47.1 79.9 90.0   (R-sum 467.9)
    5K                   41.2 70.5 81.1 | 25.3 53.4 66.4   (R-sum 337.9)
  (stage I: 1K 52.2 80.4 88.7 | 37.2 69.5 80.6, 5K 28.6 56.2 68.0 | 18.7 42.4 55.1)

    python -m itm_jax.main --config=configs/dual_path_coco.py --workdir=workdir/dual_path_coco

Data: data.name="karpathy/coco_restval" (113,287 training images = instance classes, as the
paper; ``python -m itm_jax.data.karpathy --config coco_restval``); data.data_dir = that TFDS
data_dir ("" = ~/tensorflow_datasets). Test: the 5K split, 5-fold 1K average and 5K.

Schedule: 75 @ 1e-3 frozen, 15 @ 0.1, 5 @ 0.01, 1 @ 0.001.

Recipe. Paper (Sec. III, V, VI-B): SGD, momentum 0.9, batch 32, ResNet-50 with the fc-BN-ReLU-fc
image head, the ResNet-50-deep text CNN over 32 words, shared classifier on raw features, stage
I instance loss only with the image CNN fixed (lr 0.001), stage II the whole network with rank +
instance, margin 1. Authors' code (layumi/Image-Text-Embedding): stage II
(``train_coco_Rankloss_shift_hard.m``) starts from the stage I checkpoint of epoch 75
(``coco_word2_Rankloss.m``) and runs 15 epochs at the base rate, 5 at a tenth and 1 at a
hundredth; weight decay 1e-4; loss weights (Eq. 9) rank:image:text = 0:1:1 in stage I and
2:1:0.1 in stage II (``derOutputs`` objective_f 2, objective_img 1, objective_txt 0.1; the
paper: 1:1:1), set as in dual_path_f30k.py with one loss entry per term; dropout 0.5 on both
CNNs (``coco_word2_pool.m``, experiment "both_drop0.5"; the paper: 0.75). Learning rates: the stage-II script's global 0.1 for 15 epochs, 0.01 for 5 and
0.001 for 1 (``train_coco_Rankloss_shift_hard.m``), with the per-parameter multipliers and
Nesterov momentum of dual_path_f30k.py. Other differences as
dual_path_f30k.py (ImageNet / word2vec weights given per run, in-batch hardest negative instead
of the hardest of 256 random captions, single-view post-ReLU cosine evaluation);
also the COCO network's W_share has no bias (``SharedClassifier(use_bias=False)``), which the
config does not select. See docs/reproducing.md.

Presets: ``smoke`` (synthetic 64x64 images, small CNN, 2 steps/stage).
"""

from configs import common, dual_path_f30k


def get_config(arg=None):
    # The Flickr30K recipe with COCO's data and the authors' COCO schedule and dropout.
    a = common.parse_arg(arg, smoke=False)
    c = dual_path_f30k.get_config()
    common.coco(c, restval=True)
    c.model.image_dropout = c.model.text_dropout = 0.5
    c.losses[0].weight = 2.0  # rank:image:text 2:1:0.1 in stage II
    c.stages = [
        common.stage(75, 1e-3, freeze_backbone=True,
                     loss_weights=dual_path_f30k.STAGE_I_WEIGHTS),
        common.stage(15, 0.1),
        common.stage(5, 0.01),
        common.stage(1, 0.001),
    ]
    if a.smoke:
        common.smoke(c, image="cnn")
    return c
