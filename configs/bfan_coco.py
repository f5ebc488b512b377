"""BFAN (Liu et al., ACM MM 2019) on COCO: the Flickr30K recipe (bfan_f30k.py) on COCO's region
features with SCAN's COCO schedule.

Target: the AOQ paper's Table 1 "BFAN [18]" rows (COCO 1K and 5K test, i2t R@1/5/10 | t2i
R@1/5/10 | R-sum), the ensemble of the two presets (``itm-eval --ensemble``):
    1K 74.9 95.2 98.3 | 59.4 88.4 94.5 | 510.7
    5K 52.9 82.8 90.6 | 38.3 67.8 79.3 | 411.7

    python -m itm_jax.main --config=configs/bfan_coco.py:focal=equal --workdir=workdir/bfan_coco_equal \\
        --config.data.data_dir=data/coco_precomp

Data: data.name="precomp" with the bottom-up region features (``data/coco_precomp``, restval
training set, ``testall`` for the 5K test); data.data_dir (required) = that folder.

Schedule: 20 @ 5e-4 (x0.1 every 10).

Recipe: as bfan_f30k.py with SCAN's COCO schedule (lr 5e-4 for 20 epochs, x0.1 after 10).
Differs as bfan_f30k.py does.

Presets: ``focal=equal|prob`` (default equal), ``smoke`` (synthetic region features, 3 steps).
"""

from configs import bfan_f30k, scan_coco


def get_config(arg=None):
    return scan_coco.to_coco(bfan_f30k.get_config(arg), arg)
