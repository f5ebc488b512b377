"""`itm_jax.models` image encoders: PrecompProjection, SmallCNN, ResNet, MobileNetV1, ImageEncoder.

Contract (brief): PrecompProjection = VSE++ EncoderImagePrecomp (Xavier-uniform Linear, bias 0,
eps-safe L2 norm; region sets [B, R, F] projected, mean-pooled over the valid regions of
`mask [B, R]`, then normalised); ImageEncoder = backbone -> (stop_gradient + BatchNorm on
running statistics when frozen) -> Xavier Linear -> L2 norm, train/eval via NNX's
`.train()` / `.eval()`; ResNet-50/152 and MobileNet (alpha 1) parameter counts equal
torchvision's and Keras'.

Randomly initialising a conv compiles one XLA program per kernel shape, which dominates a CPU
test run, so most models here are `nnx.eval_shape` skeletons filled with NumPy values
(`materialize`); the initialisers are tested on their own.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from itm_jax.models import (
    ImageEncoder,
    MobileNetV1,
    PrecompProjection,
    ResNet,
    SmallCNN,
    resnet50,
    resnet152,
)
from itm_jax.models.heads import ProjectionHead1x1
from itm_jax.models.resnet import torch_conv

F, D = 12, 6  # precomputed feature and embedding dims of the small projections


def materialize(build, seed=0):
    """`build(rngs)` as an abstract skeleton, filled with NumPy values (BN variances > 0)."""
    model = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    new = {}
    for path, var in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))):
        if path[-1] == "kernel":
            value = rng.normal(0, math.sqrt(2 / math.prod(var.shape[:-1])), var.shape)
        elif path[-1] in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, var.shape)
        else:
            value = rng.normal(0, 0.1, var.shape)
        new[path] = jnp.asarray(value, var.dtype)
    nnx.update(model, nnx.from_flat_state(new))
    return model


def batch_stats(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def images(seed, shape=(4, 16, 16, 3)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def small_encoder(rngs, **kwargs):
    return ImageEncoder(SmallCNN(8, widths=(4,), rngs=rngs), 8, D, rngs=rngs, **kwargs)


def numpy_l2(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ------------------------------------------------------------------ PrecompProjection


@pytest.fixture(scope="module")
def proj():
    return PrecompProjection(F, D, rngs=nnx.Rngs(0))


def _affine(proj, x):
    return np.asarray(x, np.float64) @ np.asarray(proj.fc.kernel[...]) + np.asarray(
        proj.fc.bias[...]
    )


def test_xavier_uniform_init_as_vsepp():
    layer = PrecompProjection(64, 32, rngs=nnx.Rngs(1)).fc  # 2048 weights
    w, r = np.asarray(layer.kernel[...]), math.sqrt(6) / math.sqrt(64 + 32)
    assert w.shape == (64, 32)
    assert np.abs(w).max() <= r and np.abs(w).max() > 0.95 * r
    # U(-r, r) has standard deviation r / sqrt(3); a normal or a wrong r would be off.
    assert abs(w.std() - r / math.sqrt(3)) < 0.05 * r / math.sqrt(3)
    np.testing.assert_array_equal(np.asarray(layer.bias[...]), 0.0)


def test_projection_of_feature_vectors(proj):
    x = np.random.default_rng(0).normal(size=(5, F))
    got = np.asarray(proj(jnp.asarray(x, jnp.float32)))
    assert got.shape == (5, D)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(got, numpy_l2(_affine(proj, x)), rtol=1e-5, atol=1e-6)
    raw = PrecompProjection(F, D, normalize=False, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(raw(x)), _affine(raw, x), rtol=1e-5, atol=1e-6)


def test_zero_feature_gives_finite_output_and_gradient(proj):
    # With bias 0 a zero feature projects to the zero vector; the eps keeps the norm finite.
    zero = jnp.zeros((1, F))
    np.testing.assert_array_equal(np.asarray(proj(zero)), 0.0)
    g = nnx.grad(lambda m: m(zero).sum())(proj)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))


def test_region_sets_mean_pool_projected_regions(proj):
    x = np.random.default_rng(1).normal(size=(3, 4, F))
    got = np.asarray(proj(jnp.asarray(x, jnp.float32)))
    want = numpy_l2(_affine(proj, x).mean(axis=1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_region_mask_selects_regions_and_padding_never_matters(proj):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4, F))
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]], bool)
    got = np.asarray(proj(jnp.asarray(x, jnp.float32), mask))
    raw = PrecompProjection(F, D, normalize=False, rngs=nnx.Rngs(0))  # the mean's scale shows
    got_raw = np.asarray(raw(jnp.asarray(x, jnp.float32), mask))
    for b in range(3):
        want = numpy_l2(_affine(proj, x[b, mask[b]]).mean(axis=0))
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)
        want_raw = _affine(raw, x[b, mask[b]]).mean(axis=0)
        np.testing.assert_allclose(got_raw[b], want_raw, rtol=1e-5, atol=1e-6)

    junk = np.where(mask[..., None], x, np.nan)  # padded regions hold NaN
    junk[0, 2] = 1e30

    def loss(m, feats):
        return jnp.sum(m(feats, jnp.asarray(mask, jnp.int32)) * jnp.arange(D))

    value_and_grad = nnx.jit(nnx.value_and_grad(loss))
    out_a, g_a = value_and_grad(proj, jnp.asarray(x, jnp.float32))
    out_b, g_b = value_and_grad(proj, jnp.asarray(junk, jnp.float32))
    np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))
    for a, b in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_b), strict=True):
        assert np.isfinite(np.asarray(b)).all()
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_row_without_valid_regions_embeds_to_zero(proj):
    x = jnp.ones((2, 3, F))
    got = np.asarray(proj(x, jnp.array([[0, 0, 0], [1, 0, 0]])))
    np.testing.assert_array_equal(got[0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(got[1]), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "shape,mask_shape,match",
    [
        ((2, F + 1), None, r"features \[B, 12\] or region sets"),
        ((2, 3, 4, F), None, "region sets"),
        ((2, F), (2, 1), "only with region sets"),
        ((2, 3, F), (2, 4), r"mask must be \[B, R\]"),
    ],
)
def test_projection_rejects_bad_shapes(proj, shape, mask_shape, match):
    mask = None if mask_shape is None else jnp.ones(mask_shape, bool)
    with pytest.raises(ValueError, match=match):
        proj(jnp.ones(shape), mask)


# ------------------------------------------------------------------ backbones


def test_kaiming_fan_out_init_as_torchvision():
    kernel = np.asarray(torch_conv(16, 32, 3, 1, rngs=nnx.Rngs(0)).kernel[...])  # 4608 weights
    assert kernel.shape == (3, 3, 16, 32)
    std = math.sqrt(2 / (32 * 3 * 3))  # kaiming_normal_(mode="fan_out"): fan = C_out * k * k
    assert abs(kernel.std() - std) < 0.05 * std
    assert np.abs(kernel).max() > 3 * std  # untruncated normal


def _tiny_resnet(rngs):
    return ResNet((1, 2, 1, 1), width=4, rngs=rngs)


def _small_mobilenet(rngs):
    return MobileNetV1(0.25, rngs=rngs)


def _small_cnn(rngs):
    return SmallCNN(8, widths=(4,), rngs=rngs)


@pytest.mark.parametrize(
    "build,size,feat_dim",
    [(_tiny_resnet, 32, 128), (_small_mobilenet, 32, 256), (_small_cnn, 16, 8)],
    ids=["resnet", "mobilenet", "smallcnn"],
)
def test_backbone_running_average_override_reaches_every_batchnorm(build, size, feat_dim):
    """eval() uses running statistics; in train mode use_running_average=True must match it."""
    model = materialize(build)
    assert model.feat_dim == feat_dim
    x = images(0, (2, size, size, 3))
    fwd = nnx.jit(lambda m, x: m(x, use_running_average=True))
    stats = batch_stats(model)

    model.eval()
    y_eval = nnx.jit(lambda m, x: m(x))(model, x)
    assert y_eval.shape == (2, feat_dim)
    model.train()
    y_override = fwd(model, x)
    # A BatchNorm left on batch statistics would change the output and the statistics.
    np.testing.assert_allclose(y_override, y_eval, rtol=1e-5, atol=1e-6)
    for a, b in zip(stats, batch_stats(model), strict=True):
        np.testing.assert_array_equal(a, b)
    # Running statistics: an example's features do not depend on the rest of the batch.
    other = x.at[1].set(images(1, (size, size, 3)))
    np.testing.assert_allclose(fwd(model, other)[0], y_override[0], rtol=1e-5, atol=1e-6)


def test_backbones_reject_nchw_input():
    model = nnx.eval_shape(lambda: _small_cnn(nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"NHWC.*transpose\(0, 2, 3, 1\)"):
        model(jnp.ones((2, 3, 16, 16)))


def test_mobilenet_rejects_images_below_32():
    model = nnx.eval_shape(lambda: _small_mobilenet(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="at least 32x32"):
        model(jnp.ones((1, 24, 24, 3)))


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda r: ResNet((3, 4, 6), rngs=r), "4 positive block counts"),
        (lambda r: ResNet((3, 4, 0, 3), rngs=r), "4 positive block counts"),
        (lambda r: MobileNetV1(0.01, rngs=r), "alpha must be positive"),
        (lambda r: SmallCNN(0, rngs=r), "channel counts must be >= 1"),
    ],
)
def test_bad_architectures_are_rejected(build, match):
    with pytest.raises(ValueError, match=match):
        nnx.eval_shape(lambda: build(nnx.Rngs(0)))


def _count(model, kind=nnx.Param):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, kind)))


def test_resnet_parameter_counts_match_torchvision():
    # torchvision: resnet50 25,557,032 and resnet152 60,192,808 parameters, of which the
    # 1000-class fc layer (not built here) has 2048 * 1000 + 1000 = 2,049,000.
    fc = 2048 * 1000 + 1000
    r50 = nnx.eval_shape(lambda: resnet50(rngs=nnx.Rngs(0)))
    assert _count(r50) == 25_557_032 - fc == 23_508_032
    assert r50.feat_dim == 2048
    out = nnx.eval_shape(
        lambda m, x: m(x), r50, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    )
    assert out.shape == (2, 2048)
    r152 = nnx.eval_shape(lambda: resnet152(rngs=nnx.Rngs(0)))
    assert _count(r152) == 60_192_808 - fc == 58_143_808
    assert r152.feat_dim == 2048


def test_mobilenet_parameter_count_matches_keras():
    # Keras MobileNet(alpha=1.0) with its 1000-class top: 4,253,864 weights, counting BatchNorm
    # moving means / variances (non-trainable: 21,888) and conv_preds (1024 * 1000 + 1000,
    # not built here).
    model = nnx.eval_shape(lambda: MobileNetV1(1.0, rngs=nnx.Rngs(0)))
    top = 1024 * 1000 + 1000
    assert _count(model, nnx.BatchStat) == 21_888
    assert _count(model) + _count(model, nnx.BatchStat) + top == 4_253_864
    assert model.feat_dim == 1024


# ------------------------------------------------------------------ ImageEncoder


def _loss(model, x):
    return jnp.sum(model(x) * jnp.arange(D))  # any output-dependent scalar


def _split_grads(grads):
    backbone = jax.tree.leaves(nnx.state(grads.backbone, nnx.Param))
    head = jax.tree.leaves(nnx.state(grads.fc, nnx.Param))
    return [np.asarray(g) for g in backbone], [np.asarray(g) for g in head]


def test_encoder_output_is_unit_norm_and_matches_its_parts():
    enc = materialize(small_encoder)
    enc.eval()
    x = images(1)
    got = np.asarray(enc(x))
    assert got.shape == (4, D)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    feats = np.asarray(enc.backbone(x), np.float64)
    kernel, bias = np.asarray(enc.fc.kernel[...]), np.asarray(enc.fc.bias[...])
    np.testing.assert_allclose(got, numpy_l2(feats @ kernel + bias), rtol=1e-5, atol=1e-6)

    enc.normalize, enc.normalize_features = False, True  # VSE++'s EncoderImageFull order
    np.testing.assert_allclose(
        np.asarray(enc(x)), numpy_l2(feats) @ kernel + bias, rtol=1e-5, atol=1e-6
    )


def test_encoder_head_is_xavier_initialised():
    enc = ImageEncoder(materialize(_small_cnn), 8, D, rngs=nnx.Rngs(3))
    r = math.sqrt(6 / (8 + D))
    kernel = np.asarray(enc.fc.kernel[...])
    assert kernel.shape == (8, D) and np.abs(kernel).max() <= r
    np.testing.assert_array_equal(np.asarray(enc.fc.bias[...]), 0.0)


def test_frozen_backbone_gets_zero_gradient_and_keeps_its_statistics():
    enc = materialize(lambda r: small_encoder(r, freeze_backbone=True))
    enc.train()  # even in train mode the frozen backbone's BatchNorm uses running statistics
    stats = batch_stats(enc)
    x = images(2)
    grads = nnx.jit(nnx.grad(_loss))(enc, x)
    backbone, head = _split_grads(grads)
    assert backbone and all((g == 0).all() for g in backbone)
    assert any(np.abs(g).max() > 0 for g in head)
    for a, b in zip(stats, batch_stats(enc), strict=True):
        np.testing.assert_array_equal(a, b)
    # features do not depend on the rest of the batch
    np.testing.assert_allclose(enc(x[:1]), enc(x)[:1], rtol=1e-5, atol=1e-6)

    enc.freeze_backbone = False  # the fine-tuning stage
    grads = nnx.jit(nnx.grad(_loss))(enc, x)
    backbone, _ = _split_grads(grads)
    assert all(np.abs(g).max() > 0 for g in backbone)
    assert all(not np.allclose(a, b) for a, b in zip(stats, batch_stats(enc), strict=True))


def test_encoder_head_replaces_the_linear_layer_and_trains_while_frozen():
    # CMPM's 1x1 conv + BatchNorm after the frozen CNN (paper Sec. 4.1: image encoder fixed
    # for 15 epochs); its statistics update in training mode while the backbone's stay.
    def build(rngs):
        return small_encoder(rngs, head=ProjectionHead1x1(8, D, rngs=rngs), freeze_backbone=True,
                             normalize=False)

    enc = materialize(build)
    assert isinstance(enc.fc, ProjectionHead1x1)
    stats, head_mean = batch_stats(enc.backbone), np.asarray(enc.fc.bn.mean[...])
    x = images(2)
    grads = nnx.jit(nnx.grad(_loss))(enc, x)
    backbone, head = _split_grads(grads)
    assert all((g == 0).all() for g in backbone) and all(np.abs(g).max() > 0 for g in head)
    for a, b in zip(stats, batch_stats(enc.backbone), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(head_mean, enc.fc.bn.mean[...])
    out = np.asarray(enc(x))  # training mode: the head's batch statistics, no normalisation
    np.testing.assert_allclose(out.mean(axis=0), enc.fc.bn.bias[...], atol=1e-5)
    enc.eval()
    feats = enc.backbone(x, use_running_average=True)
    np.testing.assert_allclose(enc(x), enc.fc(feats), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="feat_dim=8 -> embed_dim=6"):
        small_encoder(nnx.Rngs(0), head=ProjectionHead1x1(8, D + 1, rngs=nnx.Rngs(0)))


def test_encoder_train_and_eval_modes_drive_backbone_batchnorm():
    enc = materialize(small_encoder)
    x, other = images(3), images(3).at[1:].set(images(4)[1:])  # same first example
    fwd = nnx.jit(lambda m, x: m(x))
    bn = enc.backbone.stages[0].bn
    mean0, var0 = np.asarray(bn.mean[...]), np.asarray(bn.var[...])

    enc.eval()
    assert all(stage.bn.use_running_average for stage in enc.backbone.stages)
    y_eval = fwd(enc, x)
    np.testing.assert_allclose(fwd(enc, other)[0], y_eval[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(bn.mean[...]), mean0)

    enc.train()
    assert not any(stage.bn.use_running_average for stage in enc.backbone.stages)
    y_train = fwd(enc, x)
    assert not np.allclose(y_train, y_eval, atol=1e-3)
    # torch's momentum 0.1: running = 0.9 * running + 0.1 * batch statistic (Flax: biased var)
    h = np.asarray(enc.backbone.stages[0].conv(x), np.float64)  # [B, H, W, C] before the BN
    np.testing.assert_allclose(bn.mean[...], 0.9 * mean0 + 0.1 * h.mean((0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(bn.var[...], 0.9 * var0 + 0.1 * h.var((0, 1, 2)), rtol=1e-4)
    # batch statistics: the first example's embedding depends on the others
    assert not np.allclose(fwd(enc, other)[0], y_train[0], atol=1e-4)


def test_encoder_under_jax_jit_with_split_merge_equals_nnx_jit():
    x = images(4)
    a, b = materialize(small_encoder), materialize(small_encoder)
    graphdef, state = nnx.split(b)

    @jax.jit
    def step(state, x):
        model = nnx.merge(graphdef, state)
        return model(x), nnx.state(model)  # train mode: returns updated BatchNorm statistics

    y_jax, new_state = step(state, x)
    nnx.update(b, new_state)
    y_nnx = nnx.jit(lambda m, x: m(x))(a, x)
    np.testing.assert_allclose(np.asarray(y_jax), np.asarray(y_nnx), rtol=1e-6, atol=1e-7)
    for s_a, s_b in zip(batch_stats(a), batch_stats(b), strict=True):
        np.testing.assert_allclose(s_a, s_b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(batch_stats(a)[0], batch_stats(materialize(small_encoder))[0])


def test_encoder_checks_feature_dimension():
    with pytest.raises(ValueError, match="pass feat_dim=backbone.feat_dim"):
        nnx.eval_shape(lambda: ImageEncoder(_small_cnn(nnx.Rngs(0)), 16, D, rngs=nnx.Rngs(1)))

    class Unpooled(nnx.Module):  # a backbone without feat_dim that forgets to pool
        def __call__(self, x, *, use_running_average=None):
            return x

    enc = nnx.eval_shape(lambda: ImageEncoder(Unpooled(), 3, D, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"expected backbone features \[B, 3\]"):
        enc(jnp.ones((2, 4, 4, 3)))
