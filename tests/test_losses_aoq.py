"""AOQ (adaptive offline quintuplet) loss.

Contract: docs/losses.md, "AOQ". Reference: tests/numpy_refs.py (`aoq_loss`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import numpy_refs as ref
from itm_jax import losses

VARIANTS = ["online", "offtri", "offquin", "adaptive"]
SIZES = [1, 2, 5, 17]


def assert_close(got, want, rtol=1e-6, atol=1e-9):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


def _inputs(rng, b):
    """Scores plus the four offline score vectors, drawn around each pair's positive score so
    that the offline hinges (g2 = 0 or 0.1) are active for some k and not for others."""
    s = ref.rand_scores(rng, b, diag_boost=0.5)
    diag = np.diag(s).copy()
    vecs = [diag + rng.uniform(-0.3, 0.2, size=b) for _ in range(4)]
    return s, vecs


PARAMS = [
    dict(),
    dict(margin_online=0.3, margin_offline=0.1, alpha=0.5, beta=1.0),
]


# ------------------------------------------------------------------ 1. reference, float64


@pytest.mark.parametrize("b", SIZES)
def test_matches_reference(b):
    """All variants x two parameter sets, plus the defaults, one size."""
    rng = np.random.default_rng(100 + b)
    s, vecs = _inputs(rng, b)
    configs = [dict(PARAMS[k], variant=v) for v in VARIANTS for k in range(len(PARAMS))]
    want = [ref.aoq_loss(s, *vecs)] + [ref.aoq_loss(s, *vecs, **kw) for kw in configs]
    if b >= 5:
        for kw in configs:
            if kw["variant"] != "adaptive":
                continue
            w_i, w_t = ref.aoq_weights(s, vecs[0], vecs[1], kw.get("alpha", 0.3),
                                       kw.get("beta", 1.5))
            assert np.std(w_i) > 0.05 and np.std(w_t) > 0.05  # weights really vary
            g2 = kw.get("margin_offline", 0.0)
            act = [int(((g2 + v - np.diag(s)) > 0).sum()) for v in vecs]
            assert 0 < sum(act) < 4 * b  # offline hinges active for some k, not for others
            if b >= 17:
                assert all(0 < a < b for a in act)
        assert len(set(np.round(want[1:], 6))) == len(configs)  # every configuration differs
    with jax.enable_x64(True):
        def f(x, *vs):
            return jnp.stack([losses.aoq_loss(x, *vs)]
                             + [losses.aoq_loss(x, *vs, **kw) for kw in configs])

        got = jax.jit(f)(jnp.asarray(s), *(jnp.asarray(v) for v in vecs))
        assert got.dtype == jnp.float64
    assert_close(got, want)


def test_with_id_positives():
    rng = np.random.default_rng(2)
    ids = np.array([0, 1, 0, 2, 3, 1, 4])
    img = ref.unit_rows(rng, 7, 8)
    img[2], img[5] = img[0], img[1]
    s = img @ ref.noisy_copy(rng, img).T
    diag = np.diag(s).copy()
    vecs = [diag + rng.uniform(-0.3, 0.1, size=7) for _ in range(4)]
    pos = ref.positives_from_ids(ids, ids)
    want = [ref.aoq_loss(s, *vecs, variant=v, positives=pos) for v in VARIANTS]
    want_none = [ref.aoq_loss(s, *vecs, variant=v) for v in VARIANTS]
    assert np.all(np.abs(np.array(want) - np.array(want_none)) > 0.05)
    with jax.enable_x64(True):
        def f(x, jids, *vs):
            p = losses.positives_from_ids(jids, jids)
            eye = jnp.eye(7, dtype=bool)
            return jnp.stack([losses.aoq_loss(x, *vs, variant=v, positives=q)
                              for q in (p, eye) for v in VARIANTS])

        got = jax.jit(f)(jnp.asarray(s), jnp.asarray(ids), *(jnp.asarray(v) for v in vecs))
    assert_close(got, want + want_none)


# ------------------------------------------------------------------ golden checks


def test_golden_offquin_and_online():
    """offquin == adaptive with alpha -> inf, beta = 1; online == max_of_hinges (with and
    without id positives, and with the offline vectors left out)."""
    rng = np.random.default_rng(3)
    s, vecs = _inputs(rng, 8)
    ids = [0, 1, 0, 2, 3, 1, 4, 5]
    with jax.enable_x64(True):
        def f(x, p, *vs):
            out = [losses.aoq_loss(x, *vs, variant="offquin"),
                   losses.aoq_loss(x, *vs, variant="adaptive", alpha=1e12, beta=1.0),
                   losses.aoq_loss(x, *vs, variant="adaptive")]
            for q in (None, p):
                out += [losses.max_of_hinges(x, margin=0.25, positives=q),
                        losses.aoq_loss(x, *vs, variant="online", margin_online=0.25,
                                        positives=q),
                        losses.aoq_loss(x, None, None, None, None, variant="online",
                                        margin_online=0.25, positives=q)]
            return jnp.stack(out)

        got = np.asarray(jax.jit(f)(jnp.asarray(s), jnp.asarray(ref.positives_from_ids(ids, ids)),
                                    *(jnp.asarray(v) for v in vecs)))
    assert_close(got[1], got[0], rtol=1e-9)
    assert abs(got[2] - got[0]) > 1e-3
    assert_close(got[0], ref.aoq_loss(s, *vecs, variant="offquin"))
    assert_close(got[4:6], got[3], rtol=1e-12)
    assert_close(got[7:9], got[6], rtol=1e-12)
    assert abs(got[6] - got[3]) > 1e-3


# ------------------------------------------------------------------ 3. hand-computed

# S = [[0.5, 0.45], [0.1, 0.6]], g1 = 0.2: on_i = [0.45, 0.1], on_t = [0.1, 0.45],
#   h_i = [0.15, 0], h_t = [0, 0.05]                        -> online = 0.2
# s_i_toff = [0.55, 0.3], s_ioff_t = [0.4, 0.65]  (g2 = 0, P = [0.5, 0.6]):
#   [0.05, 0] and [0, 0.05]                               -> offtri = 0.2 + 0.1 = 0.3
# s_ioff_toff = [0.2, 0.7], s_itilde_ttilde = [0.6, 0.1]:
#   [0, 0.1] and [0.1, 0]                                 -> offquin = 0.3 + 0.2 = 0.5
# adaptive (alpha 0.3, beta 1.5): w_i0 = 1.5 - (0.55 - 0.45)/0.3 = 7/6,
#   w_t1 = 1.5 - (0.65 - 0.45)/0.3 = 5/6 -> 7/6 * 0.15 + 5/6 * 0.05 + 0.3 = 31/60
# g2 = 0.05, offquin: offline hinges k=0: 0.1, 0, 0, 0.15; k=1: 0, 0.1, 0.15, 0 -> 0.2 + 0.5
S2 = [[0.5, 0.45], [0.1, 0.6]]
V2 = [[0.55, 0.3], [0.4, 0.65], [0.2, 0.7], [0.6, 0.1]]


def test_hand_computed():
    cases = [("online", {}, 0.2), ("offtri", {}, 0.3), ("offquin", {}, 0.5),
             ("adaptive", {}, 31 / 60), ("offquin", {"margin_offline": 0.05}, 0.7)]
    with jax.enable_x64(True):
        got = jax.jit(lambda x, *vs: jnp.stack([losses.aoq_loss(x, *vs, variant=v, **kw)
                                                for v, kw, _ in cases]))(
            jnp.asarray(S2), *(jnp.asarray(v) for v in V2))
    assert_close(got, [e for _, _, e in cases], rtol=1e-12)


def test_hand_adaptive_gradient_wrt_offline_scores():
    # d/ds_i_toff_0 of w_i0 * h_i0 + [s_i_toff_0 - P_0]_+ = -h_i0/alpha + 1 = -0.5 + 1 = 0.5
    # d/ds_i_toff_1: h_i1 = 0, offline hinge inactive -> 0
    # d/ds_ioff_t_1 = -h_t1/alpha + 1 = -1/6 + 1 = 5/6; d/ds_ioff_t_0 = 0 (both inactive)
    # detached weights: the -h/alpha parts vanish -> [1, 0] and [0, 1]
    with jax.enable_x64(True):
        def f(a, b, detach):
            return losses.aoq_loss(jnp.asarray(S2), a, b, jnp.asarray(V2[2]), jnp.asarray(V2[3]),
                                   detach_weights=detach)
        g, gd = jax.jit(lambda a, b: (jax.grad(lambda *u: f(*u, False), argnums=(0, 1))(a, b),
                                      jax.grad(lambda *u: f(*u, True), argnums=(0, 1))(a, b)))(
            jnp.asarray(V2[0]), jnp.asarray(V2[1]))
    assert_close(g[0], [0.5, 0.0], atol=1e-12)
    assert_close(g[1], [0.0, 5 / 6], atol=1e-12)
    assert_close(gd[0], [1.0, 0.0], atol=1e-12)
    assert_close(gd[1], [0.0, 1.0], atol=1e-12)


# ------------------------------------------------------------------ 2. gradients


def test_check_grads():
    """One check over a weighted sum of the four variants."""
    rng = np.random.default_rng(5)
    s, vecs = _inputs(rng, 5)
    weights = dict(online=1.0, offtri=-0.5, offquin=0.3, adaptive=0.8)
    with jax.enable_x64(True):
        check_grads(jax.jit(lambda sc, a, b, c, d: sum(
            w * losses.aoq_loss(sc, a, b, c, d, variant=v) for v, w in weights.items())),
                    (jnp.asarray(s), *(jnp.asarray(v) for v in vecs)), order=1, modes=("rev",),
                    eps=1e-6)


@pytest.mark.parametrize("detach", [False, True])
def test_adaptive_gradient_matches_finite_differences_of_reference(detach):
    """Gradient w.r.t. scores and all four vectors vs central differences of the NumPy
    reference; with detach_weights=True the reference's weights are frozen at their values."""
    rng = np.random.default_rng(6)
    b = 5
    s, vecs = _inputs(rng, b)
    weights = ref.aoq_weights(s, vecs[0], vecs[1]) if detach else None
    flat0 = np.concatenate([s.ravel()] + vecs)

    def unpack(flat):
        sc = flat[: b * b].reshape(b, b)
        vs = [flat[b * b + k * b: b * b + (k + 1) * b] for k in range(4)]
        return sc, vs

    def fn(flat):
        sc, vs = unpack(flat)
        return ref.aoq_loss(sc, *vs, variant="adaptive", weights=weights)

    num = ref.numerical_grad(fn, flat0, h=1e-7)
    with jax.enable_x64(True):
        g = jax.jit(jax.grad(lambda sc, a, b_, c, d: losses.aoq_loss(sc, a, b_, c, d,
                                                                    detach_weights=detach),
                             argnums=(0, 1, 2, 3, 4)))(jnp.asarray(s),
                                                       *(jnp.asarray(v) for v in vecs))
    got = np.concatenate([np.asarray(x).ravel() for x in g])
    np.testing.assert_allclose(got, num, rtol=1e-5, atol=1e-6)


