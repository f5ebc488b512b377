"""CMPM and CMPC losses.

Contract: docs/losses.md, "CMPM and CMPC". References: tests/numpy_refs.py (`cmpm`, `cmpc`).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import numpy_refs as ref
from itm_jax import losses

SIZES = [1, 2, 5, 17]


def assert_close(got, want, rtol=1e-6, atol=1e-9):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


def _labels(rng, b, kind):
    if kind == "distinct":
        return np.arange(b, dtype=np.int32) * 7 + 3
    if kind == "repeated":
        return rng.integers(0, max(1, b // 2), size=b).astype(np.int32)
    assert kind == "large"  # COCO-like ids, neighbours differing by 1
    return (100000 + rng.integers(0, max(1, b // 2), size=b)).astype(np.int32)


def _features(rng, b, d=6, scale=2.0):
    """Unnormalised features (docs/losses.md: the loss normalises internally)."""
    return scale * rng.normal(size=(b, d)), scale * rng.normal(size=(b, d))


# ================================================================== CMPM

# ------------------------------------------------------------------ 1. reference, float64


@pytest.mark.parametrize("b", SIZES)
def test_cmpm_matches_reference(b):
    """Label patterns distinct / repeated / large COCO-like ids x eps 1e-8 / 1e-3, one size."""
    rng = np.random.default_rng(10 + b)
    x, z = _features(rng, b)
    kinds = ["distinct", "repeated", "large"]
    labels = {k: _labels(rng, b, k) for k in kinds}
    if b >= 5:
        assert len(set(labels["repeated"].tolist())) < b  # some labels repeat
        assert len(set(labels["large"].tolist())) < b
    configs = [(k, eps) for k in kinds for eps in (1e-8, 1e-3)]
    want = [ref.cmpm(x, z, labels[k], eps) for k, eps in configs]
    with jax.enable_x64(True):
        def f(a, c, labs):
            return jnp.stack([losses.cmpm(a, c, labs[k], eps=eps) for k, eps in configs])

        got = jax.jit(f)(jnp.asarray(x), jnp.asarray(z),
                         {k: jnp.asarray(v) for k, v in labels.items()})
        assert got.dtype == jnp.float64
    assert_close(got, want)


def test_cmpm_default_eps_q_zero_and_symmetry():
    """Default eps = 1e-8. All labels distinct: every off-diagonal q is 0 and its summand is
    p*log(eps + p/eps) ~ p*(log p + 18.42); dropping the eps (or clamping log q) changes the
    value a lot. i2t + t2i is symmetric under swapping x and z."""
    rng = np.random.default_rng(1)
    x, z = _features(rng, 6)
    labels = np.array([0, 1, 0, 2, 3, 1], dtype=np.int32)
    distinct = np.arange(6, dtype=np.int32)
    want_distinct = ref.cmpm(x, z, distinct, 1e-8)
    assert want_distinct > 1.0  # dominated by the q = 0 summands
    assert abs(want_distinct - ref.cmpm(x, z, distinct, 1e-6)) > 0.1
    with jax.enable_x64(True):
        def f(a, c, lab, lab_d):
            return jnp.stack([losses.cmpm(a, c, lab), losses.cmpm(c, a, lab),
                              losses.cmpm(a, c, lab_d)])

        got = jax.jit(f)(jnp.asarray(x), jnp.asarray(z), jnp.asarray(labels),
                         jnp.asarray(distinct))
    assert_close(got[0], ref.cmpm(x, z, labels, 1e-8))
    assert_close(got[1], float(got[0]), rtol=1e-10)
    assert_close(got[2], want_distinct)


@pytest.mark.parametrize("x64", [True, False])
def test_cmpm_labels_exact_integer_equality(x64):
    """Neighbouring large ids are different classes (2**24 and 2**24+1 are equal in float32)."""
    rng = np.random.default_rng(3)
    x, z = _features(rng, 4)
    with jax.enable_x64(x64):
        dt = jnp.float64 if x64 else jnp.float32
        f = jax.jit(losses.cmpm)
        for a, b in [(4096, 4097), (100000, 100001), (2**24, 2**24 + 1)]:
            labels = np.array([a, b, a, b + 1], dtype=np.int32)
            want = ref.cmpm(x, z, labels)
            merged = ref.cmpm(x, z, np.array([a, a, a, b + 1]))
            assert abs(want - merged) > 0.1
            got = f(jnp.asarray(x, dt), jnp.asarray(z, dt), jnp.asarray(labels))
            assert_close(got, want, rtol=1e-6 if x64 else 1e-4, atol=1e-6)


# ------------------------------------------------------------------ 3. hand-computed

EPS = 1e-8


def _kl_row(p_pos, q_pos, q_neg):
    """Two-entry row p = [p_pos, 1 - p_pos] with q = [q_pos, q_neg] (the code's form)."""
    p_neg = 1.0 - p_pos
    return (p_pos * math.log(EPS + p_pos / (q_pos + EPS))
            + p_neg * math.log(EPS + p_neg / (q_neg + EPS)))


def test_cmpm_hand():
    # x = [[ln3, 0], [0, ln3]], z = I: x_i . n(z_j) = ln3 * delta_ij -> p_i = [3/4, 1/4]
    # (own pair first); z_i . n(x_j) = delta_ij -> p_i = [e/(1+e), 1/(1+e)].
    # Labels distinct -> q = I:
    # L = [3/4 log(eps + (3/4)/(1+eps)) + 1/4 log(eps + (1/4)/eps)]        (i2t, both rows)
    #   + [p log(eps + p/(1+eps)) + (1-p) log(eps + (1-p)/eps)], p = e/(1+e) (t2i, both rows)
    # Labels [7, 7] -> q = 1/2 everywhere:
    # i2t row: 3/4 log(eps + (3/4)/(1/2+eps)) + 1/4 log(eps + (1/4)/(1/2+eps)); t2i likewise.
    x = [[math.log(3.0), 0.0], [0.0, math.log(3.0)]]
    z = [[1.0, 0.0], [0.0, 1.0]]
    e = math.e
    want_distinct = _kl_row(0.75, 1.0, 0.0) + _kl_row(e / (1 + e), 1.0, 0.0)
    want_shared = _kl_row(0.75, 0.5, 0.5) + _kl_row(e / (1 + e), 0.5, 0.5)
    assert want_distinct == pytest.approx(0.25 * (math.log(0.25) + math.log(1e8))
                                          + 0.75 * math.log(0.75)
                                          + _kl_row(e / (1 + e), 1.0, 0.0), rel=1e-6)
    with jax.enable_x64(True):
        f = jax.jit(losses.cmpm)
        got_distinct = f(jnp.asarray(x), jnp.asarray(z), jnp.asarray([5, 9]))
        got_shared = f(jnp.asarray(x), jnp.asarray(z), jnp.asarray([7, 7]))
        # scaling z changes t2i (z_i . n(x_j)) but not i2t: the inputs are used unnormalised
        got_scaled = f(jnp.asarray(x), 3.0 * jnp.asarray(z), jnp.asarray([5, 9]))
    assert float(got_distinct) == pytest.approx(want_distinct, rel=1e-10)
    assert float(got_shared) == pytest.approx(want_shared, rel=1e-10)
    assert float(got_scaled) == pytest.approx(ref.cmpm(x, 3.0 * np.array(z), [5, 9]), rel=1e-10)
    assert abs(float(got_scaled) - float(got_distinct)) > 1e-2


# ------------------------------------------------------------------ 2. gradients


def test_cmpm_check_grads():
    rng = np.random.default_rng(5)
    x, z = _features(rng, 5, d=4, scale=1.0)
    with jax.enable_x64(True):
        lab_d = jnp.asarray(_labels(rng, 5, "distinct"))
        lab_r = jnp.asarray(np.array([0, 1, 0, 0, 2]))
        check_grads(jax.jit(lambda a, c: losses.cmpm(a, c, lab_d) - 0.6 * losses.cmpm(a, c, lab_r)),
                    (jnp.asarray(x), jnp.asarray(z)), order=1, modes=("rev",), eps=1e-6)


# ------------------------------------------------------------------ 5. batch of 1


def test_cmpm_batch_of_one():
    with jax.enable_x64(True):
        x = jnp.asarray([[1.0, 2.0]])
        z = jnp.asarray([[0.5, -1.0]])
        val, grads = jax.jit(jax.value_and_grad(
            lambda a, c: losses.cmpm(a, c, jnp.asarray([3])), argnums=(0, 1)))(x, z)
    assert_close(val, ref.cmpm([[1.0, 2.0]], [[0.5, -1.0]], [3]))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
        assert np.allclose(np.asarray(g), 0.0, atol=1e-12)  # p = 1 whatever the inputs


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_cmpm_low_precision(dtype):
    """Features of norm ~400 (logits far beyond float32's exp range) and of norm ~4."""
    rng = np.random.default_rng(6)
    labels = jnp.asarray(np.array([0, 1, 2, 0, 3, 4, 5, 6]))
    f = jax.jit(jax.value_and_grad(lambda a, c: losses.cmpm(a, c, labels), argnums=(0, 1)))
    for scale in (100.0, 1.0):
        x, z = _features(rng, 8, d=16, scale=scale)
        args = (jnp.asarray(x, dtype), jnp.asarray(z, dtype))
        val, grads = f(*args)
        assert np.isfinite(float(val))
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g, np.float32)))
        if dtype == jnp.float32:
            want = ref.cmpm(np.asarray(args[0], np.float64), np.asarray(args[1], np.float64),
                            np.asarray(labels))
            assert_close(float(val), want, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ 7. jit / vmap


def test_cmpm_jit_and_vmap():
    rng = np.random.default_rng(8)
    xs = np.stack([_features(rng, 6)[0] for _ in range(3)])
    zs = np.stack([_features(rng, 6)[1] for _ in range(3)])
    labs = np.array([[0, 1, 0, 2, 3, 4], [0, 1, 2, 3, 4, 5], [1, 1, 1, 2, 2, 3]])
    with jax.enable_x64(True):
        f = lambda a, c, lab: losses.cmpm(a, c, lab)  # noqa: E731
        eager = np.array([float(f(jnp.asarray(xs[k]), jnp.asarray(zs[k]), jnp.asarray(labs[k])))
                          for k in range(3)])
        jitted = jax.jit(f)(xs[0], zs[0], labs[0])
        vm = jax.jit(jax.vmap(f))(jnp.asarray(xs), jnp.asarray(zs), jnp.asarray(labs))
    assert_close(eager, [ref.cmpm(xs[k], zs[k], labs[k]) for k in range(3)])
    assert_close(jitted, eager[0], rtol=1e-10)
    assert_close(vm, eager, rtol=1e-10)


# ------------------------------------------------------------------ 8. errors


@pytest.mark.parametrize("case", ["z_rows", "z_dim", "labels_len", "x_rank", "labels_rank"])
def test_cmpm_value_errors(case):
    x, z, labels = np.ones((4, 3)), np.ones((4, 3)), np.arange(4)
    if case == "z_rows":
        z = np.ones((5, 3))
    elif case == "z_dim":
        z = np.ones((4, 2))
    elif case == "labels_len":
        labels = np.arange(3)
    elif case == "x_rank":
        x = np.ones((4,))
    elif case == "labels_rank":
        labels = np.zeros((4, 1), dtype=np.int32)
    with pytest.raises(ValueError):
        jax.jit(losses.cmpm)(jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32),
                             jnp.asarray(labels))


