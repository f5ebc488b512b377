"""Image encoders: VSE++'s projection of precomputed features, and backbone + projection.

Faghri et al., "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives", BMVC 2018,
Sec. 3 and the authors' ``model.py``: an image is embedded as ``l2norm(W f + b)`` where ``f``
is a CNN feature (precomputed, ``EncoderImagePrecomp``, or computed on the fly by a possibly
frozen CNN, ``EncoderImageFull``) and ``W`` a Xavier-initialised linear map. IMC, ConVSE and
AOQ build on this encoder; CMPM and the dual-path paper use the backbones here with their own
heads.

A backbone is any NNX module called as ``backbone(images, *, use_running_average=None)``
returning ``[B, feat_dim]``: ``ResNet``, ``MobileNetV1`` and ``SmallCNN`` are.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from itm_jax.models.resnet import check_nhwc, torch_batch_norm, torch_conv
from itm_jax.similarity import l2_normalize


def xavier_linear(in_dim: int, out_dim: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """VSE++'s ``init_weights``: weight ~ U(-r, r) with ``r = sqrt(6 / (in + out))``, bias 0."""
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f"Linear dimensions must be >= 1; got in={in_dim}, out={out_dim}.")
    return nnx.Linear(
        in_dim,
        out_dim,
        kernel_init=nnx.initializers.xavier_uniform(),
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
    )


class PrecompProjection(nnx.Module):
    """VSE++ ``EncoderImagePrecomp``: embeddings of precomputed image features.

    ``features [B, F] -> [B, embed_dim]``: ``l2norm(W f + b)``. VSE++ feeds it CNN features
    that were L2-normalised when they were extracted; this module does not normalise its input.

    ``features [B, R, F]`` (a set of R region features per image, e.g. bottom-up attention
    boxes) with an optional ``mask [B, R]`` (True / 1 for a real region, False / 0 for padding):
    every valid region is projected, the projections are averaged over the valid regions, and
    the mean is L2-normalised. Padded regions are zeroed before the projection, so their values
    (even NaN or inf) change neither the output nor any gradient. A row with no valid region
    embeds to the zero vector.

    Args:
      in_dim: feature dimension F.
      embed_dim: joint embedding dimension.
      normalize: L2-normalise the output (VSE++'s ``no_imgnorm=False``); ``False`` returns the
        raw projection, for losses that normalise themselves (CMPM).
      rngs: parameter RNG.
    """

    def __init__(self, in_dim: int, embed_dim: int, *, normalize: bool = True, rngs: nnx.Rngs):
        self.fc = xavier_linear(in_dim, embed_dim, rngs=rngs)
        self.in_dim = in_dim
        self.embed_dim = embed_dim
        self.normalize = normalize

    def __call__(self, features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        features = jnp.asarray(features)
        if features.ndim not in (2, 3) or features.shape[-1] != self.in_dim:
            raise ValueError(
                f"PrecompProjection expects features [B, {self.in_dim}] or region sets "
                f"[B, R, {self.in_dim}]; got shape {features.shape}."
            )
        if features.ndim == 2:
            if mask is not None:
                raise ValueError(
                    "PrecompProjection takes a region mask only with region sets [B, R, F]; "
                    f"got features {features.shape} and a mask."
                )
            emb = self.fc(features)  # [B, D]
        else:
            if mask is None:
                emb = jnp.mean(self.fc(features), axis=1)  # [B, R, D] -> [B, D]
            else:
                mask = jnp.asarray(mask)
                if mask.shape != features.shape[:2]:
                    raise ValueError(
                        f"PrecompProjection mask must be [B, R] = {features.shape[:2]}; got "
                        f"{mask.shape}."
                    )
                valid = mask.astype(bool)[..., None]  # [B, R, 1]
                proj = self.fc(jnp.where(valid, features, 0))  # [B, R, D]
                total = jnp.sum(jnp.where(valid, proj, 0), axis=1)  # [B, D]
                count = jnp.sum(valid, axis=1)  # [B, 1]
                emb = total / jnp.maximum(count, 1).astype(total.dtype)
        return l2_normalize(emb) if self.normalize else emb


class ConvBNReLU(nnx.Module):
    """3x3 convolution (padding 1, no bias), BatchNorm, ReLU.

    ``[B, H, W, cin] -> [B, H / stride, W / stride, cout]``.
    """

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv = torch_conv(cin, cout, 3, stride, rngs=rngs)
        self.bn = torch_batch_norm(cout, rngs=rngs)

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x), use_running_average=use_running_average))