def test_detach_weights_changes_gradient_not_value():
    rng = np.random.default_rng(7)
    s, vecs = _inputs(rng, 6)
    with jax.enable_x64(True):
        args = (jnp.asarray(s), *(jnp.asarray(v) for v in vecs))

        def f(detach):
            return jax.value_and_grad(lambda *a: losses.aoq_loss(*a, detach_weights=detach),
                                      argnums=(0, 1, 2))

        (v0, g0), (v1, g1) = jax.jit(lambda *a: (f(False)(*a), f(True)(*a)))(*args)
    assert float(v0) == pytest.approx(float(v1), rel=1e-12)
    for k in range(3):
        assert not np.allclose(np.asarray(g0[k]), np.asarray(g1[k]), atol=1e-6)


# ------------------------------------------------------------------ 5. batch of 1, ties


def test_batch_of_one():
    """No in-batch negative: the online hinges (and their weighted forms) are 0; only the
    offline terms remain (all 0 for "online"). Gradients finite."""
    s = np.array([[0.5]])
    vecs = [np.array([0.6]), np.array([0.4]), np.array([0.55]), np.array([0.7])]
    want = [ref.aoq_loss(s, *vecs, variant=v) for v in VARIANTS]
    assert_close(want, [0.0, 0.1, 0.35, 0.35], rtol=1e-12)
    with jax.enable_x64(True):
        def f(variant):
            return jax.value_and_grad(
                lambda sc, a, b, c, d: losses.aoq_loss(sc, a, b, c, d, variant=variant),
                argnums=(0, 1, 2, 3, 4))

        out = jax.jit(lambda *a: [f(v)(*a) for v in VARIANTS])(
            jnp.asarray(s), *(jnp.asarray(v) for v in vecs))
    for (val, grads), w, variant in zip(out, want, VARIANTS):
        assert_close(val, w)
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g)))
            if variant == "online":
                assert np.all(np.asarray(g) == 0.0)


