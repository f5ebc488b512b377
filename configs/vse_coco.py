"""VSE0 / VSE++ (Faghri et al., BMVC 2018) on COCO: ResNet-152 + GRU, sum or max of hinges.

Targets the VSE++ paper's "RN, FT" rows, with the numbers as later papers reprint them
(COCO, i2t R@1/5/10 | t2i R@1/5/10 | R-sum):
  loss=mh (VSE++): IMC Table 1 "VSE++ [1]" (= ConVSE Table III "VSE++ ResNet-152", 1K)
                   1K 64.6 90.0 95.7 | 52.0 84.3 92.0 | 478.6
                   5K 41.3 71.1 81.2 | 30.3 59.4 72.3 | 355.6
  loss=sh (VSE0):  ConVSE Table III "VSE ResNet-152" (1K only)
                   1K 56.0 85.8 93.5 | 43.7 79.4 89.7 | 448.1
  The AOQ paper has no VSE++ row (its baselines are SCAN, BFAN and VSRN).

    python -m itm_jax.main --config=configs/vse_coco.py:loss=mh --workdir=workdir/vsepp_coco

Data: data.name="karpathy/coco_restval" (113,287 training images: Karpathy train + restval, as
the VSE++ code's --use_restval; ``python -m itm_jax.data.karpathy --config coco_restval``);
data.data_dir = that TFDS data_dir ("" = ~/tensorflow_datasets). Test: the 5K split, reported as
the 5-fold 1K average (``1k/...``) and 5K (``5k/...``).

Schedule: 30 @ 2e-4 (x0.1 every 15) frozen, 15 @ 2e-5.

Recipe (VSE++ paper = its code fartashf/vsepp): batch 128, margin 0.2, Adam, gradient clip 2,
1024-d joint space, 300-d word embeddings, one-layer GRU; ResNet-152 frozen for 30 epochs (lr
2e-4, x0.1 after 15), then everything fine-tuned at 2e-5 for 15 epochs. Differs: ImageNet
weights for the ResNet-152 cannot be loaded from the config yet (docs/reproducing.md); the
code validates on the first 1K of the 5K val split, we validate on all of it;
``use_id_positives`` (the code treats a second caption of the same image as a negative).

Presets: ``loss=sh|mh`` (default mh), ``smoke`` (synthetic 64x64 images, small CNN, 2 steps/stage).
"""

from configs import common, vse_f30k


def get_config(arg=None):
    # The Flickr30K recipe; only the data differ.
    c = vse_f30k.get_config(arg)
    if not common.is_smoke(arg):
        common.coco(c, restval=True)
    return c
