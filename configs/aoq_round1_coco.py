"""AOQ round 1 (Chen, Deng and Luo, ECCV 2020) on COCO: VSRN with the online triplet loss
(vsrn_coco.py), the teacher whose scores ``itm-mine`` ranks for every round-2 model.

Target: AOQ paper Table 1 "VSRN [15]" (COCO test, i2t R@1/5/10 | t2i R@1/5/10 | R-sum):
    1K 76.2 94.8 98.2 | 62.8 89.7 95.1 | 516.8
    5K 53.0 81.1 89.4 | 40.5 70.6 81.1 | 415.7

    python -m itm_jax.main --config=configs/aoq_round1_coco.py --workdir=workdir/aoq_r1_coco \\
        --config.data.data_dir=data/coco_precomp

Data: data.name="precomp" with the bottom-up region features (``data/coco_precomp``, restval
training set, ``testall`` for the 5K test); data.data_dir (required) = that folder.

Schedule: 30 @ 2e-4 (x0.1 every 15).

Recipe: vsrn_coco.py (the paper's first round: lr 2e-4 for 15 epochs, 2e-5 for 15). Differs as
vsrn_coco.py does.

Presets: ``smoke`` (synthetic region features, 3 steps).
"""

from configs import vsrn_coco


def get_config(arg=None):
    return vsrn_coco.get_config(arg)
