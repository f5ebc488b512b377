"""CMPM / CMPM+CMPC (Zhang and Lu, "Deep Cross-Modal Projection Learning for Image-Text
Matching", ECCV 2018) on COCO with ResNet-152.

Targets: CMPM paper Table 2, COCO, i2t R@1/5/10 | t2i R@1/5/10 (no R-sum in the paper):
    default (CMPM), "CMPM (ResNet-152)":
        1K (5-fold average)  56.1 86.3 92.9 | 44.6 78.8 89.0   (IMC Table 1: R-sum 447.7)
        5K                   31.1 60.7 73.9 | 22.9 50.2 63.8   (IMC Table 1: R-sum 302.6)
    cmpc (CMPM+CMPC): the paper reports no ResNet-152 row on COCO. Its MobileNet rows show the
        CMPC gain: "CMPM+CMPC (MobileNet)" 1K 52.9 83.8 92.1 | 41.3 74.6 85.9, 5K 24.6 52.3
        66.4 | 19.1 44.6 58.4 (vs CMPM MobileNet 1K 51.4 80.8 89.8 | 40.9 73.9 85.2).

    python -m itm_jax.main --config=configs/cmpm_coco.py --workdir=workdir/cmpm_coco

Data: data.name="karpathy/coco" (the paper trains on the 82,783 train images, no restval;
``python -m itm_jax.data.karpathy --config coco``); data.data_dir = that TFDS data_dir
("" = ~/tensorflow_datasets). Test: the 5K split, 5-fold 1K average and 5K.

Schedule: 15 @ 2e-4 frozen, 30 @ 2e-5.

Recipe (paper Sec. 4.1 and the spec's "Authors' recipe"): Adam; batch 64; ResNet-152 frozen for
15 epochs at 2e-4, then all layers 30 epochs at 2e-5; 512-d unnormalised embeddings; max-pooled
Bi-LSTM, 512-d words; CMPM ``eps=1e-8``; ``cmpc`` adds CMPC with the normalised classifier
(classes = training images). No gradient clipping. Model as cmpm_f30k.py: 512 LSTM units per
direction, 1x1 conv + BatchNorm heads on both branches, dropout 0.3 on the word embeddings,
cosine evaluation. Differs as cmpm_f30k.py (ImageNet weights given per run; the LSTM's output
dropout, learned initial states and forget-gate bias).

Presets: ``cmpc`` (CMPM+CMPC), ``smoke`` (synthetic 64x64 images, small CNN, 2 steps/stage).
"""

from configs import common, cmpm_f30k


def get_config(arg=None):
    # The Flickr30K recipe; only the data and the batch size differ.
    c = cmpm_f30k.get_config(arg)
    if not common.is_smoke(arg):
        common.coco(c, restval=False)
        c.batch_size = 64
    return c