class SmallCNN(nnx.Module):
    """A few-layer CNN backbone for small synthetic images (smoke tests, CPU runs).

    ``x [B, H, W, in_channels] -> [B, feat_dim]``: one stride-2 ``ConvBNReLU`` stage per entry of
    ``widths`` and a last one with ``feat_dim`` channels, then global average pooling. With the
    defaults a 64x64 image is reduced to a 4x4 map before pooling. BatchNorm as in ``ResNet``.

    Args:
      feat_dim: channels of the last stage = pooled feature dimension.
      widths: channels of the earlier stages.
      in_channels: image channels.
      rngs: parameter RNG.
    """

    def __init__(
        self,
        feat_dim: int = 128,
        *,
        widths: Sequence[int] = (32, 64, 128),
        in_channels: int = 3,
        rngs: nnx.Rngs,
    ):
        channels = (in_channels, *widths, feat_dim)
        if any(c < 1 for c in channels):
            raise ValueError(
                f"SmallCNN channel counts must be >= 1; got in_channels={in_channels}, "
                f"widths={tuple(widths)}, feat_dim={feat_dim}."
            )
        self.stages = nnx.List(
            [
                ConvBNReLU(cin, cout, 2, rngs=rngs)
                for cin, cout in zip(channels[:-1], channels[1:], strict=True)
            ]
        )
        self.in_channels = in_channels
        self.feat_dim = feat_dim

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        x = check_nhwc("SmallCNN", x, self.in_channels)
        for stage in self.stages:
            x = stage(x, use_running_average=use_running_average)
        return jnp.mean(x, axis=(1, 2))  # [B, feat_dim]


class ImageEncoder(nnx.Module):
    """VSE++ ``EncoderImageFull``: a CNN backbone, a linear projection, L2 normalisation.

    ``images [B, H, W, C] -> [B, embed_dim]``:
    ``l2norm(W backbone(images) + b)``, with ``W`` Xavier-initialised as in VSE++; or
    ``head(backbone(images))`` with another ``head`` (CMPM, the dual-path network).

    Frozen backbone (VSE++ without ``--finetune``; the first training stage of CMPM, ConVSE and
    the dual-path paper): the backbone output goes through ``jax.lax.stop_gradient``, so every
    backbone parameter gets an exact zero gradient, and its BatchNorm layers always use their
    running statistics, so neither the features nor the statistics depend on the batch or on
    ``train()`` / ``eval()``. (VSE++'s PyTorch code leaves a frozen CNN in train mode, where the
    BatchNorm statistics keep updating.) An optimizer still moves zero-gradient parameters through
    decoupled weight decay or momentum from earlier steps, so while frozen build it with
    ``wrt=nnx.All(nnx.Param, nnx.Not(nnx.PathContains("backbone")))``.
    ``freeze_backbone`` is a plain attribute: set it to ``False`` for the fine-tuning stage
    (``jit`` retraces on the change).

    Train / eval: ``model.train()`` and ``model.eval()`` switch the backbone's BatchNorm layers
    (batch statistics and running-average updates vs running statistics), as for any NNX module.

    Args:
      backbone: a module called as ``backbone(images, *, use_running_average=None)`` returning
        ``[B, feat_dim]`` (``ResNet``, ``MobileNetV1``, ``SmallCNN``). The encoder owns it: do
        not pass one backbone instance to two encoders.
      feat_dim: the backbone's output dimension (checked against ``backbone.feat_dim`` when the
        backbone has that attribute).
      embed_dim: joint embedding dimension.
      freeze_backbone: see above.
      head: the layers after the backbone, a module mapping ``[B, feat_dim]`` to
        ``[B, embed_dim]`` with ``in_dim`` / ``out_dim`` attributes (CMPM's
        ``ProjectionHead1x1``, the dual-path ``DualPathHead``); ``None`` is VSE++'s Xavier
        linear layer. It is trained in the frozen stages too, and follows ``train()`` /
        ``eval()`` like the backbone.
      normalize: L2-normalise the output; ``False`` returns the raw projection (CMPM normalises
        inside its loss).
      normalize_features: L2-normalise the backbone features before the projection, as VSE++'s
        ``EncoderImageFull.forward`` does.
      rngs: parameter RNG of the projection.
    """

    def __init__(
        self,
        backbone: nnx.Module,
        feat_dim: int,
        embed_dim: int,
        *,
        freeze_backbone: bool = False,
        head: nnx.Module | None = None,
        normalize: bool = True,
        normalize_features: bool = False,
        rngs: nnx.Rngs,
    ):
        backbone_dim = getattr(backbone, "feat_dim", feat_dim)
        if backbone_dim != feat_dim:
            raise ValueError(
                f"ImageEncoder feat_dim={feat_dim} but the backbone returns {backbone_dim}-d "
                f"features; pass feat_dim=backbone.feat_dim."
            )
        if head is not None and (head.in_dim, head.out_dim) != (feat_dim, embed_dim):
            raise ValueError(
                f"ImageEncoder head maps {head.in_dim} -> {head.out_dim} features; it must map "
                f"feat_dim={feat_dim} -> embed_dim={embed_dim}."
            )
        self.backbone = backbone
        self.fc = xavier_linear(feat_dim, embed_dim, rngs=rngs) if head is None else head
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        self.freeze_backbone = freeze_backbone
        self.normalize = normalize
        self.normalize_features = normalize_features

    def __call__(self, images: jax.Array) -> jax.Array:
        if self.freeze_backbone:
            feats = jax.lax.stop_gradient(self.backbone(images, use_running_average=True))
        else:
            feats = self.backbone(images)
        if feats.ndim != 2 or feats.shape[1] != self.feat_dim:
            raise ValueError(
                f"ImageEncoder expected backbone features [B, {self.feat_dim}]; got "
                f"{feats.shape}. The backbone must return globally pooled features."
            )
        if self.normalize_features:
            feats = l2_normalize(feats)
        emb = self.fc(feats)  # [B, embed_dim]: the linear layer or the head
        return l2_normalize(emb) if self.normalize else emb