def test_ties():
    """Two hardest negatives tie in row 0 (and feed the adaptive weight); value matches."""
    s = np.array([[0.8, 0.75, -0.2, 0.75], [0.1, 0.9, 0.0, -0.3], [0.2, 0.3, 0.7, 0.1],
                  [-0.1, 0.0, 0.15, 0.85]])
    vecs = [np.diag(s) + d for d in ([0.1, -0.2, 0.05, -0.1], [-0.1, 0.1, -0.2, 0.02],
                                     [0.0, -0.3, 0.2, -0.05], [0.05, 0.05, -0.1, -0.1])]
    with jax.enable_x64(True):
        def f(x):
            vals = jnp.stack([losses.aoq_loss(x, *(jnp.asarray(v) for v in vecs), variant=v,
                                              margin_online=0.5) for v in VARIANTS])
            return jnp.sum(vals), vals

        (_, vals), g = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(s))
    assert_close(vals, [ref.aoq_loss(s, *vecs, variant=v, margin_online=0.5) for v in VARIANTS])
    assert np.all(np.isfinite(np.asarray(g)))


# ------------------------------------------------------------------ 6. low precision


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_low_precision_finite(dtype):
    rng = np.random.default_rng(8)
    s = rng.uniform(-1, 1, size=(16, 16))
    vecs = [rng.uniform(-1, 1, size=16) for _ in range(4)]
    args = (jnp.asarray(s, dtype), *(jnp.asarray(v, dtype) for v in vecs))

    def f(*a):
        vals = jnp.stack([losses.aoq_loss(*a, variant=v).astype(jnp.float32) for v in VARIANTS])
        return jnp.sum(vals), vals

    (_, vals), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4), has_aux=True))(
        *args)
    assert np.all(np.isfinite(np.asarray(vals)))
    for g in grads:
        assert g.dtype == dtype
        assert np.all(np.isfinite(np.asarray(g, np.float32)))


