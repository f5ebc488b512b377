"""Heads on top of the encoders: ConVSE's projection MLP, the dual-path shared classifier and
image head, CMPC's norm-softmax weight and CMPM's 1x1-conv + BatchNorm embedding.

Which are per modality and which are shared follows the papers:
  - ``ConVSEHead`` and ``ProjectionHead1x1``: one instance per modality (ConVSE's ``g_I`` and
    ``g_T``; CMPM's ``image_joint_embedding`` and ``text_joint_embedding`` scopes).
  - ``DualPathHead``: the image branch's fully connected layers (the text CNN has its own).
  - ``SharedClassifier`` and ``NormClassifier``: one instance called on (or passed with) both
    modalities' features; that is what makes the classifier shared.
Every head takes features ``[B, in_dim]``.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from flax import nnx


def _check_dims(name: str, **dims: int) -> None:
    bad = {
        k: v
        for k, v in dims.items()
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1
    }
    if bad:
        raise ValueError(f"{name} dimensions must be positive integers; got {bad}.")


def _check_features(x, in_dim: int, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != in_dim:
        raise ValueError(
            f"{name} expects features [B, {in_dim}]; got shape {x.shape}. Feed the encoder's "
            "[B, out_dim] output, or build the head with in_dim = the features' last dimension."
        )
    return x


class ConVSEHead(nnx.Module):
    """ConVSE's non-linear projection head (convse paper Sec. IV-A.2; authors' ``g_I``/``g_T``).

    ``x [B, dim] -> [B, out_dim]``: ``Linear(dim, hidden, no bias) -> ReLU -> Linear(hidden,
    out_dim)``, both kernels Xavier-uniform and the last bias zero as in the authors' code. The
    paper adds one such MLP "on both the image and the text processing pipelines": build two
    instances, one per modality. The head is kept at test time (the retrieval embeddings are
    its outputs); L2-normalise its output as the authors do (the encoder below it is built with
    ``normalize=False``).

    Args:
      dim: input size (1024, the base VSE++ embedding).
      hidden: hidden units (2048).
      out_dim: output size; ``None`` means ``dim`` (the paper's best, 1024; its sweep is
        64 ... 2048).
      rngs: parameter RNG.
    """

    def __init__(
        self, dim: int = 1024, hidden: int = 2048, *, out_dim: int | None = None, rngs: nnx.Rngs
    ):
        out_dim = dim if out_dim is None else out_dim
        _check_dims("ConVSEHead", dim=dim, hidden=hidden, out_dim=out_dim)
        xavier = nnx.initializers.xavier_uniform()
        self.fc1 = nnx.Linear(dim, hidden, use_bias=False, kernel_init=xavier, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, out_dim, kernel_init=xavier, rngs=rngs)
        self.dim = dim
        self.out_dim = out_dim

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _check_features(x, self.dim, "ConVSEHead")
        return self.fc2(nnx.relu(self.fc1(x)))


class SharedClassifier(nnx.Module):
    """The dual-path paper's ``W_share`` (Sec. IV-B, Eq. 5-8): one linear classifier for both
    branches.

    ``x [B, in_dim] -> logits [B, num_classes]``, ``x @ weight + bias``. Call the same instance
    on the image and on the text features; the two logits feed ``itm_jax.losses.instance_loss``.
    ``weight [in_dim, C]`` and ``bias [C]`` are also what ``itm_jax.objective.
    outputs_from_features(cls_weight=, cls_bias=)`` takes. The paper shares the weights
    "because otherwise the learned image and text features may exist in totally different
    subspaces"; the authors' MatConvNet networks give ``fc_img`` and ``fc_txt`` the same
    parameter names (``fcsharef, fcshareb``). Their Flickr30K network has the bias, their COCO
    network (``coco_word2_pool.m``) none: ``use_bias=False``. He-normal kernel (MatConvNet's
    default ``sqrt(2 / fan_in)`` scale), zero bias.

    Args:
      in_dim: feature size (2048 in the paper).
      num_classes: one class per training image / caption group (29,783 on Flickr30K).
      use_bias: add the bias ``b`` (``bias`` is ``None`` without it).
      rngs: parameter RNG.
    """

    def __init__(self, in_dim: int, num_classes: int, *, use_bias: bool = True, rngs: nnx.Rngs):
        _check_dims("SharedClassifier", in_dim=in_dim, num_classes=num_classes)
        self.weight = nnx.Param(nnx.initializers.he_normal()(rngs.params(), (in_dim, num_classes)))
        self.bias = nnx.Param(jnp.zeros((num_classes,), jnp.float32)) if use_bias else None
        self.in_dim = in_dim
        self.num_classes = num_classes

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _check_features(x, self.in_dim, "SharedClassifier")
        logits = x @ self.weight[...]  # [B, C]
        return logits if self.bias is None else logits + self.bias[...]


class NormClassifier(nnx.Module):
    """CMPC's norm-softmax classifier weight (CMPM paper Sec. 3.3, Eq. 7-10; authors' ``Wfc``).

    Holds ``weight [in_dim, num_classes]``, no bias, Xavier-uniform as in the authors' code. It
    is a parameter holder: pass ``clf.weight`` to ``itm_jax.losses.cmpc(x, z, labels, weight)``,
    which normalises the columns to unit norm itself. The module never normalises, so the loss
    (and its gradient through the normalisation) sees the raw weight. One instance serves both
    the image and the text term.

    Args:
      in_dim: feature size (512, CMPM's embedding).
      num_classes: identities (CUHK-PEDES) or training images (Flickr30K, COCO).
      rngs: parameter RNG.
    """

    def __init__(self, in_dim: int, num_classes: int, *, rngs: nnx.Rngs):
        _check_dims("NormClassifier", in_dim=in_dim, num_classes=num_classes)
        self.weight = nnx.Param(
            nnx.initializers.xavier_uniform()(rngs.params(), (in_dim, num_classes))
        )
        self.in_dim = in_dim
        self.num_classes = num_classes


class ProjectionHead1x1(nnx.Module):
    """CMPM's joint embedding layer (authors' ``build_joint_embeddings``): 1x1 conv + BatchNorm.

    ``x [B, in_dim] -> [B, embed_dim]``. The authors apply ``slim.conv2d(features, 512, [1, 1],
    activation_fn=None)`` to the ``[B, 1, 1, in_dim]`` pooled feature under the backbone's arg
    scope, i.e. a bias-free 1x1 convolution followed by BatchNorm and no activation; on a 1x1 map
    that is a bias-free ``Linear`` + BatchNorm, as here. The output goes unnormalised into
    ``cmpm`` / ``cmpc``, which normalise inside. Use one instance per modality. The defaults
    are TF-slim's ResNet arg scope (He-scaled truncated normal kernel, BatchNorm decay 0.997,
    epsilon 1e-5; the MobileNet scope used for CUHK-PEDES has decay 0.9997, epsilon 1e-3).

    Args:
      in_dim: feature size (2048 for ResNet-152, 1024 for MobileNet or the 512-unit Bi-LSTM).
      embed_dim: joint embedding size (512).
      momentum: BatchNorm running-average decay.
      epsilon: BatchNorm epsilon.
      rngs: parameter RNG.
    """

    def __init__(
        self,
        in_dim: int,
        embed_dim: int = 512,
        *,
        momentum: float = 0.997,
        epsilon: float = 1e-5,
        rngs: nnx.Rngs,
    ):
        _check_dims("ProjectionHead1x1", in_dim=in_dim, embed_dim=embed_dim)
        self.proj = nnx.Linear(
            in_dim,
            embed_dim,
            use_bias=False,
            kernel_init=nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal"),
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(embed_dim, momentum=momentum, epsilon=epsilon, rngs=rngs)
        self.in_dim = in_dim
        self.out_dim = embed_dim

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _check_features(x, self.in_dim, "ProjectionHead1x1")
        return self.bn(self.proj(x))


DUAL_PATH_VARIANTS = ("reference", "paper")


class DualPathHead(nnx.Module):
    """The dual-path image CNN's layers after pooling (dual-path paper Sec. III-A, Fig. 2, Eq. 1).

    ``x [B, in_dim] -> f_img [B, out_dim]``. The paper: "one fully-connected layer (input dim:
    2,048, output dim: 2,048), one batch normalization, relu and one fully-connected layer
    (input dim: 2,048, output dim: 2,048)" after ResNet-50's pooled 2048-d feature.

    - ``variant="reference"`` (authors' ``resnet52_new_hope_word2_pool.m``, ``fc1 .. fc1_1``):
      ``Linear -> BatchNorm -> ReLU -> Linear -> BatchNorm -> ReLU -> Dropout``; the second fc
      is followed by a BatchNorm and a ReLU too, so ``f_img`` is non-negative.
    - ``variant="paper"``: ``Linear -> BatchNorm -> ReLU -> Linear -> Dropout``.

    Both linear layers are bias-free (MatConvNet ``hasBias=false``; the BatchNorm after the first
    makes a bias redundant) with He-normal kernels (MatConvNet's default ``sqrt(2 / fan_in)``).
    Dropout (the paper's 0.75 "applied to both CNNs"; the authors' COCO network 0.5) acts in
    training mode only; ``model.eval()`` turns it off and switches BatchNorm to its running
    statistics.

    Args:
      in_dim: backbone feature size (2048 for ResNet-50).
      out_dim: ``f_img`` size (2048), the input of ``SharedClassifier``.
      hidden: units of the first layer; ``None`` means ``out_dim`` (the paper's 2048).
      dropout: drop probability on the output.
      variant: ``"reference"`` or ``"paper"``, see above.
      rngs: parameter RNG, and the ``dropout`` stream when ``dropout > 0``.
    """

    def __init__(
        self,
        in_dim: int = 2048,
        out_dim: int = 2048,
        *,
        hidden: int | None = None,
        dropout: float = 0.0,
        variant: str = "reference",
        rngs: nnx.Rngs,
    ):
        hidden = out_dim if hidden is None else hidden
        _check_dims("DualPathHead", in_dim=in_dim, out_dim=out_dim, hidden=hidden)
        if variant not in DUAL_PATH_VARIANTS:
            raise ValueError(
                f"Unknown DualPathHead variant={variant!r}; valid: {', '.join(DUAL_PATH_VARIANTS)}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"DualPathHead dropout is a drop probability in [0, 1); got {dropout}."
            )
        he = nnx.initializers.he_normal()
        self.fc1 = nnx.Linear(in_dim, hidden, use_bias=False, kernel_init=he, rngs=rngs)
        self.bn1 = nnx.BatchNorm(hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, out_dim, use_bias=False, kernel_init=he, rngs=rngs)
        self.bn2 = nnx.BatchNorm(out_dim, rngs=rngs) if variant == "reference" else None
        # Forked after every parameter, so that turning dropout on keeps the initial weights.
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.in_dim = in_dim
        self.out_dim = out_dim

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _check_features(x, self.in_dim, "DualPathHead")
        x = self.fc2(nnx.relu(self.bn1(self.fc1(x))))  # [B, out_dim]
        if self.bn2 is not None:
            x = nnx.relu(self.bn2(x))
        return x if self.dropout is None else self.dropout(x)
