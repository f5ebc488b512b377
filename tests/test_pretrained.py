"""`itm_jax.models.pretrained` and `itm_jax.models.convert_weights`.

Contract: the converter writes source-named arrays to .npz (torch / h5py only for reading
the originals); `load_torchvision_resnet` / `load_keras_mobilenet` map torchvision
(`layer1.0.conv1.weight` OIHW, `bn1.running_mean`) and Keras (`conv_dw_1/depthwise_kernel:0`
[3, 3, C, 1], `conv1_bn/moving_variance:0`) names onto the NNX modules, ignore the classifier,
and reject missing / unexpected / mis-shaped keys with the offending names.

The "checkpoints" are random arrays written in the source frameworks' naming by generators
below that follow torchvision's and Keras' architecture code, not ours. Forward passes are
compared with float64 NumPy references that read those arrays in the source layout (NCHW /
OIHW for torchvision, Keras' depthwise layout), so a transposition or naming bug fails.
Models are built as `nnx.eval_shape` skeletons and filled by the loaders: no random-init
compiles, and it checks that loading into a skeleton works.
"""

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from itm_jax.models import (
    ImageEncoder,
    MobileNetV1,
    ResNet,
    SmallCNN,
    load_keras_mobilenet,
    load_torchvision_resnet,
    pretrained,
    resnet50,
)
from itm_jax.models import convert_weights as cw

RESNET_DEPTHS = (1, 2, 1, 1)  # layer2.1 has an identity shortcut, the first blocks projections
RESNET_WIDTH = 4
ALPHA = 0.25
# Keras' mobilenet.py: (pointwise filters, stride) of conv_dw_1 ... conv_dw_13.
KERAS_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5
KERAS_BLOCKS += [(1024, 2), (1024, 1)]


# ------------------------------------------------------------------ source-named checkpoints


def _bn_stats(rng, c):
    return (
        rng.uniform(0.5, 1.5, c),  # gamma
        rng.normal(0.0, 0.1, c),  # beta
        rng.normal(0.0, 0.1, c),  # mean
        rng.uniform(0.5, 1.5, c),  # var
    )


def torchvision_state_dict(depths, width, seed=0):
    """A torchvision Bottleneck-ResNet `state_dict` (as NumPy) with random values."""
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = rng.normal(0, math.sqrt(2 / (cin * k * k)), (cout, cin, k, k))

    def bn(name, c):
        g, b, m, v = _bn_stats(rng, c)
        sd.update({f"{name}.weight": g, f"{name}.bias": b})
        sd.update({f"{name}.running_mean": m, f"{name}.running_var": v})
        sd[f"{name}.num_batches_tracked"] = np.array(1000, np.int64)

    conv("conv1", width, 3, 7)
    bn("bn1", width)
    inplanes = width
    for i, depth in enumerate(depths):
        planes = width * 2**i
        for j in range(depth):
            p = f"layer{i + 1}.{j}"
            conv(f"{p}.conv1", planes, inplanes, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            if j == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    sd["fc.weight"] = rng.normal(size=(10, inplanes))
    sd["fc.bias"] = rng.normal(size=(10,))
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in sd.items()}


def keras_mobilenet_weights(alpha, seed=0, top=True):
    """Keras `MobileNet(alpha)` weights keyed `layer/weight:0`, random values."""
    rng = np.random.default_rng(seed)
    w = {}

    def bn(layer, c):
        g, b, m, v = _bn_stats(rng, c)
        names = ("gamma", "beta", "moving_mean", "moving_variance")
        w.update({f"{layer}/{n}:0": a for n, a in zip(names, (g, b, m, v), strict=True)})

    c = int(32 * alpha)
    w["conv1/kernel:0"] = rng.normal(0, math.sqrt(2 / 27), (3, 3, 3, c))
    bn("conv1_bn", c)
    for n, (filters, _) in enumerate(KERAS_BLOCKS, 1):
        w[f"conv_dw_{n}/depthwise_kernel:0"] = rng.normal(0, math.sqrt(2 / 9), (3, 3, c, 1))
        bn(f"conv_dw_{n}_bn", c)
        out = int(filters * alpha)
        w[f"conv_pw_{n}/kernel:0"] = rng.normal(0, math.sqrt(2 / c), (1, 1, c, out))
        bn(f"conv_pw_{n}_bn", out)
        c = out
    if top:
        w["conv_preds/kernel:0"] = rng.normal(size=(1, 1, c, 10))
        w["conv_preds/bias:0"] = rng.normal(size=(10,))
    return {k: v.astype(np.float32) for k, v in w.items()}