# ------------------------------------------------------------------ 7. jit / vmap


def test_jit_and_vmap():
    rng = np.random.default_rng(9)
    items = [_inputs(rng, 5) for _ in range(3)]
    ss = np.stack([it[0] for it in items])
    vs = [np.stack([it[1][k] for it in items]) for k in range(4)]
    variants = ["online", "adaptive"]
    with jax.enable_x64(True):
        def f(sc, a, b, c, d):
            return jnp.stack([losses.aoq_loss(sc, a, b, c, d, variant=v) for v in variants])

        eager = np.array([[float(losses.aoq_loss(jnp.asarray(ss[n]),
                                                 *(jnp.asarray(v[n]) for v in vs), variant=var))
                           for var in variants] for n in range(3)])
        jitted = jax.jit(f)(ss[0], *(v[0] for v in vs))
        vm = jax.jit(jax.vmap(f))(jnp.asarray(ss), *(jnp.asarray(v) for v in vs))
    assert_close(eager, [[ref.aoq_loss(ss[n], *(v[n] for v in vs), variant=var)
                          for var in variants] for n in range(3)])
    assert_close(jitted, eager[0], rtol=1e-12)
    assert_close(vm, eager, rtol=1e-12)


# ------------------------------------------------------------------ 8. errors


@pytest.mark.parametrize("case", ["vec_len", "vec_rank", "vec_none", "variant", "non_square",
                                  "scores_rank", "positives_shape"])
def test_value_errors(case):
    b = 4
    s = np.zeros((b, b))
    vecs = [np.zeros(b) for _ in range(4)]
    kw = {}
    if case == "vec_len":
        vecs[1] = np.zeros(b + 1)
    elif case == "vec_rank":
        vecs[3] = np.zeros((b, 1))
    elif case == "vec_none":
        vecs[2] = None
    elif case == "variant":
        kw["variant"] = "quintuplet"
    elif case == "non_square":
        s = np.zeros((b, b + 1))
    elif case == "scores_rank":
        s = np.zeros((b * b,))
    elif case == "positives_shape":
        kw["positives"] = jnp.eye(b + 1, dtype=bool)

    def f(sc, *vs):
        full = list(vs)
        if case == "vec_none":
            full.insert(2, None)
        return losses.aoq_loss(sc, *full, **kw)

    args = [jnp.asarray(s, jnp.float32)] + [jnp.asarray(v, jnp.float32) for v in vecs
                                             if v is not None]
    with pytest.raises(ValueError):
        jax.jit(f)(*args)
