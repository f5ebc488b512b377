"""ConVSE / ConVSE++ (Jain and Verma, "Contrastive Learning of Visual-Semantic Embeddings") on
Flickr30K: VSE++'s ResNet-152 + GRU base network, then MLP heads trained with a contrastive loss.

Targets: ConVSE paper Table III (= Table IV; the median-R-sum run of Table I), Flickr30K 1K test,
i2t R@1/5/10 | t2i R@1/5/10 | R-sum:
    loss=csn (ConVSE):   "ConVSE (Ours)"    55.6 81.0 88.8 | 39.0 69.3 79.4 | 413.1
    loss=cmn (ConVSE++): "ConVSE++ (Ours)"  57.8 84.3 88.9 | 41.0 71.1 80.0 | 423.1
  (Table I five-run means: ConVSE 413.5 +- 1.19, ConVSE++ 423.0 +- 1.10 R-sum.)

    python -m itm_jax.main --config=configs/vse_f30k.py:loss=mh --workdir=workdir/vsepp_f30k
    python -m itm_jax.main --config=configs/convse_f30k.py:loss=cmn --workdir=workdir/convsepp_f30k \
        [--config.init_from=workdir/vsepp_f30k]

The first command trains the base network (``vse_f30k.py``'s VSE++ recipe); this config adds the
heads and starts from its weights (``init_from``, default ``workdir/vsepp_f30k``).

Data: data.name="karpathy/flickr30k" (29,000 / 1,014 / 1,000 images as the paper's split;
``python -m itm_jax.data.karpathy --config flickr30k``); data.data_dir = that TFDS data_dir
("" = ~/tensorflow_datasets).

Schedule: 30 @ 2e-5 frozen.
(The base run before it: 15 @ 2e-4 frozen, 15 @ 2e-5 frozen, 15 @ 2e-5.)

Recipe (paper Sec. IV-A; the authors' code anuragjain96/ConVsepp builds on VSE++): base network
= VSE++ (ResNet-152 + linear to 1024-d, GRU over 300-d words, MH loss margin 0.2, batch 128),
trained with the image encoder fixed for 30 epochs (2e-4 for 15, then 2e-5), then fine-tuned
with the image encoder at 2e-5 for 15 epochs: ``vse_f30k.py:loss=mh`` exactly. Then the ConVSE
heads (Linear 1024->2048 no bias, ReLU, Linear 2048->1024, ``model.convse_head=True``, kept at
test time) on both branches and the contrastive loss alone (tau 0.1; ConVSE++ adds margin 0.2),
30 epochs at a fixed 2e-5 with the image encoder frozen again, batch 256. Adam, gradient clip 2
(VSE++ code).
Differs from the paper only in what a config cannot hold: the ImageNet and word2vec weights are
set per run (docs/reproducing.md).

Presets: ``loss=csn|cmn`` (default cmn), ``smoke`` (synthetic 64x64 images, small CNN,
2 steps/stage).
"""

from configs import common, vse_f30k

LOSSES = {"csn": "contrastive_sum_negatives", "cmn": "contrastive_max_negative"}


def get_config(arg=None):
    a = common.parse_arg(arg, loss="cmn", smoke=False)
    common.check_choice("loss", a.loss, LOSSES)
    c = vse_f30k.get_config("loss=mh" + (",smoke" if a.smoke else ""))
    c.model.convse_head = True
    c.losses = [common.loss(LOSSES[a.loss], tau=0.1, **({"margin": 0.2} if a.loss == "cmn" else {}))]
    c.batch_size = 256
    c.optim.lr_decay_factor = 1.0
    c.stages = [common.stage(30, 2e-5, freeze_backbone=True)]
    c.init_from = "" if a.smoke else "workdir/vsepp_f30k"
    if a.smoke:
        common.smoke(c, image="cnn")
    return c
