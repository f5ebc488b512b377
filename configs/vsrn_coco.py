"""VSRN (Li et al., ICCV 2019) on COCO: the Flickr30K recipe (vsrn_f30k.py) with the image
encoder's ``coco`` variant and COCO's schedule.

Target: the AOQ paper's Table 1 "VSRN [15]" rows (COCO 1K and 5K test, i2t R@1/5/10 | t2i
R@1/5/10 | R-sum), AOQ's round-1 model:
    1K 76.2 94.8 98.2 | 62.8 89.7 95.1 | 516.8
    5K 53.0 81.1 89.4 | 40.5 70.6 81.1 | 415.7

    python -m itm_jax.main --config=configs/vsrn_coco.py --workdir=workdir/vsrn_coco \\
        --config.data.data_dir=data/coco_precomp

Data: data.name="precomp" with the bottom-up region features (``data/coco_precomp``, restval
training set, ``testall`` for the 5K test); data.data_dir (required) = that folder.

Schedule: 30 @ 2e-4 (x0.1 every 15).

Recipe: as vsrn_f30k.py with the ``coco`` encoder variant (each channel normalised over the
regions after the first layer, no BatchNorm on the GRU state) and the AOQ paper's COCO schedule
(lr 2e-4 for 15 epochs then 2e-5 for 15). Differs as vsrn_f30k.py does.

Presets: ``smoke`` (synthetic region features, 3 steps).
"""

from configs import common, vsrn_f30k


def get_config(arg=None):
    c = vsrn_f30k.get_config(arg, variant="coco")
    c.num_epochs = 30  # (the smoke preset's num_steps overrides it)
    c.optim.lr_decay_epochs = 15
    if not common.is_smoke(arg):
        common.precomp(c, test_split="testall", protocol="coco")
    return c
