"""VSE0 / VSE++ (Faghri et al., BMVC 2018) on Flickr30K: ResNet-152 + GRU, sum or max of hinges.

Targets the VSE++ paper's "RN, FT" rows, with the numbers as later papers reprint them
(Flickr30K 1K test, i2t R@1/5/10 | t2i R@1/5/10 | R-sum):
  loss=mh (VSE++): ConVSE Table III "VSE++ ResNet-152" (= IMC Table 2 "VSE++ [1]")
                   52.9 80.5 87.2 | 39.6 70.1 79.5 | 409.8
  loss=sh (VSE0):  ConVSE Table III "VSE ResNet-152"
                   42.1 73.2 84.0 | 31.8 62.6 74.1 | 367.8
  IMC Table 3 row "lambda = 0 (i.e. MH loss)" is the MH loss in IMC's own network (Bi-LSTM,
  GloVe, frozen CNN; = imc_f30k.py with lam=0): 57.1 83.7 90.9 | 44.5 74.5 83.2 | 433.9.
  The AOQ paper has no VSE++ row (its baselines are SCAN, BFAN and VSRN).

    python -m itm_jax.main --config=configs/vse_f30k.py:loss=mh --workdir=workdir/vsepp_f30k

Data: data.name="karpathy/flickr30k" (``python -m itm_jax.data.karpathy --config flickr30k``);
data.data_dir = that TFDS data_dir ("" = ~/tensorflow_datasets).

Schedule: 30 @ 2e-4 (x0.1 every 15) frozen, 15 @ 2e-5.

Recipe (VSE++ paper = its code fartashf/vsepp): batch 128, margin 0.2, Adam, gradient clip 2,
1024-d joint space, 300-d word embeddings, one-layer GRU; ResNet-152 frozen for 30 epochs (lr
2e-4, x0.1 after 15), then everything fine-tuned at 2e-5 for 15 epochs (a new stage, so Adam
restarts as when the code resumes with --finetune). Differs: the ResNet-152 must start from
ImageNet weights, which the trainer cannot load from the config yet (docs/reproducing.md);
two captions of one image in a batch are not negatives (``use_id_positives``; the code treats
them as negatives).

Presets: ``loss=sh|mh`` (default mh), ``smoke`` (synthetic 64x64 images, small CNN, 2 steps/stage).
"""

from configs import common, default

LOSSES = {"sh": "sum_of_hinges", "mh": "max_of_hinges"}


def get_config(arg=None):
    a = common.parse_arg(arg, loss="mh", smoke=False)
    common.check_choice("loss", a.loss, LOSSES)
    c = default.get_config()
    common.flickr30k(c)
    c.model.image = "resnet152"
    c.model.text = "gru"
    c.model.embed_dim = 1024
    c.model.word_dim = 300
    c.losses = [common.loss(LOSSES[a.loss], margin=0.2)]
    c.batch_size = 128
    c.eval_batch_size = 128
    c.optim.lr_decay_epochs = 15
    c.optim.lr_decay_factor = 0.1
    c.optim.grad_clip = 2.0
    c.stages = [common.stage(30, 2e-4, freeze_backbone=True), common.stage(15, 2e-5)]
    if a.smoke:
        common.smoke(c, image="cnn")
    return c
