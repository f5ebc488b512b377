"""MobileNet v1 image backbone in the Keras Applications layout (Flax NNX, NHWC).

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", arXiv:1704.04861, Table 1: a strided 3x3 convolution then 13 depthwise
separable blocks (3x3 depthwise conv + BN + ReLU, 1x1 pointwise conv + BN + ReLU), global
average pooling. The CMPM paper (Zhang & Lu, ECCV 2018, Sec. 4) takes its image feature from
this last pooling layer.

The layout follows ``keras.applications.mobilenet`` so Keras' ImageNet weights load exactly:
ReLU6 activations, BatchNorm eps 1e-3 and momentum 0.99, no convolution biases, and stride-2
convolutions preceded by a ``((0, 1), (0, 1))`` zero padding (``conv1_pad``, ``conv_pad_N``)
with ``"valid"`` convolution. Channel counts are ``int(c * alpha)`` for the width multiplier
``alpha`` (paper Sec. 3.3). Keras' ``depth_multiplier`` (depthwise channel multiplier) is fixed
at 1, the only value with published weights; the paper's resolution multiplier is the input size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from itm_jax.models.resnet import check_nhwc

# (pointwise filters, depthwise stride) of blocks conv_dw_1 ... conv_dw_13 (paper Table 1).
BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
STEM_FILTERS = 32

# Keras' default initialiser for Conv2D and DepthwiseConv2D. Glorot's fan_in + fan_out is the
# same for Keras' depthwise kernel [3, 3, C, 1] and ours [3, 3, 1, C].
glorot_uniform = nnx.initializers.glorot_uniform()


def _padding(stride: int):
    # Keras: stride 1 is "same"; stride 2 pads one row/column at the bottom/right only.
    return ((1, 1), (1, 1)) if stride == 1 else ((0, 1), (0, 1))


def keras_batch_norm(num_features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """``keras.layers.BatchNormalization()`` defaults: momentum 0.99, epsilon 1e-3."""
    return nnx.BatchNorm(num_features, momentum=0.99, epsilon=1e-3, rngs=rngs)


class DepthwiseSeparable(nnx.Module):
    """Keras ``_depthwise_conv_block``: ``[B, H, W, in_channels] -> [B, H/s, W/s, out_channels]``.

    ``dw`` is a 3x3 depthwise convolution (``feature_group_count = in_channels``, kernel
    ``[3, 3, 1, in_channels]``), ``pw`` a 1x1 convolution; each is followed by BatchNorm and ReLU6.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, rngs: nnx.Rngs):
        self.dw = nnx.Conv(
            in_channels,
            in_channels,
            (3, 3),
            strides=stride,
            padding=_padding(stride),
            feature_group_count=in_channels,
            use_bias=False,
            kernel_init=glorot_uniform,
            rngs=rngs,
        )
        self.dw_bn = keras_batch_norm(in_channels, rngs=rngs)
        self.pw = nnx.Conv(
            in_channels,
            out_channels,
            (1, 1),
            padding="VALID",
            use_bias=False,
            kernel_init=glorot_uniform,
            rngs=rngs,
        )
        self.pw_bn = keras_batch_norm(out_channels, rngs=rngs)

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        x = jax.nn.relu6(self.dw_bn(self.dw(x), use_running_average=use_running_average))
        return jax.nn.relu6(self.pw_bn(self.pw(x), use_running_average=use_running_average))


class MobileNetV1(nnx.Module):
    """MobileNet v1 returning globally average-pooled features.

    ``__call__(x [B, H, W, in_channels]) -> [B, feat_dim]`` with ``feat_dim = int(1024 * alpha)``
    (1024 at ``alpha=1``). Input sides must be at least 32 (five stride-2 stages). Keras'
    pretrained weights expect RGB scaled to [-1, 1] (``x / 127.5 - 1``), 224x224 or smaller.

    Args:
      alpha: width multiplier; Keras publishes weights for 0.25, 0.5, 0.75 and 1.0.
      in_channels: image channels.
      rngs: parameter RNG.

    Attributes ``conv1``, ``conv1_bn`` and ``blocks[i].{dw, dw_bn, pw, pw_bn}`` correspond to the
    Keras layers ``conv1``, ``conv1_bn`` and ``conv_dw_{i+1}``, ``conv_dw_{i+1}_bn``,
    ``conv_pw_{i+1}``, ``conv_pw_{i+1}_bn``. BatchNorm follows ``model.train()`` /
    ``model.eval()``; ``use_running_average=True`` in the call forces inference statistics.
    With ``alpha=1`` there are 3,206,976 parameters and 21,888 BatchNorm statistics, Keras'
    trainable and non-trainable counts of ``MobileNet(include_top=False)``.
    """

    def __init__(self, alpha: float = 1.0, *, in_channels: int = 3, rngs: nnx.Rngs):
        if not alpha > 0 or int(STEM_FILTERS * alpha) < 1:
            raise ValueError(
                f"MobileNetV1 alpha must be positive and at least 1/{STEM_FILTERS} so every "
                f"layer keeps a channel; got {alpha}."
            )
        if in_channels < 1:
            raise ValueError(f"MobileNetV1 in_channels must be >= 1; got {in_channels}.")
        self.alpha = alpha
        self.in_channels = in_channels
        channels = int(STEM_FILTERS * alpha)
        self.conv1 = nnx.Conv(
            in_channels,
            channels,
            (3, 3),
            strides=2,
            padding=_padding(2),
            use_bias=False,
            kernel_init=glorot_uniform,
            rngs=rngs,
        )
        self.conv1_bn = keras_batch_norm(channels, rngs=rngs)
        blocks = []
        for filters, stride in BLOCKS:
            out = int(filters * alpha)
            blocks.append(DepthwiseSeparable(channels, out, stride, rngs=rngs))
            channels = out
        self.blocks = nnx.List(blocks)
        self.feat_dim = channels

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        x = check_nhwc("MobileNetV1", x, self.in_channels)
        if min(x.shape[1:3]) < 32:
            raise ValueError(
                f"MobileNetV1 needs images of at least 32x32 (five stride-2 stages); got "
                f"{x.shape[1]}x{x.shape[2]}."
            )
        x = self.conv1_bn(self.conv1(x), use_running_average=use_running_average)
        x = jax.nn.relu6(x)
        for block in self.blocks:
            x = block(x, use_running_average=use_running_average)
        return jnp.mean(x, axis=(1, 2))  # [B, feat_dim], Keras GlobalAveragePooling2D