# ================================================================== CMPC


def _cmpc_inputs(rng, b, d=6, c=7):
    x, z = _features(rng, b, d)
    labels = rng.integers(0, c, size=b).astype(np.int32)
    weight = rng.normal(size=(d, c)) * rng.uniform(0.5, 3.0, size=(1, c))  # column norms vary
    return x, z, labels, weight


@pytest.mark.parametrize("b", SIZES)
def test_cmpc_matches_reference(b):
    rng = np.random.default_rng(20 + b)
    x, z, labels, w = _cmpc_inputs(rng, b)
    want = ref.cmpc(x, z, labels, w)
    with jax.enable_x64(True):
        got = jax.jit(losses.cmpc)(jnp.asarray(x), jnp.asarray(z), jnp.asarray(labels),
                                   jnp.asarray(w))
        assert got.shape == ()
        assert got.dtype == jnp.float64
    assert_close(got, want)


def test_cmpc_hand():
    # W = 2 I (D = C = 2) -> W_n = I. x = [3, 4], z = [1, 0], label 0.
    # n(z) = [1, 0]: x_hat = 3 * [1, 0] -> logits [3, 0] -> CE = log(1 + e^-3)
    # n(x) = [0.6, 0.8]: z_hat = 0.6 * [0.6, 0.8] = [0.36, 0.48] -> CE = log(1 + e^0.12)
    # label 1 instead: log(1 + e^3) + log(1 + e^-0.12)
    with jax.enable_x64(True):
        args = (jnp.asarray([[3.0, 4.0]]), jnp.asarray([[1.0, 0.0]]))
        w = 2.0 * jnp.eye(2, dtype=jnp.float64)
        f = jax.jit(losses.cmpc)
        got0 = f(*args, jnp.asarray([0]), w)
        got1 = f(*args, jnp.asarray([1]), w)
        both = f(jnp.asarray([[3.0, 4.0], [3.0, 4.0]]),
                 jnp.asarray([[1.0, 0.0], [1.0, 0.0]]), jnp.asarray([0, 1]), w)
    l0 = math.log(1 + math.exp(-3)) + math.log(1 + math.exp(0.12))
    l1 = math.log(1 + math.exp(3)) + math.log(1 + math.exp(-0.12))
    assert float(got0) == pytest.approx(l0, rel=1e-10)
    assert float(got1) == pytest.approx(l1, rel=1e-10)
    assert float(both) == pytest.approx((l0 + l1) / 2, rel=1e-10)  # mean over the batch


