"""`itm_jax.similarity`: l2_normalize, cosine_scores, pairwise_distances (chunked L1).

Contract (brief + spec L53, L56-L57, L63): l2_normalize(x, axis=-1, eps=1e-12) =
x * rsqrt(max(sum x^2, eps)); cosine_scores(img, txt) = n(img) @ n(txt).T;
pairwise_distances(x, delta, *, chunk_size=None) -> [B, B] of l1 / l2 (zero-safe sqrt) / msd /
cosine (1 - x_n . x_m on the rows as given); chunked L1 equals unchunked.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import numpy_refs as ref
from itm_jax import similarity

DELTAS = ["l1", "l2", "msd", "cosine"]


def assert_close(got, want, rtol=1e-6, atol=1e-9):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ l2_normalize


def test_l2_normalize():
    """Rows (axis=-1 default), axis=0, eps applied to the squared norm, zero row."""
    x = np.random.default_rng(0).normal(size=(6, 5)) * 3
    with jax.enable_x64(True):
        def f(v, small, zero):
            return (similarity.l2_normalize(v), similarity.l2_normalize(v, axis=0),
                    # [0.1, 0.2]: sum x^2 = 0.05 < eps = 1 -> x * rsqrt(1) = x (unchanged);
                    # eps = 0.01 < 0.05 -> x / sqrt(0.05)
                    similarity.l2_normalize(small, eps=1.0),
                    similarity.l2_normalize(small, eps=0.01),
                    similarity.l2_normalize(zero))

        rows, cols, big_eps, small_eps, zero = jax.jit(f)(
            jnp.asarray(x), jnp.asarray([[0.1, 0.2]]),
            jnp.asarray([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]]))
        assert rows.dtype == jnp.float64
    assert_close(rows, ref.l2_normalize_rows(x), rtol=1e-12)
    assert_close(cols, ref.l2_normalize_rows(x.T).T, rtol=1e-12)
    assert_close(big_eps, [[0.1, 0.2]], rtol=1e-12)
    assert_close(small_eps, [[0.1 / math.sqrt(0.05), 0.2 / math.sqrt(0.05)]], rtol=1e-12)
    assert_close(zero, [[0.0, 0.0, 0.0], [0.6, 0.8, 0.0]], rtol=1e-12)


def test_l2_normalize_gradients_and_low_precision():
    x = np.random.default_rng(2).normal(size=(3, 4))
    x[1] = 0.0  # zero row: finite gradient
    with jax.enable_x64(True):
        w = jnp.asarray(np.random.default_rng(3).normal(size=(3, 4)))
        f = jax.jit(lambda v: jnp.sum(similarity.l2_normalize(v) * w))
        g = jax.grad(f)(jnp.asarray(x))
        assert np.all(np.isfinite(np.asarray(g)))
        x[1] = [0.3, -0.2, 0.5, 1.0]
        check_grads(f, (jnp.asarray(x),), order=1, modes=("rev",), eps=1e-6)
    y = jax.jit(similarity.l2_normalize)(jnp.asarray(x, jnp.bfloat16))
    assert np.all(np.isfinite(np.asarray(y, np.float32)))


# ------------------------------------------------------------------ cosine_scores


def test_cosine_scores():
    rng = np.random.default_rng(3)
    shapes = [(3, 7), (1, 4)]
    inputs = [(rng.normal(size=(a, 6)) * 2, rng.normal(size=(b, 6)) * 0.5) for a, b in shapes]
    with jax.enable_x64(True):
        got = jax.jit(lambda ins: [similarity.cosine_scores(i, t) for i, t in ins])(
            [(jnp.asarray(i), jnp.asarray(t)) for i, t in inputs])
        # img [3, 4] -> [0.6, 0.8]; txt [[1, 0], [0, -2]] -> [[1, 0], [0, -1]]
        # scores = [[0.6, -0.8]]
        hand = jax.jit(similarity.cosine_scores)(jnp.asarray([[3.0, 4.0]]),
                                                 jnp.asarray([[1.0, 0.0], [0.0, -2.0]]))
        w = jnp.asarray(rng.normal(size=(3, 2)))
        check_grads(jax.jit(lambda a, b: jnp.sum(similarity.cosine_scores(a, b) * w)),
                    (jnp.asarray(rng.normal(size=(3, 4))), jnp.asarray(rng.normal(size=(2, 4)))),
                    order=1, modes=("rev",), eps=1e-6)
    for g, (i, t), shape in zip(got, inputs, shapes):
        assert g.shape == shape
        assert_close(g, ref.cosine_scores(i, t), rtol=1e-12)
    assert_close(hand, [[0.6, -0.8]], rtol=1e-12)


# ------------------------------------------------------------------ pairwise_distances


@pytest.mark.parametrize("b", [1, 2, 7])
def test_pairwise_matches_reference(b):
    x = np.random.default_rng(5 + b).normal(size=(b, 5))
    with jax.enable_x64(True):
        got = jax.jit(lambda v: [similarity.pairwise_distances(v, d) for d in DELTAS])(
            jnp.asarray(x))
    for g, delta in zip(got, DELTAS):
        assert g.shape == (b, b)
        assert_close(g, ref.pairwise_distances(x, delta), rtol=1e-10, atol=1e-12)


def test_pairwise_hand():
    # x0 = [0, 0], x1 = [3, 4]; cosine is 1 - x_n . x_m on the rows as given: 1 - 0 = 1
    # except 1 - |x1|^2 = -24
    expected = {"l1": [[0.0, 7.0], [7.0, 0.0]], "l2": [[0.0, 5.0], [5.0, 0.0]],
                "msd": [[0.0, 25.0], [25.0, 0.0]], "cosine": [[1.0, 1.0], [1.0, -24.0]]}
    with jax.enable_x64(True):
        got = jax.jit(lambda v: [similarity.pairwise_distances(v, d) for d in DELTAS])(
            jnp.asarray([[0.0, 0.0], [3.0, 4.0]]))
    for g, delta in zip(got, DELTAS):
        assert_close(g, expected[delta], rtol=1e-12, atol=1e-12)


def test_pairwise_check_grads():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(4, 3))
    with jax.enable_x64(True):
        ws = [jnp.asarray(rng.normal(size=(4, 4))) for _ in DELTAS]
        check_grads(jax.jit(lambda v: sum(jnp.sum(similarity.pairwise_distances(v, d) * w)
                                          for d, w in zip(DELTAS, ws))),
                    (jnp.asarray(x),), order=1, modes=("rev",), eps=1e-6)


def test_pairwise_l2_gradient_at_zero_distances_is_finite():
    """The diagonal is 0; a duplicated row gives another zero. d/dx_n sum_{m} 2 D_nm
    = sum_{m: D_nm > 0} 2 (x_n - x_m) / D_nm (each pair counted twice, zeros contribute 0)."""
    x = np.random.default_rng(9).normal(size=(5, 3))
    x[3] = x[1]
    d = ref.pairwise_distances(x, "l2")
    expected = np.zeros_like(x)
    for n in range(5):
        for m in range(5):
            if d[n, m] > 0:
                expected[n] += 2 * (x[n] - x[m]) / d[n, m]
    with jax.enable_x64(True):
        g = jax.jit(jax.grad(lambda v: jnp.sum(similarity.pairwise_distances(v, "l2"))))(
            jnp.asarray(x))
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
    assert_close(g, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_pairwise_low_precision_finite(dtype):
    x = jnp.asarray(ref.unit_rows(np.random.default_rng(10), 8, 16), dtype)

    def f(v):
        vals = jnp.stack([jnp.sum(similarity.pairwise_distances(v, d)).astype(jnp.float32)
                          for d in DELTAS])
        return jnp.sum(vals), vals

    (_, vals), g = jax.jit(jax.value_and_grad(f, has_aux=True))(x)
    assert np.all(np.isfinite(np.asarray(vals)))
    assert g.dtype == dtype
    assert np.all(np.isfinite(np.asarray(g, np.float32)))


def test_chunked_l1_equals_unchunked():
    """B = 12: chunk sizes that divide it (3, 12) and that do not (5); values and gradients
    (of a random weighting of the matrix) equal the unchunked ones."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(12, 6))
    sizes = [None, 3, 5, 12]
    with jax.enable_x64(True):
        w = jnp.asarray(rng.normal(size=(12, 12)))

        def f(v):
            def total(u, cs):
                return jnp.sum(similarity.pairwise_distances(u, "l1", chunk_size=cs) * w)

            return ([similarity.pairwise_distances(v, "l1", chunk_size=cs) for cs in sizes],
                    [jax.grad(total)(v, cs) for cs in sizes])

        mats, grads = jax.jit(f)(jnp.asarray(x))
        eager = similarity.pairwise_distances(jnp.asarray(x), "l1", chunk_size=5)
    assert_close(mats[0], ref.pairwise_distances(x, "l1"), rtol=1e-12)
    for m, g, cs in zip(mats[1:], grads[1:], sizes[1:]):
        assert m.shape == (12, 12), cs
        assert_close(m, np.asarray(mats[0]), rtol=1e-12, atol=1e-12)
        assert_close(g, np.asarray(grads[0]), rtol=1e-10, atol=1e-12)
    assert_close(eager, np.asarray(mats[0]), rtol=1e-12, atol=1e-12)


def test_pairwise_jit_and_vmap():
    xs = np.random.default_rng(12).normal(size=(3, 5, 4))
    with jax.enable_x64(True):
        def f(v):
            return jnp.stack([similarity.pairwise_distances(v, d) for d in DELTAS])

        eager = np.stack([np.stack([np.asarray(similarity.pairwise_distances(jnp.asarray(x), d))
                                    for d in DELTAS]) for x in xs])
        jitted = jax.jit(f)(jnp.asarray(xs[0]))
        vm = jax.jit(jax.vmap(f))(jnp.asarray(xs))
    assert_close(jitted, eager[0], rtol=1e-12, atol=1e-12)
    assert_close(vm, eager, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["delta", "rank1", "rank3"])
def test_pairwise_value_errors(case):
    x = {"rank1": np.ones((4,)), "rank3": np.ones((2, 4, 3))}.get(case, np.ones((4, 3)))
    delta = "l3" if case == "delta" else "l1"
    with pytest.raises(ValueError):
        jax.jit(lambda v: similarity.pairwise_distances(v, delta))(jnp.asarray(x, jnp.float32))
