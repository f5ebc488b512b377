"""SCAN (Lee et al., "Stacked Cross Attention for Image-Text Matching", ECCV 2018) on Flickr30K:
bottom-up region features and bi-GRU words, scored by stacked cross attention.

Target: the SCAN paper's Flickr30K table (1K test, i2t R@1/5/10 | t2i R@1/5/10 | R-sum), one
row per preset: ``direction=t2i,agg=lse`` "SCAN t-i LSE (lambda1=9, lambda2=6)",
``direction=t2i,agg=avg`` "SCAN t-i AVG (lambda1=9)", ``direction=i2t,agg=lse`` "SCAN i-t LSE
(lambda1=4, lambda2=5)", ``direction=i2t,agg=avg`` "SCAN i-t AVG (lambda1=4)". The paper's
best, the ensemble "SCAN t-i AVG + i-t LSE" (``itm-eval --ensemble``: the two runs' score
matrices averaged), is the AOQ paper's Table 2 "SCAN [14]" row:
    67.4 90.3 95.8 | 48.6 77.7 85.2 | 465.0

    python -m itm_jax.main --config=configs/scan_f30k.py:direction=t2i,agg=avg \\
        --workdir=workdir/scan_f30k_t2i_avg --config.data.data_dir=data/f30k_precomp

Data: data.name="precomp" with the bottom-up-attention region features SCAN releases
(``data/f30k_precomp``: ``{train,dev,test}_ims.npy`` [N, 36, 2048] and ``*_caps.txt``; 29,000 /
1,014 / 1,000 images); data.data_dir (required) = that folder.

Schedule: 30 @ 2e-4 (x0.1 every 15).

Recipe (the SCAN code's published settings): max of hinges (VSE++, margin 0.2, summed), batch
128, Adam, gradient clip 2, 1024-d joint space, 300-d words, a 1-layer bi-GRU whose two
directions are averaged per word, regions projected by one linear layer and L2-normalised,
raw_feature_norm=clipped_l2norm. Differs: ``use_id_positives`` (the code treats a second
caption of the same image in a batch as a negative); captions are cut at data.max_len words.

Presets: ``direction=t2i|i2t`` (default t2i), ``agg=lse|avg`` (default avg), ``smoke``
(synthetic region features, 3 steps).
"""

from configs import common, default

# (direction, agg) -> the SCAN paper's lambda_softmax and lambda_lse for Flickr30K.
LAMBDAS = {("t2i", "lse"): (9.0, 6.0), ("t2i", "avg"): (9.0, 6.0),
           ("i2t", "lse"): (4.0, 5.0), ("i2t", "avg"): (4.0, 5.0)}
AGG = {"lse": "logsumexp", "avg": "mean"}


def get_config(arg=None, *, lambdas=LAMBDAS):
    a = common.parse_arg(arg, direction="t2i", agg="avg", smoke=False)
    common.check_choice("direction", a.direction, ("t2i", "i2t"))
    common.check_choice("agg", a.agg, AGG)
    c = default.get_config()
    common.precomp(c, test_split="test", protocol="all")
    c.model.image = "regions"
    c.model.text = "bigru_words"
    c.model.scorer = "scan"
    lambda_softmax, lambda_lse = lambdas[(a.direction, a.agg)]
    c.model.scan.update(direction=a.direction, agg=AGG[a.agg], raw_feature_norm="clipped_l2norm",
                        lambda_softmax=lambda_softmax, lambda_lse=lambda_lse)
    c.model.embed_dim = 1024
    c.model.word_dim = 300
    c.losses = [common.loss("max_of_hinges", margin=0.2)]
    c.batch_size = 128
    c.stages = []
    c.num_epochs = 30
    c.optim.learning_rate = 2e-4
    c.optim.lr_decay_epochs = 15
    c.optim.lr_decay_factor = 0.1
    c.optim.grad_clip = 2.0
    if a.smoke:
        common.smoke(c, image="regions")
    return c
