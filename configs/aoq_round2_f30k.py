"""AOQ round 2 (Chen, Deng and Luo, "Adaptive Offline Quintuplet Loss for Image-Text Matching",
ECCV 2020) on Flickr30K: a fresh VSRN, SCAN or BFAN (not fine-tuned; paper Table 3 "Finetune")
trained with ``aoq_loss`` on the offline hard negatives that ``itm-mine`` ranked with the
round-1 VSRN (aoq_round1_f30k.py).

Target: AOQ paper Table 2 (Flickr30K 1K test, i2t R@1/5/10 | t2i R@1/5/10 | R-sum), one row per
``model=`` preset:
    model=vsrn "VSRN + AdapOffQuin"  72.8 91.8 95.8 | 55.3 82.2 88.4 | 486.3  (VSRN: 482.6)
    model=scan "SCAN + AdapOffQuin"  70.3 92.0 95.5 | 50.0 79.2 86.2 | 473.2  (SCAN: 465.0)
    model=bfan "BFAN + AdapOffQuin"  73.2 94.5 97.0 | 54.0 80.3 87.7 | 486.7  (BFAN: 470.4)
The SCAN and BFAN rows are ensembles of two such runs (SCAN t-i + i-t, BFAN equal + prob:
``itm-eval --ensemble``).

    launch/aoq.sh configs/aoq_round1_f30k.py configs/aoq_round2_f30k.py:model=vsrn \\
        workdir/aoq_f30k --config.data.data_dir=data/f30k_precomp

or by hand, after round 1 and ``itm-mine --config=configs/aoq_round1_f30k.py
--workdir=workdir/aoq_r1_f30k``:

    python -m itm_jax.main --config=configs/aoq_round2_f30k.py:model=scan \\
        --workdir=workdir/aoq_r2_scan_f30k --config.data.data_dir=data/f30k_precomp \\
        --config.aoq.mining_dir=workdir/aoq_r1_f30k/mining

Data: data.name="precomp" with the round-1 region features (``data/f30k_precomp``);
data.data_dir (required) = that folder.

Schedule: 20 @ 2e-4 (x0.1 every 10).
Schedule (model=scan|model=bfan): 15 @ 5e-4 (x0.1 every 10).

Recipe (paper Sec. 4.2): each model keeps its own network and settings (vsrn_f30k.py,
scan_f30k.py with t-i AVG, bfan_f30k.py with equal focal) with the online triplet loss replaced
by ``aoq_loss``: g1=0.2, g2=0, alpha=0.3, beta=1.5; offline negatives sampled uniformly from the
top h=300 captions / 60 images; re-sample an offline pair that matches (the paper; the authors'
code does not: ``--config.aoq.resample_matching=False``). Round-2 schedules: VSRN lr 2e-4 for 10
epochs then 2e-5 for 10 (the schedule line); SCAN and BFAN lr 5e-4 for 10 epochs then 5e-5 for
5. Differs as each model's own config does.

Presets: ``model=vsrn|scan|bfan`` (default vsrn), ``variant=adaptive`` (Eq. 5, default) |
``offquin`` (Eq. 4) | ``offtri`` (Eq. 3) | ``online`` (round 1's loss, no mining needed);
``smoke`` (synthetic region features, 3 steps; mining directory still required for the offline
variants).
"""

from configs import bfan_f30k, common, scan_f30k, vsrn_f30k
from itm_jax.losses.aoq import VARIANTS

MODELS = {"vsrn": vsrn_f30k, "scan": scan_f30k, "bfan": bfan_f30k}


def get_config(arg=None, *, models=MODELS):
    a = common.parse_arg(arg, model="vsrn", variant="adaptive", smoke=False)
    common.check_choice("model", a.model, models)
    common.check_choice("variant", a.variant, VARIANTS)
    c = models[a.model].get_config("smoke" if a.smoke else None)
    # The online triplet loss (the first entry of every base recipe) becomes AOQ's.
    c.losses[0] = common.loss("aoq_loss", variant=a.variant, margin_online=0.2,
                              margin_offline=0.0, alpha=0.3, beta=1.5)
    c.aoq.h_t, c.aoq.h_i, c.aoq.resample_matching = 300, 60, True
    if a.model == "vsrn":
        c.num_epochs, c.optim.learning_rate, c.optim.lr_decay_epochs = 20, 2e-4, 10
    else:
        c.num_epochs, c.optim.learning_rate, c.optim.lr_decay_epochs = 15, 5e-4, 10
    return c
