"""ConVSE / ConVSE++ (Jain and Verma, "Contrastive Learning of Visual-Semantic Embeddings") on
Flickr30K: VSE++'s ResNet-152 + GRU base network, then MLP heads trained with a contrastive loss.

Targets: ConVSE paper Table III (= Table IV; the median-R-sum run of Table I), Flickr30K 1K test,
i2t R@1/5/10 | t2i R@1/5/10 | R-sum:
    loss=csn (ConVSE):   "ConVSE (Ours)"    55.6 81.0 88.8 | 39.0 69.3 79.4 | 413.1
    loss=cmn (ConVSE++): "ConVSE++ (Ours)"  57.8 84.3 88.9 | 41.0 71.1 80.0 | 423.1
  (Table I five-run means: ConVSE 413.5 +- 1.19, ConVSE++ 423.0 +- 1.10 R-sum.)

    python -m itm_jax.main --config=configs/convse_f30k.py:loss=cmn --workdir=workdir/convsepp_f30k

Data: data.name="karpathy/flickr30k" (29,000 / 1,014 / 1,000 images as the paper's split;
``python -m itm_jax.data.karpathy --config flickr30k``); data.data_dir = that TFDS data_dir
("" = ~/tensorflow_datasets).

Schedule: 15 @ 2e-4 frozen, 15 @ 2e-5 frozen, 15 @ 2e-5, 30 @ 2e-5 frozen.

Recipe (paper Sec. IV-A; the authors' code anuragjain96/ConVsepp builds on VSE++): base network
= VSE++ (ResNet-152 + linear to 1024-d, GRU over 300-d words, MH loss margin 0.2), trained with
the image encoder fixed for 30 epochs (2e-4 for 15, then 2e-5), then fine-tuned with the image
encoder at 2e-5 for 15 epochs; then the ConVSE heads (Linear 1024->2048 no bias, ReLU, Linear
2048->1024, ``model.convse_head=True``, kept at test time) on both branches and the contrastive
loss (tau 0.1; ConVSE++ adds margin 0.2), 30 epochs at a fixed 2e-5 with the image encoder frozen
again. Adam, gradient clip 2 (VSE++ code). The MH loss is active in the three base stages and the
contrastive loss only in the last (``loss_weights``). Differs: the heads exist from the start,
so the base stages train MH through them (the paper adds them after the base network; the trainer
has no per-stage model switch and no ``init_from`` of a base run); one batch size for all stages:
256, the paper's for the head stage (its base stages use 128); the base stages' 30 epochs are two
stages, so Adam restarts at epoch 15; ImageNet and word2vec weights are not loadable from the
config (docs/reproducing.md).

Presets: ``loss=csn|cmn`` (default cmn), ``smoke`` (synthetic 64x64 images, small CNN,
2 steps/stage).
"""

from configs import common, default

LOSSES = {"csn": "contrastive_sum_negatives", "cmn": "contrastive_max_negative"}


def get_config(arg=None):
    a = common.parse_arg(arg, loss="cmn", smoke=False)
    common.check_choice("loss", a.loss, LOSSES)
    c = default.get_config()
    common.flickr30k(c)
    c.model.image = "resnet152"
    c.model.text = "gru"
    c.model.embed_dim = 1024
    c.model.word_dim = 300
    c.model.convse_head = True
    con = LOSSES[a.loss]
    c.losses = [common.loss("max_of_hinges", margin=0.2),
                common.loss(con, tau=0.1, **({"margin": 0.2} if a.loss == "cmn" else {}))]
    c.batch_size = 256
    c.eval_batch_size = 128
    c.optim.lr_decay_factor = 1.0
    c.optim.grad_clip = 2.0
    base, head = {con: 0.0}, {"max_of_hinges": 0.0}
    c.stages = [
        common.stage(15, 2e-4, freeze_backbone=True, loss_weights=base),
        common.stage(15, 2e-5, freeze_backbone=True, loss_weights=base),
        common.stage(15, 2e-5, loss_weights=base),
        common.stage(30, 2e-5, freeze_backbone=True, loss_weights=head),
    ]
    if a.smoke:
        common.smoke(c, image="cnn")
    return c
