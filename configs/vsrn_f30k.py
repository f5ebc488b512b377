"""VSRN (Li et al., "Visual Semantic Reasoning for Image-Text Matching", ICCV 2019) on
Flickr30K: region features refined by four graph-reasoning blocks and read by a GRU into one
image embedding, VSE++'s GRU caption encoder, dot-product scores; trained with max of hinges
plus the caption-generation term.

Target: the AOQ paper's Table 2 "VSRN [15]" row (Flickr30K 1K test, i2t R@1/5/10 | t2i R@1/5/10
| R-sum), AOQ's round-1 model:
    71.3 90.6 96.0 | 54.7 81.8 88.2 | 482.6

    python -m itm_jax.main --config=configs/vsrn_f30k.py --workdir=workdir/vsrn_f30k \\
        --config.data.data_dir=data/f30k_precomp

Data: data.name="precomp" with the bottom-up region features (``data/f30k_precomp``,
[N, 36, 2048]); data.data_dir (required) = that folder.

Schedule: 20 @ 2e-4 (x0.1 every 10).

Recipe (the VSRN code, as the AOQ paper runs it: lr 2e-4 for 10 epochs then 2e-5 for 10):
max of hinges (margin 0.2, summed over the batch and both directions) + caption generation
(weight 1), batch 128, Adam, gradient clip 2, 2048-d joint space, 300-d words, the ``f30k``
variant of the image encoder (BatchNorm on the image GRU's state, no normalisation over regions
after the first layer). Differs: the authors' optimiser holds the caption branch's parameters
twice (Adam steps them twice, the clip norm counts them twice), ours once; ``use_id_positives``.

Presets: ``smoke`` (synthetic region features, 3 steps).
"""

from configs import common, default


def get_config(arg=None, *, variant="f30k"):
    a = common.parse_arg(arg, smoke=False)
    c = default.get_config()
    common.precomp(c, test_split="test", protocol="all")
    c.model.image = "vsrn"
    c.model.vsrn_variant = variant
    c.model.caption_generator = True
    c.model.text = "gru"
    c.model.embed_dim = 2048
    c.model.word_dim = 300
    c.losses = [common.loss("max_of_hinges", margin=0.2), common.loss("caption_generation")]
    c.batch_size = 128
    c.stages = []
    c.num_epochs = 20
    c.optim.learning_rate = 2e-4
    c.optim.lr_decay_epochs = 10
    c.optim.lr_decay_factor = 0.1
    c.optim.grad_clip = 2.0
    if a.smoke:
        common.smoke(c, image="regions")
    return c
