"""AOQ round 2 on COCO: the Flickr30K recipe (aoq_round2_f30k.py) on COCO's region features,
each model's COCO config and the 5K test protocol (1K 5-fold and 5K). The round-2 schedules are
the same on both datasets (paper Sec. 4.2).

Target: AOQ paper Table 1 (COCO test, i2t R@1/5/10 | t2i R@1/5/10 | R-sum), one row per
``model=`` preset (``variant=offtri`` / ``offquin`` give the "+ OffTri" / "+ OffQuin" rows):
    model=vsrn "VSRN + AdapOffQuin"  1K 77.5 95.5 98.6 | 63.5 90.5 95.8 | 521.4
                                     5K 55.1 83.3 90.8 | 41.1 71.5 82.0 | 423.8
               "VSRN + OffTri"       1K 76.8 95.2 98.4 | 63.1 89.9 95.2 | 518.6
               "VSRN + OffQuin"      1K 76.9 95.3 98.4 | 63.3 90.2 95.5 | 519.7
    model=scan "SCAN + AdapOffQuin"  1K 74.1 95.2 98.5 | 59.8 88.6 95.0 | 511.2
                                     5K 51.2 82.5 90.1 | 39.4 69.7 80.4 | 413.3
    model=bfan "BFAN + AdapOffQuin"  1K 77.3 96.0 98.5 | 61.2 89.2 95.0 | 517.2
                                     5K 57.3 84.5 91.7 | 40.1 69.2 80.1 | 422.9

    python -m itm_jax.main --config=configs/aoq_round2_coco.py:model=bfan \\
        --workdir=workdir/aoq_r2_bfan_coco --config.data.data_dir=data/coco_precomp \\
        --config.aoq.mining_dir=workdir/aoq_r1_coco/mining

Data: data.name="precomp" (``data/coco_precomp``, restval training set, ``testall`` for the 5K
test); data.data_dir (required) = that folder.

Schedule: 20 @ 2e-4 (x0.1 every 10).
Schedule (model=scan|model=bfan): 15 @ 5e-4 (x0.1 every 10).

Recipe: as aoq_round2_f30k.py with each model's COCO config. Differs as aoq_round2_f30k.py does.

Presets as aoq_round2_f30k.py: ``model=...``, ``variant=...``, ``smoke``.
"""

from configs import aoq_round2_f30k, bfan_coco, scan_coco, vsrn_coco


def get_config(arg=None):
    return aoq_round2_f30k.get_config(
        arg, models={"vsrn": vsrn_coco, "scan": scan_coco, "bfan": bfan_coco})
