"""AOQ round 1 (Chen, Deng and Luo, "Adaptive Offline Quintuplet Loss for Image-Text Matching")
on Flickr30K: the online-triplet (VSE++ max-of-hinges) model whose scores the offline mining job
ranks for round 2. Round 2 (``aoq_loss`` with mined negatives) is a separate config, not here.

Target: AOQ paper Table 2 first-round baseline row, Flickr30K 1K test, i2t R@1/5/10 | t2i
R@1/5/10 | R-sum. The paper's round-1 model is VSRN (region features + GCN/GRU reasoning), which
this library does not have; its row is the reference for the round-1 schedule, not a number this
global-embedding model (mean-pooled region features + GRU) is expected to reach:
    "VSRN [15]"  71.3 90.6 96.0 | 54.7 81.8 88.2 | 482.6
The AOQ paper has no VSE++ row; VSE++ (ResNet-152, fine-tuned) reaches 52.9 80.5 87.2 | 39.6 70.1
79.5 | 409.8 (ConVSE Table III).

    python -m itm_jax.main --config=configs/aoq_round1_f30k.py --workdir=workdir/aoq_r1_f30k \\
        --config.data.data_dir=data/f30k_precomp

Data: data.name="precomp" with the SCAN/VSRN bottom-up-attention region features
(``data/f30k_precomp``: ``{train,dev,test}_ims.npy`` [N, 36, 2048] and ``*_caps.txt``; 29,000 /
1,014 / 1,000 images). data.data_dir (required) = that folder.

Schedule: 20 @ 2e-4 (x0.1 every 10).

Recipe (paper Sec. 4.2, first round "as [15]": lr 2e-4 for 10 epochs then 2e-5 for 10 on
Flickr30K) with VSE++'s loss and defaults: max of hinges, margin 0.2, batch 128, Adam, gradient
clip 2, 1024-d joint space, GRU over 300-d words. Differs: mean-pooled linear projection of the
36 regions instead of VSRN's reasoning modules; ``use_id_positives``.

Presets: ``smoke`` (synthetic precomputed features, 3 steps).
"""

from configs import common, default


def get_config(arg=None):
    a = common.parse_arg(arg, smoke=False)
    c = default.get_config()
    common.precomp(c, test_split="test", protocol="all")
    c.model.image = "precomp"
    c.model.text = "gru"
    c.model.embed_dim = 1024
    c.model.word_dim = 300
    c.losses = [common.loss("max_of_hinges", margin=0.2)]
    c.batch_size = 128
    c.stages = []  # one stage from the fields below
    c.num_epochs = 20
    c.optim.learning_rate = 2e-4
    c.optim.lr_decay_epochs = 10
    c.optim.lr_decay_factor = 0.1
    c.optim.grad_clip = 2.0
    if a.smoke:
        common.smoke(c, image="precomp")
    return c
