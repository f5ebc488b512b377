"""The two-branch model: a batch in, the model outputs the objective reads out.

``DualEncoder`` owns one image encoder, one text encoder and the optional heads of the papers
(ConVSE projection heads, the dual-path shared classifier, the CMPC classifier), and maps a
batch to ``(img_feat, txt_feat)`` plus the heads' outputs. ``build_dual_encoder(config.model,
...)`` builds it from an ml-collections config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from itm_jax.models.heads import ConVSEHead, NormClassifier, SharedClassifier
from itm_jax.models.image import ImageEncoder, PrecompProjection, SmallCNN
from itm_jax.models.mobilenet import MobileNetV1
from itm_jax.models.resnet import resnet50, resnet152
from itm_jax.models.text import BiLSTMTextEncoder, GRUTextEncoder, TextCNN
from itm_jax.similarity import l2_normalize

IMAGE_ENCODERS = ("precomp", "small_cnn", "resnet50", "resnet152", "mobilenet")
TEXT_ENCODERS = ("gru", "bilstm_mean", "bilstm_max", "text_cnn")
CLASSIFIERS = ("none", "shared", "norm")


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
        normalize: bool = True,
    ):
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.img_head = img_head
        self.txt_head = txt_head
        self.classifier = classifier
        self.normalize = normalize

    def embed_images(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """``[B, D]`` image outputs (the joint-space image embedding)."""
        x = batch["image_feat"] if "image_feat" in batch else batch["image"]
        x = self.image_encoder(x)
        x = self.img_head(x) if self.img_head is not None else x
        return l2_normalize(x) if self.normalize else x

    def embed_captions(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """``[B, D]`` caption outputs."""
        x = self.text_encoder(batch["tokens"], batch["length"])
        x = self.txt_head(x) if self.txt_head is not None else x
        return l2_normalize(x) if self.normalize else x

    def __call__(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        out = {"img_feat": self.embed_images(batch), "txt_feat": self.embed_captions(batch)}
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
    """``DualEncoder`` from ``config.model``.

    Config fields: ``image`` (one of ``IMAGE_ENCODERS``), ``text`` (one of ``TEXT_ENCODERS``),
    ``embed_dim``, ``word_dim``, ``max_len`` (the text CNN's window), ``normalize`` (L2-normalise the branch outputs),
    ``freeze_backbone``, ``small_cnn_dim``, ``mobilenet_alpha``, ``convse_head`` (bool; ConVSE's
    MLP on both branches), ``classifier`` (one of ``CLASSIFIERS``).

    Args:
      cfg: the model config. vocab_size: words of the vocabulary. num_classes: classifier
        classes (training images or identities). image_dim: precomputed-feature size
        ``F`` (for ``image="precomp"``). word_vectors: optional ``[vocab_size, word_dim]``
        embedding initialiser. rngs: parameter RNGs (and ``dropout``/``shift`` streams).
    """
    image, text = cfg["image"], cfg["text"]
    embed, word = cfg["embed_dim"], cfg["word_dim"]
    if image not in IMAGE_ENCODERS:
        raise ValueError(f"Unknown model.image={image!r}; valid: {', '.join(IMAGE_ENCODERS)}.")
    if text not in TEXT_ENCODERS:
        raise ValueError(f"Unknown model.text={text!r}; valid: {', '.join(TEXT_ENCODERS)}.")
    classifier = cfg.get("classifier", "none")
    if classifier not in CLASSIFIERS:
        raise ValueError(f"Unknown model.classifier={classifier!r}; valid: {', '.join(CLASSIFIERS)}.")
    # The branch encoders normalise nothing themselves: `DualEncoder` normalises after the heads.
    if image == "precomp":
        if image_dim <= 0:
            raise ValueError("model.image='precomp' needs the feature size (image_dim > 0).")
        image_encoder = PrecompProjection(image_dim, embed, normalize=False, rngs=rngs)
    else:
        backbone = {
            "small_cnn": lambda: SmallCNN(cfg.get("small_cnn_dim", 128), rngs=rngs),
            "resnet50": lambda: resnet50(rngs=rngs),
            "resnet152": lambda: resnet152(rngs=rngs),
            "mobilenet": lambda: MobileNetV1(cfg.get("mobilenet_alpha", 1.0), rngs=rngs),
        }[image]()
        image_encoder = ImageEncoder(
            backbone, backbone.feat_dim, embed, freeze_backbone=cfg.get("freeze_backbone", False),
            normalize=False, rngs=rngs,
        )
    if text == "gru":
        text_encoder = GRUTextEncoder(vocab_size, word, embed, normalize=False,
                                      pretrained=word_vectors, rngs=rngs)
    elif text.startswith("bilstm"):
        pooling = "last_mean" if text == "bilstm_mean" else "max"
        hidden = embed if pooling == "last_mean" else embed // 2
        text_encoder = BiLSTMTextEncoder(vocab_size, word, hidden, pooling=pooling,
                                         normalize=False, pretrained=word_vectors, rngs=rngs)
    else:
        text_encoder = TextCNN(vocab_size, word, seq_len=cfg.get("max_len", 32), head_dim=embed,
                               pretrained=word_vectors, rngs=rngs)
    heads = {}
    if cfg.get("convse_head", False):
        heads = {"img_head": ConVSEHead(embed, 2 * embed, rngs=rngs),
                 "txt_head": ConVSEHead(embed, 2 * embed, rngs=rngs)}
    if classifier != "none" and num_classes <= 0:
        raise ValueError(f"model.classifier={classifier!r} needs num_classes > 0.")
    cls = {"none": lambda: None,
           "shared": lambda: SharedClassifier(embed, num_classes, rngs=rngs),
           "norm": lambda: NormClassifier(embed, num_classes, rngs=rngs)}[classifier]()
    return DualEncoder(image_encoder, text_encoder, classifier=cls,
                       normalize=cfg.get("normalize", True), **heads)