# ------------------------------------------------------------------ float64 NumPy references


def _windows(x, k, stride, pads, axes):
    """Sliding k x k windows over `axes` of `x`, zero padded by `pads` [(lo, hi), (lo, hi)]."""
    width = [(0, 0)] * x.ndim
    for axis, pad in zip(axes, pads, strict=True):
        width[axis] = pad
    xp = np.pad(x, width, constant_values=0.0)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=axes)
    index = [slice(None)] * win.ndim
    for axis in axes:
        index[axis] = slice(None, None, stride)
    return win[tuple(index)]


def torch_conv(x, w, stride, pad):  # x [N, C, H, W], w [O, I, kh, kw]
    win = _windows(x, w.shape[2], stride, [(pad, pad)] * 2, (2, 3))  # [N, C, Ho, Wo, kh, kw]
    return np.einsum("nchwij,ocij->nohw", win, w)


def torch_bn(x, sd, name, eps=1e-5):
    shape = (1, -1, 1, 1)
    g, b = sd[f"{name}.weight"].reshape(shape), sd[f"{name}.bias"].reshape(shape)
    m, v = sd[f"{name}.running_mean"].reshape(shape), sd[f"{name}.running_var"].reshape(shape)
    return (x - m) / np.sqrt(v + eps) * g + b


def torch_maxpool(x):  # nn.MaxPool2d(3, 2, padding=1): padding never wins the max
    xp = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)], constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    return win.max(axis=(-2, -1))


