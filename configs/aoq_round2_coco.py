"""AOQ round 2 on MSCOCO: the Flickr30K recipe (aoq_round2_f30k.py) with COCO's features and 5K
test protocol (1K 5-fold and 5K). Round 2 runs 20 epochs on both datasets (paper Sec. 4.2).

Target: AOQ paper Table 1 (VSRN rows give the expected gain over round 1; OffTri / OffQuin rows
are the ``variant=offtri`` / ``offquin`` presets):
    "VSRN [15]"           1K 76.2 94.8 98.2 | 62.8 89.7 95.1 | 516.8
    "VSRN + OffTri"       1K 76.8 95.2 98.4 | 63.1 89.9 95.2 | 518.6
    "VSRN + OffQuin"      1K 76.9 95.3 98.4 | 63.3 90.2 95.5 | 519.7
    "VSRN + AdapOffQuin"  1K 77.5 95.5 98.6 | 63.5 90.5 95.8 | 521.4
                          5K 55.1 83.3 90.8 | 41.1 71.5 82.0 | 423.8 (VSRN: 415.7)

    python -m itm_jax.main --config=configs/aoq_round2_coco.py --workdir=workdir/aoq_r2_coco \
        --config.data.data_dir=data/coco_precomp --config.aoq.mining_dir=workdir/aoq_r1_coco/mining

or all steps at once:

    launch/aoq.sh configs/aoq_round1_coco.py configs/aoq_round2_coco.py workdir/aoq_coco \\
        --config.data.data_dir=data/coco_precomp

Data: data.name="precomp" (``data/coco_precomp``); data.data_dir (required) = that folder.

Schedule: 20 @ 2e-4 (x0.1 every 10).

Differs from the paper's VSRN as round 1 does (aoq_round1_f30k.py).

Presets as aoq_round2_f30k.py: ``variant=...``, ``smoke``.
"""

from configs import aoq_round2_f30k, common


def get_config(arg=None):
    a = common.parse_arg(arg, variant="adaptive", smoke=False)
    c = aoq_round2_f30k.get_config(f"variant={a.variant}")
    common.precomp(c, test_split="testall", protocol="coco")
    if a.smoke:
        common.smoke(c, image="precomp")
    return c
