"""ConVSE / ConVSE++ (Jain and Verma, "Contrastive Learning of Visual-Semantic Embeddings") on
COCO: VSE++'s ResNet-152 + GRU base network, then MLP heads trained with a contrastive loss.

Targets: ConVSE paper Table III (= Table IV; the median-R-sum run of Table I), COCO 5-fold 1K
test average, i2t R@1/5/10 | t2i R@1/5/10 | R-sum (the paper reports no 5K numbers):
    loss=csn (ConVSE):   "ConVSE (Ours)"    63.9 89.3 95.3 | 50.5 83.3 92.3 | 474.6
    loss=cmn (ConVSE++): "ConVSE++ (Ours)"  66.7 91.5 96.6 | 53.1 84.1 91.6 | 483.6
  (Table I five-run means: ConVSE 474.4 +- 0.68, ConVSE++ 483.5 +- 0.15 R-sum.)

    python -m itm_jax.main --config=configs/convse_coco.py:loss=cmn --workdir=workdir/convsepp_coco

Data: data.name="karpathy/coco_restval" (113,287 training images as the paper;
``python -m itm_jax.data.karpathy --config coco_restval``); data.data_dir = that TFDS data_dir
("" = ~/tensorflow_datasets). Test: the 5K split, 5-fold 1K average (and 5K).

Schedule: 15 @ 2e-4 frozen, 15 @ 2e-5 frozen, 15 @ 2e-5, 30 @ 2e-5 frozen.

Recipe (paper Sec. IV-A, "the same training set-up" for both datasets): VSE++ base network
(ResNet-152 + linear to 1024-d, GRU over 300-d words, MH margin 0.2) trained 30 epochs with the
image encoder fixed (2e-4 for 15, then 2e-5) and fine-tuned 15 epochs at 2e-5; then the ConVSE
heads (``model.convse_head=True``) and the contrastive loss (tau 0.1, ConVSE++ margin 0.2) for 30
epochs at 2e-5 with the image encoder frozen. Adam, gradient clip 2. Differs as convse_f30k.py:
heads present (and trained with MH) in the base stages, batch 256 throughout (base stages 128 in
the paper), Adam restarts at epoch 15, no ImageNet / word2vec weights from the config
(docs/reproducing.md).

Presets: ``loss=csn|cmn`` (default cmn), ``smoke`` (synthetic 64x64 images, small CNN,
2 steps/stage).
"""

from configs import common, default

LOSSES = {"csn": "contrastive_sum_negatives", "cmn": "contrastive_max_negative"}


def get_config(arg=None):
    a = common.parse_arg(arg, loss="cmn", smoke=False)
    common.check_choice("loss", a.loss, LOSSES)
    c = default.get_config()
    common.coco(c, restval=True)
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