def torchvision_resnet_reference(sd, depths, x_nchw, *, stages=4):
    """torchvision ResNet.forward up to avgpool, from the state_dict; `stages` limits depth."""

    def relu(a):
        return np.maximum(a, 0.0)

    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = torch_maxpool(relu(torch_bn(torch_conv(x_nchw, sd["conv1.weight"], 2, 3), sd, "bn1")))
    for i, depth in enumerate(depths[:stages]):
        for j in range(depth):
            p = f"layer{i + 1}.{j}"
            stride = 2 if i > 0 and j == 0 else 1
            y = relu(torch_bn(torch_conv(x, sd[f"{p}.conv1.weight"], 1, 0), sd, f"{p}.bn1"))
            y = relu(torch_bn(torch_conv(y, sd[f"{p}.conv2.weight"], stride, 1), sd, f"{p}.bn2"))
            y = torch_bn(torch_conv(y, sd[f"{p}.conv3.weight"], 1, 0), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                x = torch_conv(x, sd[f"{p}.downsample.0.weight"], stride, 0)
                x = torch_bn(x, sd, f"{p}.downsample.1")
            x = relu(x + y)
    return x


def keras_mobilenet_reference(w, x_nhwc):
    """Keras MobileNet up to GlobalAveragePooling2D (NHWC), from `layer/weight:0` arrays."""
    w = {k: v.astype(np.float64) for k, v in w.items()}

    def relu6(a):
        return np.clip(a, 0.0, 6.0)

    def bn(x, layer):
        g, b = w[f"{layer}/gamma:0"], w[f"{layer}/beta:0"]
        m, v = w[f"{layer}/moving_mean:0"], w[f"{layer}/moving_variance:0"]
        return (x - m) / np.sqrt(v + 1e-3) * g + b

    def pads(stride):  # "same" at stride 1; ZeroPadding2D(((0, 1), (0, 1))) + "valid" at 2
        return [(1, 1)] * 2 if stride == 1 else [(0, 1)] * 2

    win = _windows(x_nhwc, 3, 2, pads(2), (1, 2))  # [N, Ho, Wo, C, 3, 3]
    x = relu6(bn(np.einsum("nhwcij,ijco->nhwo", win, w["conv1/kernel:0"]), "conv1_bn"))
    for n, (_, stride) in enumerate(KERAS_BLOCKS, 1):
        win = _windows(x, 3, stride, pads(stride), (1, 2))
        dw = w[f"conv_dw_{n}/depthwise_kernel:0"][:, :, :, 0]  # [3, 3, C]
        x = relu6(bn(np.einsum("nhwcij,ijc->nhwc", win, dw), f"conv_dw_{n}_bn"))
        pw = w[f"conv_pw_{n}/kernel:0"][0, 0]  # [C, O]
        x = relu6(bn(x @ pw, f"conv_pw_{n}_bn"))
    return x.mean(axis=(1, 2))


# ------------------------------------------------------------------ fixtures


def _skeleton(build):
    return nnx.eval_shape(lambda: build(nnx.Rngs(0)))


def _tiny_resnet(rngs):
    return ResNet(RESNET_DEPTHS, width=RESNET_WIDTH, rngs=rngs)


def _small_mobilenet(rngs):
    return MobileNetV1(ALPHA, rngs=rngs)


@pytest.fixture(scope="module")
def torch_sd():
    return torchvision_state_dict(RESNET_DEPTHS, RESNET_WIDTH)


@pytest.fixture(scope="module")
def keras_w():
    return keras_mobilenet_weights(ALPHA)


@pytest.fixture(scope="module")
def resnet_npz(torch_sd, tmp_path_factory):
    return cw.write_npz(torch_sd, tmp_path_factory.mktemp("tv") / "resnet.npz")


@pytest.fixture(scope="module")
def mobilenet_npz(keras_w, tmp_path_factory):
    return cw.write_npz(keras_w, tmp_path_factory.mktemp("keras") / "mobilenet.npz")


@pytest.fixture(scope="module")
def loaded_resnet(resnet_npz):
    model = _skeleton(_tiny_resnet)
    assert load_torchvision_resnet(model, resnet_npz) is model  # in place
    model.eval()
    return model


@pytest.fixture(scope="module")
def loaded_mobilenet(mobilenet_npz):
    model = _skeleton(_small_mobilenet)
    assert load_keras_mobilenet(model, mobilenet_npz) is model
    model.eval()
    return model


def _module_at(model, dotted):
    node = model
    for part in dotted.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


# ------------------------------------------------------------------ torchvision ResNet


def test_resnet_every_parameter_equals_the_written_array(loaded_resnet, torch_sd):
    leaf = {"running_mean": "mean", "running_var": "var", "bias": "bias"}
    checked = 0
    for key, array in torch_sd.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        module_path, name = key.rsplit(".", 1)
        module = _module_at(loaded_resnet, module_path)
        if name == "weight":
            is_conv = isinstance(module, nnx.Conv)
            got = module.kernel[...] if is_conv else module.scale[...]
            want = array.transpose(2, 3, 1, 0) if is_conv else array  # OIHW -> HWIO
        else:
            got, want = getattr(module, leaf[name])[...], array
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=key)
        checked += 1
    # stem + 5 blocks x 3 + 4 projection shortcuts = 20 convs, each followed by a BatchNorm
    n_arrays = len(jax.tree.leaves(nnx.state(loaded_resnet, (nnx.Param, nnx.BatchStat))))
    assert checked == n_arrays == 20 + 20 * 4