def test_cmpc_check_grads():
    rng = np.random.default_rng(30)
    x, z, labels, w = _cmpc_inputs(rng, 5, d=4, c=3)
    with jax.enable_x64(True):
        lab = jnp.asarray(labels)
        check_grads(jax.jit(lambda a, c, ww: losses.cmpc(a, c, lab, ww)),
                    (jnp.asarray(x), jnp.asarray(z), jnp.asarray(w)), order=1, modes=("rev",),
                    eps=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_cmpc_low_precision_large_logits(dtype):
    rng = np.random.default_rng(31)
    x, z, labels, w = _cmpc_inputs(rng, 8, d=16, c=5)
    x, z = 100.0 * x, 100.0 * z
    args = tuple(jnp.asarray(a, dtype) for a in (x, z, w))
    val, grads = jax.jit(jax.value_and_grad(
        lambda a, c, ww: losses.cmpc(a, c, jnp.asarray(labels), ww), argnums=(0, 1, 2)))(*args)
    assert np.isfinite(float(val))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g, np.float32)))
    if dtype == jnp.float32:
        want = ref.cmpc(*(np.asarray(a, np.float64) for a in args[:2]), labels,
                        np.asarray(args[2], np.float64))
        assert_close(float(val), want, rtol=1e-3, atol=1e-3)


