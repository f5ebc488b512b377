"""SCAN (Lee et al., ECCV 2018) on COCO: the Flickr30K recipe (scan_f30k.py) with COCO's
lambdas and schedule.

Target: the SCAN paper's COCO 1K table (5-fold 1K test, i2t R@1/5/10 | t2i R@1/5/10 | R-sum),
one row per preset: "SCAN t-i LSE (lambda1=9, lambda2=6)", "SCAN t-i AVG (lambda1=9)", "SCAN
i-t LSE (lambda1=4, lambda2=20)", "SCAN i-t AVG (lambda1=4)". The ensemble "SCAN t-i AVG + i-t
LSE" (``itm-eval --ensemble``) is the AOQ paper's Table 1 "SCAN [14]" rows:
    1K 72.7 94.8 98.4 | 58.8 88.4 94.8 | 507.9
    5K 50.4 82.2 90.0 | 38.6 69.3 80.4 | 410.9

    python -m itm_jax.main --config=configs/scan_coco.py:direction=i2t,agg=lse \\
        --workdir=workdir/scan_coco_i2t_lse --config.data.data_dir=data/coco_precomp

Data: data.name="precomp" with SCAN's bottom-up region features (``data/coco_precomp``:
``train_ims.npy`` [113,287, 36, 2048] with restval, ``dev``, and ``testall`` for the 5K test);
data.data_dir (required) = that folder. Test: the 5K split as the 5-fold 1K average (``1k/...``)
and 5K (``5k/...``).

Schedule: 20 @ 5e-4 (x0.1 every 10).

Recipe: as scan_f30k.py with the COCO settings of the SCAN code: lr 5e-4 for 20 epochs, x0.1
after 10. Differs as scan_f30k.py does.

Presets: ``direction=t2i|i2t`` (default t2i), ``agg=lse|avg`` (default avg), ``smoke``
(synthetic region features, 3 steps).
"""

from configs import common, scan_f30k

LAMBDAS = {("t2i", "lse"): (9.0, 6.0), ("t2i", "avg"): (9.0, 6.0),
           ("i2t", "lse"): (4.0, 20.0), ("i2t", "avg"): (4.0, 20.0)}


def get_config(arg=None):
    return to_coco(scan_f30k.get_config(arg, lambdas=LAMBDAS), arg)


def to_coco(c, arg):
    """SCAN's COCO schedule and data on a Flickr30K recipe of the SCAN code (BFAN's too)."""
    c.num_epochs = 20  # (the smoke preset's num_steps overrides it)
    c.optim.learning_rate = 5e-4
    c.optim.lr_decay_epochs = 10
    if not common.is_smoke(arg):
        common.precomp(c, test_split="testall", protocol="coco")
    return c