def test_resnet_stem_and_first_block_match_torch_layout_reference(loaded_resnet, torch_sd):
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3))
    m = loaded_resnet

    @nnx.jit
    def stem_block(m, x):
        y = jax.nn.relu(m.bn1(m.conv1(x)))
        y = nnx.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return m.layer1[0](y)

    got = stem_block(m, jnp.asarray(x, jnp.float32))  # [2, 8, 8, 16] NHWC
    want = torchvision_resnet_reference(
        torch_sd, (1,), x.transpose(0, 3, 1, 2), stages=1
    ).transpose(0, 2, 3, 1)
    assert got.shape == want.shape == (2, 8, 8, 4 * RESNET_WIDTH)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_resnet_pooled_features_match_torch_layout_reference(loaded_resnet, torch_sd):
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3))
    got = nnx.jit(lambda m, x: m(x))(loaded_resnet, jnp.asarray(x, jnp.float32))
    want = torchvision_resnet_reference(torch_sd, RESNET_DEPTHS, x.transpose(0, 3, 1, 2))
    want = want.mean(axis=(2, 3))
    assert got.shape == (2, 32 * RESNET_WIDTH)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_resnet50_names_are_torchvisions():
    table = pretrained.torchvision_resnet_names(_skeleton(lambda r: resnet50(rngs=r)))
    # torchvision resnet50 state_dict: 53 convs, 53 BNs x (weight, bias, running_mean,
    # running_var, num_batches_tracked), fc.weight, fc.bias = 320 keys; all but fc and the
    # 53 counters are loaded.
    assert len(table) == 320 - 2 - 53
    shapes = {k: shape for k, (_, _, shape) in table.items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["layer3.5.bn3.running_mean"] == (1024,)
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert "layer1.1.downsample.0.weight" not in shapes and "fc.weight" not in shapes


# ------------------------------------------------------------------ Keras MobileNet


def test_mobilenet_every_parameter_equals_the_written_array(loaded_mobilenet, keras_w):
    m = loaded_mobilenet
    leaf = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}
    checked = 0
    for key, array in keras_w.items():
        layer, name = key[: -len(":0")].split("/")
        if layer == "conv_preds":
            continue
        if layer in ("conv1", "conv1_bn"):
            module = getattr(m, layer)
        else:
            _, kind, n, *bn = layer.split("_")  # conv_dw_3_bn -> dw, 3, [bn]
            module = getattr(m.blocks[int(n) - 1], kind + ("_bn" if bn else ""))
        if name == "depthwise_kernel":
            got, want = module.kernel[...], array.transpose(0, 1, 3, 2)
        elif name == "kernel":
            got, want = module.kernel[...], array
        else:
            got, want = getattr(module, leaf[name])[...], array
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=key)
        checked += 1
    assert checked == len(jax.tree.leaves(nnx.state(m, (nnx.Param, nnx.BatchStat)))) == 135


def test_mobilenet_forward_matches_keras_layout_reference(loaded_mobilenet, keras_w):
    x = np.random.default_rng(3).uniform(-1, 1, size=(2, 32, 32, 3))
    got = nnx.jit(lambda m, x: m(x))(loaded_mobilenet, jnp.asarray(x, jnp.float32))
    want = keras_mobilenet_reference(keras_w, x)
    assert got.shape == want.shape == (2, int(1024 * ALPHA))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_mobilenet_alpha1_names_are_keras():
    table = pretrained.keras_mobilenet_names(_skeleton(lambda r: MobileNetV1(1.0, rngs=r)))
    # conv1 + 13 depthwise + 13 pointwise kernels, 27 BNs x 4 = 135 arrays.
    assert len(table) == 135
    shapes = {k: shape for k, (_, _, shape) in table.items()}
    assert shapes["conv1/kernel:0"] == (3, 3, 3, 32)
    assert shapes["conv_dw_1/depthwise_kernel:0"] == (3, 3, 32, 1)
    assert shapes["conv_pw_12/kernel:0"] == (1, 1, 512, 1024)
    assert shapes["conv_dw_13_bn/moving_variance:0"] == (1024,)


def test_mobilenet_loads_without_top(keras_w, tmp_path):
    no_top = {k: v for k, v in keras_w.items() if not k.startswith("conv_preds")}
    model = load_keras_mobilenet(
        _skeleton(_small_mobilenet), cw.write_npz(no_top, tmp_path / "m.npz")
    )
    np.testing.assert_array_equal(np.asarray(model.conv1.kernel[...]), keras_w["conv1/kernel:0"])


# ------------------------------------------------------------------ validation


def _write(tmp_path, arrays):
    return cw.write_npz(arrays, tmp_path / "w.npz")


