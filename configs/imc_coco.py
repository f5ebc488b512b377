"""IMC (Chen et al., "Intra-Modal Constraint Loss for Image-Text Retrieval") on COCO.

Target: IMC paper Table 1 "IMC(ours)" (ResNet, Bi-LSTM), COCO 5K test split, i2t R@1/5/10 |
t2i R@1/5/10 | R-sum:
    1K (5-fold average)  65.3 90.8 96.4 | 53.9 86.0 93.6 | 486.0
    5K                   41.1 71.5 81.9 | 30.6 61.7 74.1 | 360.9

    python -m itm_jax.main --config=configs/imc_coco.py --workdir=workdir/imc_coco

Data: data.name="karpathy/coco_restval" (113,287 training images, the code's --use_restval;
``python -m itm_jax.data.karpathy --config coco_restval``); data.data_dir = that TFDS data_dir
("" = ~/tensorflow_datasets).

Schedule: 30 @ 2e-4 (x0.1 every 15) frozen.

Recipe (paper Sec. 3.2 and the authors' README command for COCO, CanonChen/IMC: ``--data_name
coco --max_violation --num_epochs 30 --rnn_type LSTM --wordemb glove --use_bidirectional
--cnn_type resnet152 --use_restval --il_measure l1``): MH + IMC with the L1 distance, lam 1,
mu_down 0.05, mu_up 0.5, margin 0.2; frozen ResNet-152 + linear to 1024-d; Bi-LSTM (300-d words,
directions averaged); batch 128; Adam 2e-4, x0.1 every 15 epochs, 30 epochs; gradient clip 2.
Differs: GloVe vectors and ImageNet weights are not loadable from the config yet
(docs/reproducing.md); no Bi-LSTM dropout.

Presets: ``smoke`` (synthetic 64x64 images, small CNN, 3 steps).
"""

from configs import common, imc_f30k


def get_config(arg=None):
    # The Flickr30K recipe; only the data differ.
    c = imc_f30k.get_config(arg)
    if not common.is_smoke(arg):
        common.coco(c, restval=True)
    return c
