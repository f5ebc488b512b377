"""ConVSE / ConVSE++ (Jain and Verma, "Contrastive Learning of Visual-Semantic Embeddings") on
COCO: VSE++'s ResNet-152 + GRU base network, then MLP heads trained with a contrastive loss.

Targets: ConVSE paper Table III (= Table IV; the median-R-sum run of Table I), COCO 5-fold 1K
test average, i2t R@1/5/10 | t2i R@1/5/10 | R-sum (the paper reports no 5K numbers):
    loss=csn (ConVSE):   "ConVSE (Ours)"    63.9 89.3 95.3 | 50.5 83.3 92.3 | 474.6
    loss=cmn (ConVSE++): "ConVSE++ (Ours)"  66.7 91.5 96.6 | 53.1 84.1 91.6 | 483.6
  (Table I five-run means: ConVSE 474.4 +- 0.68, ConVSE++ 483.5 +- 0.15 R-sum.)

    python -m itm_jax.main --config=configs/vse_coco.py:loss=mh --workdir=workdir/vsepp_coco
    python -m itm_jax.main --config=configs/convse_coco.py:loss=cmn --workdir=workdir/convsepp_coco

(the second starts from the first's weights: ``init_from``, default ``workdir/vsepp_coco``).

Data: data.name="karpathy/coco_restval" (113,287 training images as the paper;
``python -m itm_jax.data.karpathy --config coco_restval``); data.data_dir = that TFDS data_dir
("" = ~/tensorflow_datasets). Test: the 5K split, 5-fold 1K average (and 5K).

Schedule: 30 @ 2e-5 frozen.
(The base run before it: 15 @ 2e-4 frozen, 15 @ 2e-5 frozen, 15 @ 2e-5.)

Recipe (paper Sec. IV-A, "the same training set-up" for both datasets): VSE++ base network
(ResNet-152 + linear to 1024-d, GRU over 300-d words, MH margin 0.2, batch 128) trained 30 epochs
with the image encoder fixed (2e-4 for 15, then 2e-5) and fine-tuned 15 epochs at 2e-5
(``vse_coco.py:loss=mh``); then the ConVSE heads (``model.convse_head=True``) and the
contrastive loss (tau 0.1, ConVSE++ margin 0.2) for 30 epochs at 2e-5 with the image encoder
frozen, batch 256. Adam, gradient clip 2.
Differs from the paper only in what a config cannot hold: the ImageNet and word2vec weights are
set per run (docs/reproducing.md).

Presets: ``loss=csn|cmn`` (default cmn), ``smoke`` (synthetic 64x64 images, small CNN,
2 steps/stage).
"""

from configs import common, convse_f30k


def get_config(arg=None):
    # The Flickr30K recipe; only the data differ.
    c = convse_f30k.get_config(arg)
    if not common.is_smoke(arg):
        common.coco(c, restval=True)
        c.init_from = "workdir/vsepp_coco"
    return c