def test_missing_key_is_named_and_model_left_unchanged(torch_sd, tmp_path, loaded_resnet):
    bad = {k: v for k, v in torch_sd.items() if k != "layer2.0.bn2.running_var"}
    bad["conv1.weight"] = np.zeros_like(bad["conv1.weight"])  # valid, must not be written
    before = np.asarray(loaded_resnet.conv1.kernel[...]).copy()
    with pytest.raises(ValueError, match=r"missing keys: layer2\.0\.bn2\.running_var"):
        load_torchvision_resnet(loaded_resnet, _write(tmp_path, bad))
    np.testing.assert_array_equal(np.asarray(loaded_resnet.conv1.kernel[...]), before)


def test_misshaped_key_is_named_with_both_shapes(torch_sd, tmp_path):
    bad = dict(torch_sd)
    bad["layer1.0.conv2.weight"] = bad["layer1.0.conv2.weight"].transpose(2, 3, 1, 0)
    with pytest.raises(
        ValueError, match=r"layer1\.0\.conv2\.weight \(3, 3, 4, 4\) \(expected \(4, 4, 3, 3\)\)"
    ):
        load_torchvision_resnet(_skeleton(_tiny_resnet), _write(tmp_path, bad))


def test_unexpected_key_is_named(torch_sd, keras_w, tmp_path):
    bad = {**keras_w, "conv_dw_14/depthwise_kernel:0": keras_w["conv_dw_13/depthwise_kernel:0"]}
    with pytest.raises(ValueError, match=r"unexpected keys: conv_dw_14/depthwise_kernel:0"):
        load_keras_mobilenet(_skeleton(_small_mobilenet), _write(tmp_path, bad))
    bad = {**torch_sd, "layer5.0.conv1.weight": torch_sd["layer4.0.conv1.weight"]}
    with pytest.raises(ValueError, match=r"(?m)unexpected keys: layer5\.0\.conv1\.weight$"):
        load_torchvision_resnet(_skeleton(_tiny_resnet), _write(tmp_path, bad))


def test_wrong_architecture_and_wrong_source_are_explained(torch_sd, keras_w, tmp_path):
    with pytest.raises(ValueError, match="(?s)wrong shapes.*alpha"):
        load_keras_mobilenet(
            _skeleton(lambda r: MobileNetV1(0.5, rngs=r)), _write(tmp_path, keras_w)
        )
    with pytest.raises(ValueError, match="different source"):
        load_torchvision_resnet(_skeleton(_tiny_resnet), _write(tmp_path, keras_w))


def test_missing_file_names_the_converter(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="itm_jax.models.convert_weights torchvision-resnet"
    ):
        load_torchvision_resnet(_skeleton(_tiny_resnet), tmp_path / "absent.npz")
    with pytest.raises(FileNotFoundError, match="convert_weights keras-mobilenet"):
        load_keras_mobilenet(_skeleton(_small_mobilenet), tmp_path / "absent.npz")


def test_wrong_model_type_points_to_backbone(resnet_npz):
    encoder = nnx.eval_shape(
        lambda: ImageEncoder(SmallCNN(8, widths=(4,), rngs=nnx.Rngs(0)), 8, 4, rngs=nnx.Rngs(1))
    )
    with pytest.raises(TypeError, match="encoder.backbone"):
        load_torchvision_resnet(encoder, resnet_npz)
    with pytest.raises(TypeError, match="expects a MobileNetV1"):
        load_keras_mobilenet(_skeleton(_tiny_resnet), resnet_npz)


# ------------------------------------------------------------------ converter


def test_write_npz_round_trips_any_names_and_dtypes(tmp_path):
    arrays = {
        "layer1.0.conv1.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
        "bn1.num_batches_tracked": np.array(7, np.int64),
        "conv_dw_1/depthwise_kernel:0": np.ones((3, 3, 2, 1), np.float16),
        "file": np.zeros(2),  # would collide with np.savez's own `file` argument
    }
    path = cw.write_npz(arrays, tmp_path / "out.npz")
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(arrays)
        for k, v in arrays.items():
            assert npz[k].dtype == v.dtype and npz[k].shape == v.shape
            np.testing.assert_array_equal(npz[k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]  # no temporary left


def test_write_npz_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="end in .npz"):
        cw.write_npz({"a": np.ones(1)}, tmp_path / "out.npy")
    with pytest.raises(ValueError, match="dtype object"):
        cw.write_npz({"a": np.array([None])}, tmp_path / "out.npz")
    with pytest.raises(ValueError, match="No arrays"):
        cw.write_npz({}, tmp_path / "out.npz")
    assert not list(tmp_path.iterdir())