def test_cmpc_jit_and_vmap():
    rng = np.random.default_rng(32)
    items = [_cmpc_inputs(rng, 6) for _ in range(3)]
    xs, zs, ls, ws = (np.stack([it[k] for it in items]) for k in range(4))
    with jax.enable_x64(True):
        f = lambda a, c, lab, ww: losses.cmpc(a, c, lab, ww)  # noqa: E731
        eager = np.array([float(f(*(jnp.asarray(v[k]) for v in (xs, zs, ls, ws))))
                          for k in range(3)])
        jitted = jax.jit(f)(xs[0], zs[0], ls[0], ws[0])
        vm = jax.jit(jax.vmap(f))(*(jnp.asarray(v) for v in (xs, zs, ls, ws)))
    assert_close(eager, [ref.cmpc(xs[k], zs[k], ls[k], ws[k]) for k in range(3)])
    assert_close(jitted, eager[0], rtol=1e-10)
    assert_close(vm, eager, rtol=1e-10)


@pytest.mark.parametrize("case", ["weight_dim", "weight_rank", "labels_len", "z_rows", "z_dim",
                                  "x_rank"])
def test_cmpc_value_errors(case):
    x, z, labels, w = np.ones((4, 3)), np.ones((4, 3)), np.arange(4) % 2, np.ones((3, 2))
    if case == "weight_dim":
        w = np.ones((4, 2))
    elif case == "weight_rank":
        w = np.ones((3,))
    elif case == "labels_len":
        labels = np.arange(5) % 2
    elif case == "z_rows":
        z = np.ones((3, 3))
    elif case == "z_dim":
        z = np.ones((4, 4))
    elif case == "x_rank":
        x = np.ones((2, 4, 3))
    with pytest.raises(ValueError):
        jax.jit(losses.cmpc)(jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32),
                             jnp.asarray(labels), jnp.asarray(w, jnp.float32))
