"""AOQ round 1 (Chen, Deng and Luo, "Adaptive Offline Quintuplet Loss for Image-Text Matching",
ECCV 2020) on Flickr30K: VSRN trained with the online triplet loss (vsrn_f30k.py), the model
whose scores ``itm-mine`` ranks for every round-2 model (VSRN, SCAN and BFAN, paper Sec. 4.2).

Target: AOQ paper Table 2 "VSRN [15]" (Flickr30K 1K test, i2t R@1/5/10 | t2i R@1/5/10 | R-sum):
    71.3 90.6 96.0 | 54.7 81.8 88.2 | 482.6

    python -m itm_jax.main --config=configs/aoq_round1_f30k.py --workdir=workdir/aoq_r1_f30k \\
        --config.data.data_dir=data/f30k_precomp
    itm-mine --config=configs/aoq_round1_f30k.py --workdir=workdir/aoq_r1_f30k \\
        --config.data.data_dir=data/f30k_precomp

Data: data.name="precomp" with the bottom-up region features (``data/f30k_precomp``,
[N, 36, 2048]); data.data_dir (required) = that folder.

Schedule: 20 @ 2e-4 (x0.1 every 10).

Recipe: vsrn_f30k.py (the paper's first round "as [15]": lr 2e-4 for 10 epochs, 2e-5 for 10).
Differs as vsrn_f30k.py does.

Presets: ``smoke`` (synthetic region features, 3 steps).
"""

from configs import vsrn_f30k


def get_config(arg=None):
    return vsrn_f30k.get_config(arg)