class FakeH5Group(dict):
    """The part of h5py's Group API that Keras files use: `attrs`, `in`, `[a/b]` lookups."""

    def __init__(self, attrs=None, **children):
        super().__init__(children)
        self.attrs = attrs or {}

    def __getitem__(self, name):
        node = self
        for part in name.split("/"):
            node = dict.__getitem__(node, part)
        return node


def _fake_keras_file(weights, *, whole_model, prefixed):
    """`weights` laid out as Keras' save_weights (or model.save with `whole_model`) writes them."""
    layers = {}
    for key, array in weights.items():
        layer, weight = key.split("/")
        layers.setdefault(layer, {})[weight] = array
    groups = {}
    for layer, ws in layers.items():
        # tf.keras names variables "layer/weight:0"; Keras 3 "weight" alone.
        names = [f"{layer}/{w}" if prefixed else w.removesuffix(":0") for w in ws]
        datasets = {n.split("/")[-1]: a for n, a in zip(names, ws.values(), strict=True)}
        tree = (
            FakeH5Group(**{layer: FakeH5Group(**datasets)}) if prefixed else FakeH5Group(**datasets)
        )
        # a long attribute is split into weight_names0, weight_names1, ...
        half = len(names) // 2
        attrs = {
            "weight_names0": [n.encode() for n in names[:half]],
            "weight_names1": [n.encode() for n in names[half:]],
        }
        tree.attrs = attrs
        groups[layer] = tree
    groups["reshape_1"] = FakeH5Group({"weight_names": []})  # a layer without weights
    root = FakeH5Group({"layer_names": [n.encode() for n in groups]}, **groups)
    return FakeH5Group({}, model_weights=root) if whole_model else root


@pytest.mark.parametrize("whole_model,prefixed", [(False, True), (True, False)])
def test_keras_h5_layout_to_npz_to_model(keras_w, tmp_path, whole_model, prefixed):
    arrays = cw.keras_h5_arrays(
        _fake_keras_file(keras_w, whole_model=whole_model, prefixed=prefixed)
    )
    assert sorted(arrays) == sorted(keras_w)
    model = load_keras_mobilenet(
        _skeleton(_small_mobilenet), cw.write_npz(arrays, tmp_path / "m.npz")
    )
    np.testing.assert_array_equal(
        np.asarray(model.blocks[12].dw.kernel[...]),
        keras_w["conv_dw_13/depthwise_kernel:0"].transpose(0, 1, 3, 2),
    )


def test_keras_h5_without_layer_names_is_rejected():
    with pytest.raises(ValueError, match="Not a Keras HDF5 weights file"):
        cw.keras_h5_arrays(FakeH5Group({}))


@pytest.mark.parametrize(
    "source,module,hint",
    [
        ("torchvision-resnet", "torch", "pip install torch"),
        ("keras-mobilenet", "h5py", "pip install h5py"),
    ],
)
def test_cli_without_the_reader_library_explains(
    tmp_path, monkeypatch, capsys, source, module, hint
):
    checkpoint = tmp_path / "ckpt"
    checkpoint.write_bytes(b"\0")
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    assert cw.main([source, str(checkpoint), str(tmp_path / "out.npz")]) == 1
    assert hint in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()


def test_cli_rejects_missing_checkpoint_and_unknown_source(tmp_path, capsys):
    assert (
        cw.main(["torchvision-resnet", str(tmp_path / "absent.pth"), str(tmp_path / "o.npz")]) == 1
    )
    assert "No checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cw.main(["caffe", "a", "b.npz"])
    with pytest.raises(ValueError, match="Unknown source 'caffe'"):
        cw.convert("caffe", "a", "b.npz")
