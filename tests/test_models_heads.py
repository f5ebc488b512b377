"""Heads: ConVSE MLP, dual-path shared classifier and image head, CMPC weight, CMPM 1x1-conv +
BatchNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from itm_jax.losses import cmpc, instance_loss
from itm_jax.models.heads import (
    ConVSEHead,
    DualPathHead,
    NormClassifier,
    ProjectionHead1x1,
    SharedClassifier,
)

B, D, C = 6, 10, 7


# Tiny models: compiling dominates, so XLA's optimisation passes are skipped (conftest).
pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")


def features(seed, shape=(B, D)):
    return jax.random.normal(jax.random.key(seed), shape)


def param_paths(module):
    return {path: v.shape for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


# ---------------------------------------------------------------- ConVSE head


def test_convse_head_layers_match_the_paper():
    head = nnx.eval_shape(lambda: ConVSEHead(rngs=nnx.Rngs(0)))
    assert param_paths(head) == {
        ("fc1", "kernel"): (1024, 2048),  # no bias on the first layer
        ("fc2", "kernel"): (2048, 1024),
        ("fc2", "bias"): (1024,),
    }
    assert nnx.eval_shape(lambda: ConVSEHead(rngs=nnx.Rngs(0))(jnp.ones((3, 1024)))).shape == (
        3,
        1024,
    )


def test_convse_head_computes_relu_mlp_and_out_dim():
    head = ConVSEHead(D, 16, out_dim=5, rngs=nnx.Rngs(0))
    x = features(1)
    ref = jax.nn.relu(x @ head.fc1.kernel[...]) @ head.fc2.kernel[...] + head.fc2.bias[...]
    np.testing.assert_allclose(head(x), ref, rtol=1e-5, atol=1e-6)
    assert head(x).shape == (B, 5) and head.out_dim == 5
    np.testing.assert_array_equal(head.fc2.bias[...], 0.0)


def test_convse_heads_are_one_per_modality():
    rngs = nnx.Rngs(0)
    img_head, txt_head = ConVSEHead(D, 16, rngs=rngs), ConVSEHead(D, 16, rngs=rngs)
    assert not np.allclose(img_head.fc1.kernel[...], txt_head.fc1.kernel[...])
    x = features(2)
    grads = nnx.grad(lambda h: jnp.sum(h(x) ** 2))(img_head)
    for path, g in nnx.to_flat_state(grads):
        assert np.abs(np.asarray(g[...])).max() > 0, path


# ---------------------------------------------------------------- shared classifier


def test_shared_classifier_is_one_linear_layer():
    clf = SharedClassifier(D, C, rngs=nnx.Rngs(0))
    assert param_paths(clf) == {("weight",): (D, C), ("bias",): (C,)}
    clf.bias[...] = jnp.arange(C, dtype=jnp.float32)
    x = features(1)
    np.testing.assert_allclose(clf(x), x @ clf.weight[...] + jnp.arange(C), rtol=1e-5, atol=1e-5)
    coco = SharedClassifier(D, C, use_bias=False, rngs=nnx.Rngs(0))  # the authors' COCO network
    assert param_paths(coco) == {("weight",): (D, C)} and coco.bias is None
    np.testing.assert_allclose(coco(x), x @ coco.weight[...], rtol=1e-5, atol=1e-5)


def test_shared_classifier_gradient_sums_both_branches_into_one_weight():
    clf = SharedClassifier(D, C, rngs=nnx.Rngs(0))
    img, txt = features(1), features(2)
    labels = jnp.arange(B) % C

    def loss(clf, img, txt):
        return instance_loss(clf(img), clf(txt), labels)

    both = nnx.grad(loss)(clf, img, txt)
    # The same classifier seen by one branch at a time (the other branch's logits fixed).
    img_only = nnx.grad(lambda c: instance_loss(c(img), jax.lax.stop_gradient(c(txt)), labels))(clf)
    txt_only = nnx.grad(lambda c: instance_loss(jax.lax.stop_gradient(c(img)), c(txt), labels))(clf)
    for name in ("weight", "bias"):
        g_both = np.asarray(both[name][...])
        g_img, g_txt = np.asarray(img_only[name][...]), np.asarray(txt_only[name][...])
        assert np.abs(g_img).max() > 0 and np.abs(g_txt).max() > 0
        np.testing.assert_allclose(g_both, g_img + g_txt, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- CMPC classifier


def test_norm_classifier_holds_the_raw_bias_free_weight_cmpc_normalises():
    clf = NormClassifier(D, C, rngs=nnx.Rngs(0))
    assert param_paths(clf) == {("weight",): (D, C)}
    norms = np.linalg.norm(np.asarray(clf.weight[...]), axis=0)
    assert not np.allclose(norms, 1.0)  # the module does not normalise its columns
    x, z, labels = features(1), features(2), jnp.arange(B) % C
    scales = jnp.linspace(0.5, 3.0, C)
    np.testing.assert_allclose(
        cmpc(x, z, labels, clf.weight), cmpc(x, z, labels, clf.weight[...] * scales), rtol=1e-5
    )
    grad = nnx.grad(lambda c: cmpc(x, z, labels, c.weight))(clf)
    g = np.asarray(grad["weight"][...])
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    # Through the column normalisation: no component along each (raw) column.
    np.testing.assert_allclose(np.sum(g * np.asarray(clf.weight[...]), axis=0), 0.0, atol=1e-5)


# ---------------------------------------------------------------- CMPM projection head


def test_projection_head_is_bias_free_1x1_conv_then_batchnorm():
    head = ProjectionHead1x1(D, 4, rngs=nnx.Rngs(0))
    assert param_paths(head) == {
        ("proj", "kernel"): (D, 4),
        ("bn", "scale"): (4,),
        ("bn", "bias"): (4,),
    }
    # A 1x1 convolution on the [B, 1, 1, D] pooled map is the same map as the Linear.
    x = features(1)
    conv = jax.lax.conv_general_dilated(
        x[:, None, None, :],
        head.proj.kernel[...][None, None],
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )[:, 0, 0]
    np.testing.assert_allclose(head.proj(x), conv, rtol=1e-5, atol=1e-5)
    out = head(x)  # training mode: batch statistics, no activation
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=0), 1.0, rtol=1e-3)
    assert (np.asarray(out) < 0).any()


def test_projection_head_tracks_running_statistics_for_eval():
    head = ProjectionHead1x1(D, 4, momentum=0.5, rngs=nnx.Rngs(0))
    x = features(1) * 3.0 + 1.0
    head(x)
    h = x @ head.proj.kernel[...]
    np.testing.assert_allclose(head.bn.mean[...], 0.5 * h.mean(axis=0), rtol=1e-5, atol=1e-6)
    head.eval()
    mean, var = head.bn.mean[...], head.bn.var[...]
    np.testing.assert_allclose(head(x), (h - mean) / jnp.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)


def test_projection_head_cmpm_sizes():
    # CMPM's text head on the 512-unit Bi-LSTM (1024-d pooled), the image head on ResNet-152.
    text = nnx.eval_shape(lambda: ProjectionHead1x1(1024, 512, rngs=nnx.Rngs(0)))
    image = nnx.eval_shape(lambda: ProjectionHead1x1(2048, 512, rngs=nnx.Rngs(0)))
    count = lambda m: sum(v.size for v in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
    assert count(text) == 1024 * 512 + 2 * 512 == 525_312
    assert count(image) == 2048 * 512 + 2 * 512 == 1_049_600


# ---------------------------------------------------------------- dual-path image head


def test_dual_path_head_paper_sizes():
    head = nnx.eval_shape(lambda: DualPathHead(rngs=nnx.Rngs(0)))
    # Sec. III-A: fc 2048 -> 2048, BatchNorm, ReLU, fc 2048 -> 2048 (bias-free in the code),
    # plus the code's second BatchNorm.
    assert param_paths(head) == {
        ("fc1", "kernel"): (2048, 2048),
        ("bn1", "scale"): (2048,),
        ("bn1", "bias"): (2048,),
        ("fc2", "kernel"): (2048, 2048),
        ("bn2", "scale"): (2048,),
        ("bn2", "bias"): (2048,),
    }
    assert sum(v.size for v in jax.tree.leaves(nnx.state(head, nnx.Param))) == 8_396_800
    paper = nnx.eval_shape(lambda: DualPathHead(variant="paper", rngs=nnx.Rngs(0)))
    assert ("bn2", "scale") not in param_paths(paper) and paper.bn2 is None


def test_dual_path_head_computes_fc_bn_relu_fc():
    head = DualPathHead(D, 5, hidden=8, rngs=nnx.Rngs(0))
    paper = DualPathHead(D, 5, hidden=8, variant="paper", rngs=nnx.Rngs(0))
    x = features(1) * 2.0 + 0.5

    def bn(h):  # training mode, fresh scale 1 and bias 0: batch statistics
        return (h - h.mean(axis=0)) / jnp.sqrt(h.var(axis=0) + 1e-5)

    hidden = jax.nn.relu(bn(x @ head.fc1.kernel[...]))
    np.testing.assert_allclose(head(x), jax.nn.relu(bn(hidden @ head.fc2.kernel[...])),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(paper(x), hidden @ paper.fc2.kernel[...], rtol=1e-4, atol=1e-5)
    assert (np.asarray(head(x)) >= 0).all() and (np.asarray(paper(x)) < 0).any()
    assert head(x).shape == (B, 5) and head.out_dim == 5


def test_dual_path_head_eval_uses_running_statistics():
    head = DualPathHead(D, 5, hidden=8, rngs=nnx.Rngs(0))
    x = features(1) * 3.0 + 1.0
    head(x)  # one training step moves the running means away from 0
    assert np.abs(np.asarray(head.bn1.mean[...])).max() > 0
    head.eval()
    h = jax.nn.relu((x @ head.fc1.kernel[...] - head.bn1.mean[...])
                    / jnp.sqrt(head.bn1.var[...] + 1e-5))
    h = (h @ head.fc2.kernel[...] - head.bn2.mean[...]) / jnp.sqrt(head.bn2.var[...] + 1e-5)
    np.testing.assert_allclose(head(x), jax.nn.relu(h), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(head(x[:2]), head(x)[:2])  # no batch dependence in eval


def test_dual_path_head_dropout_only_in_training():
    head = DualPathHead(D, 256, dropout=0.75, rngs=nnx.Rngs(0))
    plain = DualPathHead(D, 256, rngs=nnx.Rngs(0))  # same weights: dropout's rng is forked last
    x = features(1)
    base = np.asarray(plain(x))  # training mode: the same batch statistics, no dropout
    first, second = np.asarray(head(x)), np.asarray(head(x))
    assert not np.array_equal(first, second)  # a fresh mask per call
    # Inverted dropout: kept units scaled by 1 / (1 - 0.75), about a quarter kept.
    kept = second != 0
    np.testing.assert_allclose(second[kept], base[kept] / 0.25, rtol=1e-5)
    assert 0.15 < kept[base > 0].mean() < 0.35
    plain(x)  # two training calls each: the same running statistics (dropout comes after)
    head.eval()
    plain.eval()
    np.testing.assert_allclose(head(x), plain(x), rtol=1e-6)  # no dropout in eval mode
    np.testing.assert_array_equal(head(x), head(x))


def test_dual_path_head_rejects_bad_options():
    with pytest.raises(ValueError, match="variant"):
        DualPathHead(D, 4, variant="code", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout"):
        DualPathHead(D, 4, dropout=1.0, rngs=nnx.Rngs(0))


def test_heads_under_jit_with_split_and_merge():
    heads = nnx.List(
        [
            ConVSEHead(D, 16, rngs=nnx.Rngs(0)),
            SharedClassifier(D, C, rngs=nnx.Rngs(1)),
            ProjectionHead1x1(D, 4, rngs=nnx.Rngs(2)),
        ]
    )
    x = features(3)
    graphdef, state = nnx.split(heads)

    @jax.jit
    def apply(state, x):
        heads = nnx.merge(graphdef, state)
        return [h(x) for h in heads], nnx.state(heads)

    outs, new_state = apply(state, x)
    for h, out in zip(heads, outs, strict=True):
        np.testing.assert_allclose(out, h(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(  # the BatchNorm update came back out of jit
        new_state[2]["bn"]["mean"][...], heads[2].bn.mean[...], rtol=1e-6
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConVSEHead(D, 16, rngs=nnx.Rngs(0)),
        lambda: SharedClassifier(D, C, rngs=nnx.Rngs(0)),
        lambda: ProjectionHead1x1(D, 4, rngs=nnx.Rngs(0)),
        lambda: DualPathHead(D, 4, rngs=nnx.Rngs(0)),
    ],
)
@pytest.mark.parametrize("shape", [(B, D + 1), (B,), (2, B, D)])
def test_heads_reject_features_of_the_wrong_shape(make, shape):
    with pytest.raises(ValueError, match=rf"features \[B, {D}\]"):
        make()(jnp.ones(shape))


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConVSEHead(0, 16, rngs=nnx.Rngs(0)),
        lambda: ConVSEHead(D, 16, out_dim=0, rngs=nnx.Rngs(0)),
        lambda: SharedClassifier(D, 0, rngs=nnx.Rngs(0)),
        lambda: NormClassifier(-1, C, rngs=nnx.Rngs(0)),
        lambda: ProjectionHead1x1(D, 0, rngs=nnx.Rngs(0)),
        lambda: DualPathHead(D, 4, hidden=0, rngs=nnx.Rngs(0)),
    ],
)
def test_heads_reject_non_positive_sizes(make):
    with pytest.raises(ValueError, match="positive integers"):
        make()
