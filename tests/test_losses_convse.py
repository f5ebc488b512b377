"""ConVSE family: contrastive_sum_negatives (CSN), contrastive_max_negative (CMN),
multimodal_nce (NCE).

Contract: docs/losses.md, "ConVSE" (with the multi-positive CSN form, non-square CSN with
explicit positives). References: tests/numpy_refs.py.
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


# ================================================================== CSN


@pytest.mark.parametrize("b", SIZES)
def test_csn_matches_reference(b):
    """tau 0.1 (default) / 0.05 / 1.0; positives None and the identity (same thing)."""
    rng = np.random.default_rng(b)
    s = ref.rand_scores(rng, b)
    taus = [0.1, 0.05, 1.0]
    want = [ref.contrastive_sum_negatives(s, tau) for tau in taus]
    with jax.enable_x64(True):
        got = jax.jit(lambda x: jnp.stack(
            [losses.contrastive_sum_negatives(x)]
            + [losses.contrastive_sum_negatives(x, tau=tau) for tau in taus]
            + [losses.contrastive_sum_negatives(x, positives=jnp.eye(b, dtype=bool))]))(
            jnp.asarray(s))
        assert got.dtype == jnp.float64
    assert_close(got, [want[0]] + want + [want[0]])


def test_csn_multi_positive_square():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 4, size=9)
    pos = ref.positives_from_ids(ids, ids)
    s = ref.rand_scores(rng, 9)
    taus = [0.1, 0.5]
    want = [ref.contrastive_sum_negatives(s, tau, pos) for tau in taus]
    for tau, w in zip(taus, want):
        assert abs(w - ref.contrastive_sum_negatives(s, tau)) > 1e-2
    with jax.enable_x64(True):
        def f(x, jids):
            p = losses.positives_from_ids(jids, jids)
            return jnp.stack([losses.contrastive_sum_negatives(x, tau=tau, positives=p)
                              for tau in taus])

        got = jax.jit(f)(jnp.asarray(s), jnp.asarray(ids))
    assert_close(got, want)


def test_csn_non_square_with_positives():
    """4 images x 10 captions; image 3 has no caption in the batch (its row is left out of the
    row mean); images 0 and 1 have four/three captions each. Also the transposed layout."""
    rng = np.random.default_rng(3)
    rows = np.array([0, 1, 2, 3])
    cols = np.array([0, 0, 1, 1, 1, 2, 0, 2, 1, 0])
    pos = ref.positives_from_ids(rows, cols)
    s = rng.uniform(-1, 1, size=(4, 10))
    want = [ref.contrastive_sum_negatives(s, 0.2, pos),
            ref.contrastive_sum_negatives(s.T, 0.2, pos.T)]
    with jax.enable_x64(True):
        got = jax.jit(lambda x, p: jnp.stack([
            losses.contrastive_sum_negatives(x, tau=0.2, positives=p),
            losses.contrastive_sum_negatives(x.T, tau=0.2, positives=p.T)]))(
            jnp.asarray(s), jnp.asarray(pos))
    assert_close(got, want)


def test_csn_hand_diagonal():
    # tau = 0.5, S = 0.5 * [[ln3, ln2], [0, 0]] -> S/tau = [[ln3, ln2], [0, 0]]
    # rows: row0 -log(3/5) = ln(5/3); row1 -log(1/2) = ln2 -> mean ln(10/3)/2
    # cols: col0 [ln3, 0] diag ln3 -> ln(4/3); col1 [ln2, 0] diag 0 -> ln3 -> mean ln4/2 = ln2
    # total = ln(10/3)/2 + ln2
    s = 0.5 * np.array([[math.log(3), math.log(2)], [0.0, 0.0]])
    with jax.enable_x64(True):
        got = jax.jit(lambda x: losses.contrastive_sum_negatives(x, tau=0.5))(jnp.asarray(s))
    assert float(got) == pytest.approx(math.log(10 / 3) / 2 + math.log(2), rel=1e-12)


def test_csn_hand_multi_positive():
    # 2 images x 3 captions, tau = 1, positives [[T, T, F], [F, F, T]],
    # S = [[0, 0, ln2], [0, ln3, 0]]:
    #  row0: exp = [1, 1, 2] (sum 4), positives j=0,1 -> mean(ln4, ln4) = ln4
    #  row1: exp = [1, 3, 1] (sum 5), positive j=2 -> ln5;          row mean = ln20 / 2
    #  col0: [0, 0] pos i=0 -> ln2; col1: [0, ln3] pos i=0 -> ln4; col2: [ln2, 0] pos i=1 -> ln3
    #  col mean = ln24 / 3; total = ln20/2 + ln24/3
    s = np.array([[0.0, 0.0, math.log(2)], [0.0, math.log(3), 0.0]])
    pos = np.array([[True, True, False], [False, False, True]])
    with jax.enable_x64(True):
        got = jax.jit(lambda x, p: losses.contrastive_sum_negatives(x, tau=1.0, positives=p))(
            jnp.asarray(s), jnp.asarray(pos))
    assert float(got) == pytest.approx(math.log(20) / 2 + math.log(24) / 3, rel=1e-12)


def test_csn_hand_row_without_positive():
    # 3 images x 2 captions, S = 0, tau = 1, positives [[T, F], [F, T], [F, F]]:
    #  rows 0, 1: ln2 each; row 2 has no positive and is left out -> row mean ln2
    #  cols: each column has 3 entries, one positive -> ln3 each -> col mean ln3
    #  total = ln6 (averaging row 2 in as 0 would give 2 ln2 / 3 + ln3)
    pos = np.array([[True, False], [False, True], [False, False]])
    with jax.enable_x64(True):
        got = jax.jit(lambda x, p: losses.contrastive_sum_negatives(x, tau=1.0, positives=p))(
            jnp.zeros((3, 2), jnp.float64), jnp.asarray(pos))
    assert float(got) == pytest.approx(math.log(6), rel=1e-12)


def test_csn_check_grads():
    rng = np.random.default_rng(4)
    s = ref.rand_scores(rng, 5)
    with jax.enable_x64(True):
        p = jnp.asarray(ref.positives_from_ids([0, 1, 0, 2, 1], [0, 1, 0, 2, 1]))
        check_grads(jax.jit(lambda x: losses.contrastive_sum_negatives(x, tau=0.3)
                            + 0.6 * losses.contrastive_sum_negatives(x, tau=0.5, positives=p)),
                    (jnp.asarray(s),), order=1, modes=("rev",), eps=1e-6)


def test_csn_duplicate_image_in_batch():
    """Pairs 0 and 2 share image 0, seen through two augmentations (rows close, not equal).
    With exactly identical rows the multi-positive CSN is provably unchanged (rows 0 and 2
    swap their two log-probabilities), so the test needs distinct rows to show the mask."""
    rng = np.random.default_rng(5)
    ids = np.array([0, 1, 0, 2, 3])
    img = ref.unit_rows(rng, 5, 8)
    img[2] = ref.noisy_copy(rng, img[:1], 0.3)[0]
    s = img @ ref.noisy_copy(rng, img).T
    pos = ref.positives_from_ids(ids, ids)
    want = ref.contrastive_sum_negatives(s, 0.1, pos)
    want_none = ref.contrastive_sum_negatives(s, 0.1)
    assert abs(want - want_none) > 0.05
    with jax.enable_x64(True):
        def f(x, jids):
            p = losses.positives_from_ids(jids, jids)
            return (losses.contrastive_sum_negatives(x, positives=p),
                    losses.contrastive_sum_negatives(x))

        got, got_none = jax.jit(f)(jnp.asarray(s), jnp.asarray(ids))
    assert_close(got, want)
    assert_close(got_none, want_none)


# ================================================================== CMN


@pytest.mark.parametrize("b", SIZES)
def test_cmn_matches_reference(b):
    """tau 0.1 / 0.05 x margin 0.2 / 0.5, and the defaults (tau 0.1, margin 0.2)."""
    rng = np.random.default_rng(10 + b)
    s = ref.rand_scores(rng, b, diag_boost=0.5)
    configs = [(tau, m) for tau in (0.1, 0.05) for m in (0.2, 0.5)]
    want = [ref.contrastive_max_negative(s, tau, m) for tau, m in configs]
    if b >= 5:
        rows, cols = ref.max_of_hinges_terms(s, 0.2)
        assert 0 < sum(v > 0 for v in rows + cols) < 2 * b
    with jax.enable_x64(True):
        got = jax.jit(lambda x: jnp.stack(
            [losses.contrastive_max_negative(x)]
            + [losses.contrastive_max_negative(x, tau=tau, margin=m) for tau, m in configs]))(
            jnp.asarray(s))
        assert got.dtype == jnp.float64
    assert_close(got, [want[0]] + want)


def test_cmn_equals_max_of_hinges_over_tau_b():
    """Spec L105: CMN = MH(sum) / (tau * B), with and without id positives."""
    rng = np.random.default_rng(12)
    s = ref.rand_scores(rng, 8)
    ids = [0, 1, 0, 2, 3, 1, 4, 5]
    pos = ref.positives_from_ids(ids, ids)
    with jax.enable_x64(True):
        def f(x, p):
            out = []
            for q in (None, p):
                mh = losses.max_of_hinges(x, margin=0.3, positives=q)
                for tau in (0.1, 0.03):
                    out.append(losses.contrastive_max_negative(x, tau=tau, margin=0.3,
                                                               positives=q))
                    out.append(mh / (tau * 8))
            return jnp.stack(out)

        jf = jax.jit(f)
        got = np.asarray(jf(jnp.asarray(s), jnp.asarray(pos)))
        # every entry positive: no anchor has a negative -> CMN = MH = 0
        got_all = np.asarray(jf(jnp.asarray(s), jnp.ones((8, 8), dtype=bool)))
    assert_close(got[0::2], got[1::2], rtol=1e-12)
    assert_close(got[0::2], [ref.contrastive_max_negative(s, tau, 0.3, q)
                             for q in (None, pos) for tau in (0.1, 0.03)])
    assert np.all(got_all[4:] == 0.0)  # (the first four entries use positives=None)
    assert_close(got_all[:4], got[:4], rtol=1e-12)


def test_cmn_hand():
    # S3 = [[0.9, 0.8, 0.35], [0.2, 0.7, 0.6], [0.75, 0.1, 0.5]], margin 0.2, tau 0.1:
    # row hinges 0.1, 0.1, 0.45 -> /tau: 1, 1, 4.5 -> mean 6.5/3
    # col hinges 0.05, 0.3, 0.3 -> 0.5, 3, 3 -> mean 6.5/3; total 13/3
    with jax.enable_x64(True):
        got = jax.jit(lambda x: losses.contrastive_max_negative(x, tau=0.1))(
            jnp.asarray([[0.9, 0.8, 0.35], [0.2, 0.7, 0.6], [0.75, 0.1, 0.5]]))
    assert float(got) == pytest.approx(13 / 3, rel=1e-12)


def test_cmn_check_grads():
    s = ref.rand_scores(np.random.default_rng(13), 6)
    with jax.enable_x64(True):
        check_grads(jax.jit(lambda x: losses.contrastive_max_negative(x, tau=0.2)),
                    (jnp.asarray(s),), order=1, modes=("rev",), eps=1e-6)


def test_cmn_ties_gradient_mass():
    s = np.array([[0.8, 0.75, -0.2, 0.75], [0.1, 0.9, 0.0, -0.3], [0.2, 0.3, 0.7, 0.1],
                  [-0.1, 0.0, 0.15, 0.85]])
    tau, margin = 0.1, 0.5
    rows, cols = ref.max_of_hinges_terms(s, margin)
    with jax.enable_x64(True):
        val, g = jax.jit(jax.value_and_grad(
            lambda x: losses.contrastive_max_negative(x, tau=tau, margin=margin)))(
            jnp.asarray(s))
    g = np.asarray(g)
    assert_close(val, ref.contrastive_max_negative(s, tau, margin))
    unit = 1.0 / (tau * 4)
    n_active = sum(v > 0 for v in rows) + sum(v > 0 for v in cols)
    for k in range(4):
        assert g[k, k] == pytest.approx(-unit * (int(rows[k] > 0) + int(cols[k] > 0)), abs=1e-9)
    off = ~np.eye(4, dtype=bool)
    assert g[off].sum() == pytest.approx(unit * n_active, abs=1e-9)
    assert np.all(g[off] >= -1e-12)


def test_cmn_duplicate_image_in_batch():
    rng = np.random.default_rng(14)
    ids = np.array([0, 1, 0, 2, 3])
    img = ref.unit_rows(rng, 5, 8)
    img[2] = img[0]
    s = img @ ref.noisy_copy(rng, img).T
    pos = ref.positives_from_ids(ids, ids)
    want = ref.contrastive_max_negative(s, 0.1, 0.2, pos)
    want_none = ref.contrastive_max_negative(s, 0.1, 0.2)
    assert want_none - want > 0.05
    with jax.enable_x64(True):
        got = jax.jit(lambda x, p: losses.contrastive_max_negative(x, positives=p))(
            jnp.asarray(s), jnp.asarray(pos))
    assert_close(got, want)


# ================================================================== NCE


@pytest.mark.parametrize("b", SIZES)
def test_nce_matches_reference(b):
    rng = np.random.default_rng(20 + b)
    img = ref.unit_rows(rng, b, 8)
    txt = ref.noisy_copy(rng, img)
    taus = [0.1, 0.5]
    want = [ref.multimodal_nce(img, txt, tau) for tau in taus]
    with jax.enable_x64(True):
        got = jax.jit(lambda a, t: jnp.stack([losses.multimodal_nce(a, t, tau=tau)
                                              for tau in taus]))(jnp.asarray(img),
                                                                 jnp.asarray(txt))
        assert got.dtype == jnp.float64
    assert_close(got, want)


def test_nce_defaults_and_no_normalisation():
    """Rows of random norms: the loss uses the dot products as given (no normalising)."""
    rng = np.random.default_rng(21)
    img = rng.normal(size=(6, 5)) * 0.4
    txt = rng.normal(size=(6, 5)) * 0.4
    want = ref.multimodal_nce(img, txt, 0.1)
    assert abs(want - ref.multimodal_nce(ref.l2_normalize_rows(img),
                                         ref.l2_normalize_rows(txt), 0.1)) > 0.1
    with jax.enable_x64(True):
        got = jax.jit(losses.multimodal_nce)(jnp.asarray(img), jnp.asarray(txt))
    assert_close(got, want)


def test_nce_hand():
    e = math.e
    with jax.enable_x64(True):
        i2 = jnp.eye(2, dtype=jnp.float64)
        # z = [e1, e2, e1, e2], tau = 0.5: each anchor's partner logit 2, other logits {0, 2, 0}
        # -> log(2 + e^2) - 2 for all four anchors
        got_same = jax.jit(lambda a, t: losses.multimodal_nce(a, t, tau=0.5))(i2, i2)
        f1 = jax.jit(lambda a, t: losses.multimodal_nce(a, t, tau=1.0))
        # txt = [e2, e1], tau = 1: partner logit 0, other logits {0, 0, 1} -> log(2 + e)
        got_swap = f1(i2, i2[::-1])
        # img = [2 e1, e2], txt = I, tau = 1: anchors 0 and 2 -> log(2 + e^2) - 2,
        # anchors 1 and 3 -> log(2 + e) - 1; mean over 4 anchors
        got_scaled = f1(jnp.asarray([[2.0, 0.0], [0.0, 1.0]]), i2)
    assert float(got_same) == pytest.approx(math.log(2 + e**2) - 2, rel=1e-12)
    assert float(got_swap) == pytest.approx(math.log(2 + e), rel=1e-12)
    assert float(got_scaled) == pytest.approx(
        (math.log(2 + e**2) - 2 + math.log(2 + e) - 1) / 2, rel=1e-12)


def test_nce_check_grads():
    rng = np.random.default_rng(22)
    img = rng.normal(size=(4, 3))
    txt = rng.normal(size=(4, 3))
    with jax.enable_x64(True):
        check_grads(jax.jit(lambda a, t: losses.multimodal_nce(a, t, tau=0.5)),
                    (jnp.asarray(img), jnp.asarray(txt)), order=1, modes=("rev",), eps=1e-6)


def test_nce_ties():
    # two identical captions: equal logits everywhere they appear; value must match
    rng = np.random.default_rng(23)
    img = ref.unit_rows(rng, 4, 6)
    txt = ref.noisy_copy(rng, img)
    txt[3] = txt[1]
    with jax.enable_x64(True):
        got = jax.jit(lambda a, t: losses.multimodal_nce(a, t, tau=0.1))(jnp.asarray(img),
                                                                         jnp.asarray(txt))
    assert_close(got, ref.multimodal_nce(img, txt, 0.1))


# ================================================================== shared: B=1, precision, jit


def _call(name, s, **kw):
    if name == "csn":
        return losses.contrastive_sum_negatives(s, **kw)
    if name == "cmn":
        return losses.contrastive_max_negative(s, **kw)
    raise AssertionError(name)


def test_batch_of_one():
    with jax.enable_x64(True):
        def f(x, a, t):
            vals = jnp.stack([_call("csn", x, tau=0.1), _call("cmn", x, tau=0.1),
                              losses.multimodal_nce(a, t, tau=0.1)])
            return jnp.sum(vals), vals

        (_, vals), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(
            jnp.asarray([[0.7]], dtype=jnp.float64), jnp.asarray([[0.6, 0.8]]),
            jnp.asarray([[1.0, 0.0]]))
    assert_close(vals, 0.0, atol=1e-12)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
        assert np.allclose(np.asarray(g), 0.0, atol=1e-9)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_low_precision_peaked(dtype):
    """Scores in [-1, 1] with one entry per row at 1 and unit embeddings, tau = 0.01 (bfloat16,
    float32) and 0.001 (float32): exp(S/tau) overflows float32 naively. Values and gradients
    finite; values close to the float64 reference on the same (rounded) inputs."""
    rng = np.random.default_rng(30)
    s = rng.uniform(-1.0, 1.0, size=(16, 16))
    s[np.arange(16), rng.permutation(16)] = 1.0
    img = ref.unit_rows(rng, 16, 32)
    txt = ref.noisy_copy(rng, img)
    taus = (0.01, 0.001) if dtype == jnp.float32 else (0.01,)

    def f(x, a, t):
        vals = jnp.stack([v.astype(jnp.float32) for tau in taus for v in (
            _call("csn", x, tau=tau), _call("cmn", x, tau=tau),
            losses.multimodal_nce(a, t, tau=tau))])
        return jnp.sum(vals * jnp.asarray([1.0, 0.5, 0.25] * len(taus))), vals

    args = tuple(jnp.asarray(v, dtype) for v in (s, img, txt))
    (_, vals), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(*args)
    vals = np.asarray(vals)
    assert np.all(np.isfinite(vals))
    for g in grads:
        assert g.dtype == dtype
        assert np.all(np.isfinite(np.asarray(g, np.float32)))
    s64, i64, t64 = (np.asarray(a, np.float64) for a in args)
    want = [w for tau in taus for w in (ref.contrastive_sum_negatives(s64, tau),
                                        ref.contrastive_max_negative(s64, tau, 0.2),
                                        ref.multimodal_nce(i64, t64, tau))]
    if dtype == jnp.float32:
        assert_close(vals, want, rtol=1e-4, atol=1e-2)
    else:
        assert_close(vals, want, rtol=5e-2, atol=0.5)


@pytest.mark.parametrize("name", ["csn", "cmn"])
def test_jit_and_vmap_scores(name):
    rng = np.random.default_rng(40)
    stack = np.stack([ref.rand_scores(rng, 6) for _ in range(3)])
    ids = np.array([[0, 1, 0, 2, 3, 4], [0, 1, 2, 3, 4, 5], [1, 1, 1, 2, 2, 3]])
    pos = np.stack([ref.positives_from_ids(i, i) for i in ids])
    with jax.enable_x64(True):
        f = lambda x: _call(name, x, tau=0.2)  # noqa: E731
        fp = lambda x, p: _call(name, x, tau=0.2, positives=p)  # noqa: E731
        eager = np.array([float(f(jnp.asarray(m))) for m in stack])
        eager_p = np.array([float(fp(jnp.asarray(m), jnp.asarray(p))) for m, p in zip(stack, pos)])
        jitted = jax.jit(f)(stack[0])
        vm = jax.jit(jax.vmap(f))(jnp.asarray(stack))
        vm_p = jax.jit(jax.vmap(fp))(jnp.asarray(stack), jnp.asarray(pos))
    assert_close(jitted, eager[0], rtol=1e-12)
    assert_close(vm, eager, rtol=1e-12)
    assert_close(vm_p, eager_p, rtol=1e-12)
    assert not np.allclose(eager, eager_p)


def test_nce_jit_and_vmap():
    rng = np.random.default_rng(41)
    imgs = np.stack([ref.unit_rows(rng, 5, 4) for _ in range(3)])
    txts = np.stack([ref.unit_rows(rng, 5, 4) for _ in range(3)])
    with jax.enable_x64(True):
        f = lambda a, t: losses.multimodal_nce(a, t, tau=0.2)  # noqa: E731
        eager = np.array([float(f(jnp.asarray(imgs[k]), jnp.asarray(txts[k])))
                          for k in range(3)])
        jitted = jax.jit(f)(imgs[0], txts[0])
        vm = jax.jit(jax.vmap(f))(jnp.asarray(imgs), jnp.asarray(txts))
    assert_close(eager, [ref.multimodal_nce(imgs[k], txts[k], 0.2) for k in range(3)])
    assert_close(jitted, eager[0], rtol=1e-12)
    assert_close(vm, eager, rtol=1e-12)


@pytest.mark.parametrize("case", ["non_square", "rank1", "rank3", "positives_shape"])
@pytest.mark.parametrize("name", ["csn", "cmn"])
def test_value_errors_scores(name, case):
    s = {"non_square": np.zeros((3, 4)), "rank1": np.zeros((4,)),
         "rank3": np.zeros((2, 4, 4))}.get(case, np.zeros((4, 4)))
    kw = {}
    if case == "positives_shape":
        kw["positives"] = jnp.eye(3, dtype=bool)
    with pytest.raises(ValueError):
        jax.jit(lambda x: _call(name, x, **kw))(jnp.asarray(s, jnp.float32))


def test_cmn_non_square_with_positives_raises():
    """CMN needs the diagonal (S_ii) even when positives are given."""
    with pytest.raises(ValueError):
        jax.jit(lambda x: losses.contrastive_max_negative(x, positives=jnp.ones((3, 4), bool)))(
            jnp.zeros((3, 4), jnp.float32))


@pytest.mark.parametrize("case", ["rows", "dims", "rank"])
def test_nce_value_errors(case):
    img, txt = np.ones((4, 3)), np.ones((4, 3))
    if case == "rows":
        txt = np.ones((5, 3))
    elif case == "dims":
        txt = np.ones((4, 2))
    elif case == "rank":
        img, txt = np.ones((4,)), np.ones((4,))
    with pytest.raises(ValueError):
        jax.jit(losses.multimodal_nce)(jnp.asarray(img, jnp.float32),
                                       jnp.asarray(txt, jnp.float32))
