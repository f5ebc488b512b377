"""ResNet image backbones in the torchvision layout (Flax NNX, NHWC).

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Table 1, as implemented
by ``torchvision.models.resnet``: Bottleneck blocks with the stride on the 3x3 convolution
("ResNet v1.5"), a 1x1 convolution + BatchNorm projection shortcut where the shape changes,
explicit symmetric padding (a 3x3 stride-2 convolution pads ``(1, 1)``, unlike ``"SAME"``'s
``(0, 1)`` on even inputs, which would shift every feature map against pretrained weights).

The image-text papers use these as image encoders: ResNet-152 for VSE++ / ConVSE / CMPM (the
2048-d pooled feature of the penultimate layer), ResNet-50 for the dual-path instance-loss
paper. The 1000-class ``fc`` layer is not built: the backbones return pooled features.

Attribute names mirror torchvision's module names (``conv1``, ``bn1``, ``layer1[0].conv2``,
``layer1[0].downsample[1]``...) so that ``itm_jax.models.pretrained.load_torchvision_resnet``
maps a torchvision ``state_dict`` onto the parameters path by path.

BatchNorm matches ``torch.nn.BatchNorm2d`` (eps 1e-5, momentum 0.1 in PyTorch's convention,
i.e. a running average ``0.9 * old + 0.1 * batch``). One difference: PyTorch updates the
running variance with the unbiased batch variance (``n / (n - 1)`` times the one used for
normalising), Flax with the biased one; this only matters for tiny batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

EXPANSION = 4  # Bottleneck output channels = 4 x inner width (He et al., Table 1).

# torchvision's `nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu")` on every conv:
# an untruncated normal with variance 2 / (k_h * k_w * C_out).
kaiming_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_batch_norm(num_features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """``nn.BatchNorm2d(num_features)``: eps 1e-5, PyTorch momentum 0.1 (Flax momentum 0.9)."""
    return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, rngs=rngs)


def torch_conv(cin: int, cout: int, kernel: int, stride: int, *, rngs: nnx.Rngs) -> nnx.Conv:
    """``nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)``."""
    pad = kernel // 2
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=kaiming_fan_out,
        rngs=rngs,
    )


def check_nhwc(name: str, x: jax.Array, in_channels: int) -> jax.Array:
    """``x`` as an array, or a ``ValueError`` if it is not ``[B, H, W, in_channels]``."""
    x = jnp.asarray(x)
    if x.ndim != 4 or x.shape[-1] != in_channels:
        raise ValueError(
            f"{name} expects NHWC images [B, H, W, {in_channels}]; got shape {x.shape}. "
            "PyTorch-style NCHW batches need x.transpose(0, 2, 3, 1)."
        )
    return x


class Bottleneck(nnx.Module):
    """torchvision ``Bottleneck``: 1x1 -> 3x3 (strided) -> 1x1 convolutions plus a shortcut.

    ``[B, H, W, in_channels] -> [B, H / stride, W / stride, 4 * width]``. The shortcut is a
    strided 1x1 convolution + BatchNorm (``downsample``, an ``nnx.List`` so its parameters sit at
    ``downsample/0`` and ``downsample/1`` like torchvision's ``nn.Sequential``) when the stride
    or the channel count changes, the identity otherwise.
    """

    def __init__(self, in_channels: int, width: int, stride: int = 1, *, rngs: nnx.Rngs):
        out_channels = width * EXPANSION
        self.conv1 = torch_conv(in_channels, width, 1, 1, rngs=rngs)
        self.bn1 = torch_batch_norm(width, rngs=rngs)
        self.conv2 = torch_conv(width, width, 3, stride, rngs=rngs)
        self.bn2 = torch_batch_norm(width, rngs=rngs)
        self.conv3 = torch_conv(width, out_channels, 1, 1, rngs=rngs)
        self.bn3 = torch_batch_norm(out_channels, rngs=rngs)
        if stride != 1 or in_channels != out_channels:
            self.downsample = nnx.List(
                [
                    torch_conv(in_channels, out_channels, 1, stride, rngs=rngs),
                    torch_batch_norm(out_channels, rngs=rngs),
                ]
            )
        else:
            self.downsample = None

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        bn = dict(use_running_average=use_running_average)
        y = jax.nn.relu(self.bn1(self.conv1(x), **bn))
        y = jax.nn.relu(self.bn2(self.conv2(y), **bn))
        y = self.bn3(self.conv3(y), **bn)
        if self.downsample is not None:
            conv, norm = self.downsample
            x = norm(conv(x), **bn)
        return jax.nn.relu(y + x)


class ResNet(nnx.Module):
    """Bottleneck ResNet returning globally average-pooled features.

    ``__call__(x [B, H, W, in_channels]) -> [B, feat_dim]`` with ``feat_dim = 32 * width``,
    for any image size (the features are globally pooled; the last feature map is 1/32 of the
    input side). Pretrained weights expect 224x224 RGB scaled to [0, 1] and normalised with
    the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

    Args:
      depths: Bottleneck blocks per stage; ``(3, 4, 6, 3)`` is ResNet-50, ``(3, 8, 36, 3)``
        ResNet-152.
      width: stem channels and inner width of the first stage; stage ``i`` has inner width
        ``width * 2**i`` and ``4 * width * 2**i`` output channels. 64 is torchvision (2048-d
        features); smaller values give tiny test models with the same structure.
      in_channels: image channels.
      rngs: parameter RNG.

    BatchNorm follows NNX's mode: ``model.train()`` (the default after construction) uses batch
    statistics and updates the running averages, ``model.eval()`` uses the running averages.
    ``use_running_average=True`` in the call overrides the mode for every BatchNorm.
    """

    def __init__(
        self,
        depths: Sequence[int],
        *,
        width: int = 64,
        in_channels: int = 3,
        rngs: nnx.Rngs,
    ):
        depths = tuple(depths)
        if len(depths) != 4 or any(int(d) != d or d < 1 for d in depths):
            raise ValueError(
                f"ResNet depths must be 4 positive block counts, e.g. (3, 4, 6, 3); got {depths}."
            )
        depths = tuple(int(d) for d in depths)
        if width < 1 or in_channels < 1:
            raise ValueError(
                f"ResNet width and in_channels must be >= 1; got {width} and {in_channels}."
            )
        self.depths = depths
        self.width = width
        self.in_channels = in_channels
        self.feat_dim = 8 * width * EXPANSION

        self.conv1 = torch_conv(in_channels, width, 7, 2, rngs=rngs)
        self.bn1 = torch_batch_norm(width, rngs=rngs)
        channels = width
        stages = []
        for i, depth in enumerate(depths):
            inner = width * 2**i
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(Bottleneck(channels, inner, stride, rngs=rngs))
                channels = inner * EXPANSION
            stages.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def __call__(self, x: jax.Array, *, use_running_average: bool | None = None) -> jax.Array:
        x = check_nhwc("ResNet", x, self.in_channels)
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=use_running_average))
        # nn.MaxPool2d(3, 2, padding=1) pads with -inf, as reduce_window's max does.
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x, use_running_average=use_running_average)
        return jnp.mean(x, axis=(1, 2))  # [B, feat_dim], nn.AdaptiveAvgPool2d(1) + flatten


def resnet50(*, width: int = 64, in_channels: int = 3, rngs: nnx.Rngs) -> ResNet:
    """ResNet-50 (depths 3, 4, 6, 3): 2048-d features, 23,508,032 parameters without ``fc``."""
    return ResNet((3, 4, 6, 3), width=width, in_channels=in_channels, rngs=rngs)


def resnet152(*, width: int = 64, in_channels: int = 3, rngs: nnx.Rngs) -> ResNet:
    """ResNet-152 (depths 3, 8, 36, 3): 2048-d features, 58,143,808 parameters without ``fc``."""
    return ResNet((3, 8, 36, 3), width=width, in_channels=in_channels, rngs=rngs)
