"""AOQ round 1 (Chen, Deng and Luo, "Adaptive Offline Quintuplet Loss for Image-Text Matching")
on COCO: the online-triplet (VSE++ max-of-hinges) model whose scores the offline mining job
ranks for round 2. Round 2 (``aoq_loss`` with mined negatives) is a separate config, not here.

Target: AOQ paper Table 1 first-round baseline rows (models trained by the triplet loss with
online hard negatives), COCO 5K test split, i2t R@1/5/10 | t2i R@1/5/10 | R-sum. The paper's
round-1 model is VSRN (region features + GCN/GRU reasoning), which this library does not have;
its row is the reference for the round-1 schedule, not a number this global-embedding model
(mean-pooled region features + GRU) is expected to reach:
    "VSRN [15]"  1K 76.2 94.8 98.2 | 62.8 89.7 95.1 | 516.8
                 5K 53.0 81.1 89.4 | 40.5 70.6 81.1 | 415.7
The AOQ paper has no VSE++ row; VSE++ (ResNet-152, fine-tuned) reaches 1K 64.6 90.0 95.7 |
52.0 84.3 92.0 | 478.6 (IMC Table 1, ConVSE Table III).

    python -m itm_jax.main --config=configs/aoq_round1_coco.py --workdir=workdir/aoq_r1_coco \\
        --config.data.data_dir=data/coco_precomp

Data: data.name="precomp" with the SCAN/VSRN bottom-up-attention region features
(``data/coco_precomp``: ``{train,dev,testall}_ims.npy`` [N, 36, 2048] and ``*_caps.txt``;
train = 113,287 images, test = ``testall``, the 5K split). data.data_dir (required) = that folder.

Schedule: 30 @ 2e-4 (x0.1 every 15).

Recipe (paper Sec. 4.2, first round "as [15]": lr 2e-4 for 15 epochs then 2e-5 for 15 on
COCO) with VSE++'s loss and defaults (the VSRN code is VSE++'s): max of hinges, margin 0.2,
batch 128, Adam, gradient clip 2, 1024-d joint space, GRU over 300-d words. Differs: the image
branch is a linear projection of each region averaged over the 36 regions (VSRN: GCN reasoning +
GRU over regions, 2048-d); ``use_id_positives`` (the code treats another caption of the same
image as a negative).

Presets: ``smoke`` (synthetic precomputed features, 3 steps).
"""

from configs import aoq_round1_f30k, common


def get_config(arg=None):
    # The Flickr30K recipe with COCO's features, 5K test protocol and longer schedule.
    a = common.parse_arg(arg, smoke=False)
    c = aoq_round1_f30k.get_config()
    common.precomp(c, test_split="testall", protocol="coco")
    c.num_epochs = 30
    c.optim.lr_decay_epochs = 15
    if a.smoke:
        common.smoke(c, image="precomp")
    return c
