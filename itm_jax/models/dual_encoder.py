"""The two-branch model: a batch in, the model outputs the objective reads out.

``DualEncoder`` owns one image encoder, one text encoder and the optional heads of the papers
(ConVSE projection heads, CMPM's 1x1-conv heads, the dual-path shared classifier, the CMPC
classifier; a CNN image encoder owns the layers after its backbone, e.g. the dual-path
``DualPathHead``), and maps a batch to ``(img_feat, txt_feat)`` plus the heads' outputs.
``build_dual_encoder(config.model, ...)`` builds it from an ml-collections config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from itm_jax.errors import ConfigError
from itm_jax.models.heads import (
    ConVSEHead,
    DualPathHead,
    NormClassifier,
    ProjectionHead1x1,
    SharedClassifier,
)
from itm_jax.models.image import ImageEncoder, PrecompProjection, SmallCNN
from itm_jax.models.mobilenet import MobileNetV1
from itm_jax.models.resnet import resnet50, resnet152
from itm_jax.models.text import (
    PAPER_BLOCKS,
    SMALL_BLOCKS,
    BiLSTMTextEncoder,
    GRUTextEncoder,
    TextCNN,
)
from itm_jax.models.batch import shares_batch_statistics, with_rows
from itm_jax.models.set_encoder import build_set_encoder
from itm_jax.models.vsrn import CaptionGenerator, VSRNImageEncoder, caption_targets
from itm_jax.similarity import l2_normalize

IMAGE_ENCODERS = ("precomp", "small_cnn", "resnet50", "resnet152", "mobilenet", "vsrn", "regions")
TEXT_ENCODERS = ("gru", "bilstm_mean", "bilstm_max", "text_cnn", "bigru_words")
# Image encoders that read precomputed (region) features rather than pixels.
FEATURE_IMAGES = ("precomp", "vsrn", "regions")
CLASSIFIERS = ("none", "shared", "norm")
IMAGE_HEADS = ("linear", "projection_1x1", "dual_path")
TEXT_HEADS = ("none", "projection_1x1")
TEXT_CNN_BLOCKS = ("small", "paper")
# Architecture options of the paper recipes and their defaults, which build the plain encoders.
OPTIONS = {"text_hidden": 0, "text_dropout": 0.0, "text_cnn": "small", "image_head": "linear",
           "image_dropout": 0.0, "text_head": "none"}


class DualEncoder(nnx.Module):
    """Image and text branches and their heads.

    ``__call__(batch)`` takes ``image_feat [B, F]`` (or ``[B, R, F]``) or ``image [B, H, W, 3]``,
    and ``tokens [B, L]``, ``length [B]``, and returns:
      ``img_feat, txt_feat [B, D]``: the branch outputs fed to the losses (L2-normalised when
      ``normalize``; CMPM/CMPC take them unnormalised),
      ``img_logits, txt_logits [B, C]`` with a shared classifier, ``cls_weight [D, C]`` with
      the CMPC classifier.
    """

    def __init__(
        self,
        image_encoder: nnx.Module,
        text_encoder: nnx.Module,
        *,
        img_head: nnx.Module | None = None,
        txt_head: nnx.Module | None = None,
        classifier: nnx.Module | None = None,
        caption_generator: CaptionGenerator | None = None,
        normalize: bool = True,
    ):
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.img_head = img_head
        self.txt_head = txt_head
        self.classifier = classifier
        self.caption_generator = caption_generator
        self.normalize = normalize

    def embed_images(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """``[B, D]`` image outputs (the joint-space image embedding)."""
        return self._image(batch)[0]

    def _image(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array | None]:
        """The image outputs and, for VSRN's encoder, its refined regions ``[B, N, E]``."""
        x = self.image_encoder(batch["image_feat"] if "image_feat" in batch else batch["image"])
        x, regions = x if isinstance(self.image_encoder, VSRNImageEncoder) else (x, None)
        x = self.img_head(x) if self.img_head is not None else x
        return (l2_normalize(x) if self.normalize else x), regions

    def embed_captions(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """``[B, D]`` caption outputs."""
        x = self.text_encoder(batch["tokens"], batch["length"])
        x = self.txt_head(x) if self.txt_head is not None else x
        return l2_normalize(x) if self.normalize else x

    def __call__(self, batch: Mapping[str, jax.Array], *, extra_images=None,
                 extra_captions=None) -> dict[str, jax.Array]:
        """The outputs of ``batch``'s pairs and the embeddings of ``extra_images`` /
        ``extra_captions`` (fields named as the batch's) as ``extra_images`` / ``extra_captions``
        ``[E, D]``: in the batch's forward pass when the model has BatchNorm
        (``shares_batch_statistics``: VSRN), else on their own."""
        b = batch["tokens"].shape[0]
        joint = shares_batch_statistics(self)
        rows = with_rows(batch, extra_images, extra_captions) if joint else batch
        img_feat, regions = self._image(rows)
        txt_feat = self.embed_captions(rows)
        out = {"img_feat": img_feat[:b], "txt_feat": txt_feat[:b]}
        if extra_images is not None:
            out["extra_images"] = img_feat[b:] if joint else self.embed_images(extra_images)
        if extra_captions is not None:
            out["extra_captions"] = txt_feat[b:] if joint else self.embed_captions(extra_captions)
        regions = None if regions is None else regions[:b]
        if self.caption_generator is not None:
            inputs, targets, mask = caption_targets(batch["tokens"], batch["length"])
            out.update(caption_log_probs=self.caption_generator(regions, inputs),
                       caption_targets=targets, caption_mask=mask)
        if isinstance(self.classifier, SharedClassifier):
            out["img_logits"] = self.classifier(out["img_feat"])
            out["txt_logits"] = self.classifier(out["txt_feat"])
        elif isinstance(self.classifier, NormClassifier):
            out["cls_weight"] = self.classifier.weight[...]
        return out


def build_dual_encoder(
    cfg: Mapping[str, Any], *, vocab_size: int, num_classes: int = 0, image_dim: int = 0,
    word_vectors: jax.Array | None = None, rngs: nnx.Rngs,
) -> DualEncoder:
    """``DualEncoder`` from ``config.model`` (``image="regions"``: the ``SetEncoder`` of
    ``itm_jax.models.set_encoder.build_set_encoder``, scored by ``model.scorer``).

    Config fields: ``image`` (one of ``IMAGE_ENCODERS``), ``text`` (one of ``TEXT_ENCODERS``),
    ``embed_dim``, ``word_dim``, ``max_len`` (the text CNN's window), ``normalize`` (L2-normalise
    the branch outputs), ``freeze_backbone``, ``small_cnn_dim``, ``mobilenet_alpha``,
    ``convse_head`` (bool; ConVSE's MLP on both branches), ``classifier`` (one of
    ``CLASSIFIERS``), ``gru_impl`` (how the GRU encoder runs: ``"auto"``, ``"scan"`` or
    ``"packed"``, see ``GRUTextEncoder``; the same function either way), and the ``OPTIONS``,
    whose defaults build the plain encoders:

    - ``text_hidden``: recurrent units (per direction for the Bi-LSTM); 0 derives them from
      ``embed_dim`` (``embed_dim``, or ``embed_dim // 2`` for ``bilstm_max``, whose two
      directions are concatenated). CMPM: 512 per direction, i.e. 1024-d pooled features.
    - ``text_dropout``: drop probability of the text encoder in training mode (the Bi-LSTM's
      word embeddings, the text CNN's output); IMC 0.5, dual-path 0.75. The GRU has none.
    - ``text_cnn``: the text CNN's residual stack, one of ``TEXT_CNN_BLOCKS`` (``"paper"`` with
      ``word_dim=300, embed_dim=2048`` is ``TextCNN.paper``).
    - ``image_head``: the layers after a CNN backbone, one of ``IMAGE_HEADS``: VSE++'s Xavier
      ``"linear"``, CMPM's ``"projection_1x1"`` (``ProjectionHead1x1``) or the dual-path
      ``"dual_path"`` (``DualPathHead``, its dropout ``image_dropout``).
    - ``text_head``: ``"none"`` or ``"projection_1x1"`` (CMPM's 1x1 conv + BatchNorm from the
      text features to ``embed_dim``), one of ``TEXT_HEADS``.

    Args:
      cfg: the model config. vocab_size: words of the vocabulary. num_classes: classifier
        classes (training images or identities). image_dim: precomputed-feature size
        ``F`` (for ``image="precomp"``). word_vectors: optional ``[vocab_size, word_dim]``
        embedding initialiser. rngs: parameter RNGs (and ``dropout``/``shift`` streams).
    """
    image, text = cfg["image"], cfg["text"]
    embed, word = cfg["embed_dim"], cfg["word_dim"]
    classifier = cfg.get("classifier", "none")
    opt = {k: cfg.get(k, v) for k, v in OPTIONS.items()}
    for field, value, valid in (("image", image, IMAGE_ENCODERS), ("text", text, TEXT_ENCODERS),
                                ("classifier", classifier, CLASSIFIERS),
                                ("image_head", opt["image_head"], IMAGE_HEADS),
                                ("text_head", opt["text_head"], TEXT_HEADS),
                                ("text_cnn", opt["text_cnn"], TEXT_CNN_BLOCKS)):
        if value not in valid:
            raise ValueError(f"Unknown model.{field}={value!r}; valid: {', '.join(valid)}.")
    check_options(image, text, opt, convse_head=cfg.get("convse_head", False))
    if (image == "regions") != (text == "bigru_words"):
        raise ConfigError("model.image='regions' and model.text='bigru_words' go together: the "
                          "SCAN/BFAN model of region and word sets (set both, with model.scorer).")
    if image in FEATURE_IMAGES and image_dim <= 0:
        raise ValueError(f"model.image={image!r} needs the feature size (image_dim > 0).")
    if image == "regions":
        return build_set_encoder(cfg, vocab_size=vocab_size, image_dim=image_dim,
                                 word_vectors=word_vectors, rngs=rngs)
    if cfg.get("scorer", "dot") != "dot":
        raise ConfigError(f"model.scorer={cfg['scorer']!r} scores sets of regions and words: "
                          "set model.image='regions' and model.text='bigru_words', or "
                          "model.scorer='dot'.")
    gru_impl = cfg.get("gru_impl", "auto")
    if text != "gru" and gru_impl != "auto":
        raise ConfigError(f"model.gru_impl={gru_impl!r} selects how the GRU encoder runs; "
                          f"model.text={text!r} has no GRU: leave model.gru_impl='auto'.")
    # TF-slim arg scope (BatchNorm decay, epsilon) of the CMPM authors' image network, which
    # both 1x1-conv heads are built under.
    slim_bn = {"momentum": 0.9997, "epsilon": 1e-3} if image == "mobilenet" else {}
    # The branch encoders normalise nothing themselves: `DualEncoder` normalises after the heads.
    if image == "precomp":
        image_encoder = PrecompProjection(image_dim, embed, normalize=False, rngs=rngs)
    elif image == "vsrn":
        image_encoder = VSRNImageEncoder(image_dim, embed, variant=cfg.get("vsrn_variant", "coco"),
                                         rngs=rngs)
    else:
        backbone = {
            "small_cnn": lambda: SmallCNN(cfg.get("small_cnn_dim", 128), rngs=rngs),
            "resnet50": lambda: resnet50(rngs=rngs),
            "resnet152": lambda: resnet152(rngs=rngs),
            "mobilenet": lambda: MobileNetV1(cfg.get("mobilenet_alpha", 1.0), rngs=rngs),
        }[image]()
        head = {
            "linear": lambda: None,
            "projection_1x1": lambda: ProjectionHead1x1(backbone.feat_dim, embed, **slim_bn,
                                                        rngs=rngs),
            "dual_path": lambda: DualPathHead(backbone.feat_dim, embed,
                                              dropout=opt["image_dropout"], rngs=rngs),
        }[opt["image_head"]]()
        image_encoder = ImageEncoder(
            backbone, backbone.feat_dim, embed, freeze_backbone=cfg.get("freeze_backbone", False),
            head=head, normalize=False, rngs=rngs,
        )
    if text == "gru":
        # VSRN's caption encoder is the authors' PyTorch GRU exactly (their checkpoints convert).
        text_encoder = GRUTextEncoder(vocab_size, word, opt["text_hidden"] or embed,
                                      normalize=False, pretrained=word_vectors,
                                      gru_impl=gru_impl, torch_cell=image == "vsrn", rngs=rngs)
    elif text.startswith("bilstm"):
        pooling = "last_mean" if text == "bilstm_mean" else "max"
        hidden = opt["text_hidden"] or (embed if pooling == "last_mean" else embed // 2)
        text_encoder = BiLSTMTextEncoder(vocab_size, word, hidden, pooling=pooling,
                                         normalize=False, dropout=opt["text_dropout"],
                                         pretrained=word_vectors, rngs=rngs)
    else:
        blocks = PAPER_BLOCKS if opt["text_cnn"] == "paper" else SMALL_BLOCKS
        text_encoder = TextCNN(vocab_size, word, seq_len=cfg.get("max_len", 32), blocks=blocks,
                               head_dim=embed, dropout=opt["text_dropout"], pretrained=word_vectors,
                               rngs=rngs)
    heads = {}
    if cfg.get("convse_head", False):
        heads = {"img_head": ConVSEHead(embed, 2 * embed, rngs=rngs),
                 "txt_head": ConVSEHead(embed, 2 * embed, rngs=rngs)}
    if opt["text_head"] == "projection_1x1":
        heads["txt_head"] = ProjectionHead1x1(text_encoder.out_dim, embed, **slim_bn, rngs=rngs)
    elif text_encoder.out_dim != embed:
        raise ValueError(
            f"The {text} encoder gives {text_encoder.out_dim}-d features "
            f"(model.text_hidden={opt['text_hidden']}) but embed_dim={embed}; set "
            "model.text_head='projection_1x1' to map them to embed_dim.")
    if classifier != "none" and num_classes <= 0:
        raise ValueError(f"model.classifier={classifier!r} needs num_classes > 0.")
    cls = {"none": lambda: None,
           "shared": lambda: SharedClassifier(embed, num_classes, rngs=rngs),
           "norm": lambda: NormClassifier(embed, num_classes, rngs=rngs)}[classifier]()
    if cfg.get("caption_generator", False) and image != "vsrn":
        raise ConfigError("model.caption_generator is VSRN's caption branch over its refined "
                          "regions: set model.image='vsrn'.")
    generator = (CaptionGenerator(vocab_size, embed, rngs=rngs)
                 if cfg.get("caption_generator", False) else None)
    return DualEncoder(image_encoder, text_encoder, classifier=cls, caption_generator=generator,
                       normalize=cfg.get("normalize", True), **heads)


def check_options(image: str, text: str, opt: Mapping[str, Any], *, convse_head: bool) -> None:
    """Reject option combinations the builder would otherwise silently ignore."""
    if image == "precomp" and opt["image_head"] != "linear":
        raise ValueError(f"model.image_head={opt['image_head']!r} follows a CNN backbone; "
                         "model.image='precomp' has its own linear projection.")
    if opt["image_dropout"] and opt["image_head"] != "dual_path":
        raise ValueError("model.image_dropout is the dropout of model.image_head='dual_path'.")
    if text == "gru" and opt["text_dropout"]:
        raise ValueError("model.text_dropout: the GRU encoder (VSE++) has no dropout.")
    if text == "text_cnn" and opt["text_hidden"]:
        raise ValueError("model.text_hidden sizes recurrent encoders; the text CNN's output is "
                         "embed_dim (its blocks: model.text_cnn).")
    if text != "text_cnn" and opt["text_cnn"] != "small":
        raise ValueError("model.text_cnn selects the text CNN's blocks; set model.text='text_cnn'.")
    if opt["text_head"] != "none" and convse_head:
        raise ValueError("model.text_head and model.convse_head both put a head on the text "
                         "branch; choose one.")
