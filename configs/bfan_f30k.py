"""BFAN (Liu et al., "Focus Your Attention: A Bidirectional Focal Attention Network for
Image-Text Matching", ACM MM 2019) on Flickr30K: SCAN's region and word encoders scored by
focal attention in both directions (their sum).

Target: the AOQ paper's Table 2 "BFAN [18]" row (Flickr30K 1K test, i2t R@1/5/10 | t2i R@1/5/10
| R-sum), which is the ensemble of the two presets (AOQ's footnote 3: "BFAN-equal" and
"BFAN-prob"; ``itm-eval --ensemble`` averages their score matrices):
    68.1 91.4 95.9 | 50.8 78.4 85.8 | 470.4

    python -m itm_jax.main --config=configs/bfan_f30k.py:focal=prob --workdir=workdir/bfan_f30k_prob \\
        --config.data.data_dir=data/f30k_precomp

Data: data.name="precomp" with the bottom-up region features (``data/f30k_precomp``,
[N, 36, 2048]); data.data_dir (required) = that folder.

Schedule: 30 @ 2e-4 (x0.1 every 15).

Recipe: BFAN is built on SCAN's code and settings (scan_f30k.py: max of hinges with margin
0.2, batch 128, Adam, gradient clip 2, 1024-d joint space, 300-d words, bi-GRU averaged per
word) with lambda_softmax=20. Differs: the schedule is SCAN's Flickr30K one, as BFAN publishes
none of its own that we could check; ``use_id_positives``.

Presets: ``focal=equal|prob`` (default equal), ``smoke`` (synthetic region features, 3 steps).
"""

from configs import common, scan_f30k


def get_config(arg=None):
    a = common.parse_arg(arg, focal="equal", smoke=False)
    common.check_choice("focal", a.focal, ("equal", "prob"))
    c = scan_f30k.get_config("smoke" if a.smoke else None)
    c.model.scorer = "bfan"
    c.model.bfan.update(focal=a.focal, lambda_softmax=20.0)
    return c
