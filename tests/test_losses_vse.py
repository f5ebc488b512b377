"""VSE family: sum_of_hinges (SH), max_of_hinges (MH) and positives_from_ids.

Contract: docs/losses.md, "Conventions" and "VSE". References: tests/numpy_refs.py (loops,
float64).

Compilation dominates the run time on CPU, so several configurations are evaluated inside one
jitted function where that loses nothing (each configuration is still compared on its own).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import numpy_refs as ref
from itm_jax import losses

LOSSES = {
    "sum_of_hinges": (losses.sum_of_hinges, ref.sum_of_hinges),
    "max_of_hinges": (losses.max_of_hinges, ref.max_of_hinges),
}
NAMES = list(LOSSES)
SIZES = [1, 2, 5, 17]
# (margin, reduction, use id positives) evaluated for every size
CONFIGS = [(m, r, p) for m in (0.2, 0.5) for r in ("sum", "mean") for p in (False, True)]


def assert_close(got, want, rtol=1e-6, atol=1e-9):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ 1. reference, float64


@pytest.mark.parametrize("b", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_matches_reference(name, b):
    """Margins 0.2/0.5 x reductions sum/mean x positives None / from ids, one size."""
    fn, reference = LOSSES[name]
    rng = np.random.default_rng(1000 * b + len(name))
    s = ref.rand_scores(rng, b)
    ids = rng.integers(0, max(1, b // 2), size=b)  # duplicates for b >= 4
    pos = ref.positives_from_ids(ids, ids)
    want = [reference(s, m, pos if p else None, r) for m, r, p in CONFIGS]
    if b >= 5:  # inputs exercise both sides of the hinge, and the mask matters
        a, bb = ref.vse_hinges(s, 0.2)
        active = int((a > 0).sum() + (bb > 0).sum())
        assert 0 < active < 2 * b * (b - 1)
        assert abs(want[0] - want[1]) > 1e-2
    with jax.enable_x64(True):
        def all_configs(x, p):
            default = fn(x)  # margin=0.2, positives=None, reduction="sum"
            assert default.shape == ()
            return jnp.stack([default] + [
                fn(x, margin=m, positives=p if use else None, reduction=r)
                for m, r, use in CONFIGS])

        got = jax.jit(all_configs)(jnp.asarray(s), jnp.asarray(pos))
        assert got.dtype == jnp.float64
    assert_close(got, [reference(s, 0.2, None, "sum")] + want)


@pytest.mark.parametrize("name", NAMES)
def test_eye_positives_equal_none_and_ids_helper(name):
    fn, reference = LOSSES[name]
    rng = np.random.default_rng(3)
    s = ref.rand_scores(rng, 6)
    ids = np.array([0, 1, 0, 2, 1, 3])
    with jax.enable_x64(True):
        def f(x, jids):
            return jnp.stack([fn(x), fn(x, positives=jnp.eye(6, dtype=bool)),
                              fn(x, positives=losses.positives_from_ids(jids, jids))])

        got = jax.jit(f)(jnp.asarray(s), jnp.asarray(ids))
    assert_close(got[1], float(got[0]), rtol=1e-12)
    assert_close(got[0], reference(s, 0.2, None, "sum"))
    assert_close(got[2], reference(s, 0.2, ref.positives_from_ids(ids, ids), "sum"))


# ------------------------------------------------------------------ 3. hand-computed cases

# 2x2, m = 0.2, S = [[0.5, 0.45], [0.1, 0.6]]:
#   a_01 = [0.2 + 0.45 - 0.5]_+ = 0.15, a_10 = [0.2 + 0.1 - 0.6]_+ = 0
#   b_01 = [0.2 + 0.45 - 0.6]_+ = 0.05 (caption 1 anchor), b_10 = [0.2 + 0.1 - 0.5]_+ = 0
#   SH = MH = 0.2 (sum); mean = 0.15/2 + 0.05/2 = 0.1
S2 = [[0.5, 0.45], [0.1, 0.6]]
# 3x3, m = 0.2, S = [[0.9, 0.8, 0.35], [0.2, 0.7, 0.6], [0.75, 0.1, 0.5]]:
#   rows (anchor S_ii):  row0: 0.1, 0      row1: 0, 0.1      row2: 0.45, 0
#   cols (anchor S_jj):  col0 (0.9): i=1 0, i=2 0.05; col1 (0.7): i=0 0.3, i=2 0;
#                        col2 (0.5): i=0 0.05, i=1 0.3
#   SH = (0.1 + 0.1 + 0.45) + (0.05 + 0.3 + 0.35) = 1.35; mean = 0.65/3 + 0.7/3 = 0.45
#   MH = (0.1 + 0.1 + 0.45) + (0.05 + 0.3 + 0.3) = 1.3;   mean = 1.3/3
# With positives[1, 2] = True (caption 2 also describes image 1): row1 keeps only j=0 (0),
#   col2 keeps only i=0 (0.05): SH = MH = (0.1 + 0 + 0.45) + (0.05 + 0.3 + 0.05) = 0.95
S3 = [[0.9, 0.8, 0.35], [0.2, 0.7, 0.6], [0.75, 0.1, 0.5]]
POS3 = [[True, False, False], [False, True, True], [False, False, True]]


def test_hand_computed():
    with jax.enable_x64(True):
        def f(x):
            return jnp.stack([losses.sum_of_hinges(x, reduction="sum"),
                              losses.max_of_hinges(x, reduction="sum"),
                              losses.sum_of_hinges(x, reduction="mean"),
                              losses.max_of_hinges(x, reduction="mean")])

        got2 = jax.jit(f)(jnp.asarray(S2, dtype=jnp.float64))
        got3 = jax.jit(f)(jnp.asarray(S3, dtype=jnp.float64))
        p = jnp.asarray(POS3)
        got3p = jax.jit(lambda x: jnp.stack([losses.sum_of_hinges(x, positives=p),
                                             losses.max_of_hinges(x, positives=p)]))(
            jnp.asarray(S3, dtype=jnp.float64))
    assert_close(got2, [0.2, 0.2, 0.1, 0.1], rtol=1e-12, atol=1e-12)
    assert_close(got3, [1.35, 1.3, 0.45, 1.3 / 3], rtol=1e-12, atol=1e-12)
    assert_close(got3p, [0.95, 0.95], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ 2. gradients


@pytest.mark.parametrize("name", NAMES)
def test_check_grads(name):
    """One check over a weighted sum of configurations (sum/mean, positives None / ids)."""
    fn, _ = LOSSES[name]
    rng = np.random.default_rng(11)
    s = ref.rand_scores(rng, 6)
    ids = [0, 1, 0, 2, 3, 1]
    with jax.enable_x64(True):
        p = jnp.asarray(ref.positives_from_ids(ids, ids))

        def f(x):
            return (fn(x, margin=0.2) + 0.7 * fn(x, margin=0.3, positives=p, reduction="mean")
                    - 0.3 * fn(x, margin=0.1, positives=p))

        check_grads(jax.jit(f), (jnp.asarray(s),), order=1, modes=("rev",), eps=1e-6)


def test_sum_of_hinges_exact_gradient():
    """dSH/dS_ij = 1[a_ij > 0] + 1[b_ij > 0] on negatives; dSH/dS_kk = -(active hinges that
    use S_kk as their anchor score). Derived from the documented formula, not from autodiff."""
    rng = np.random.default_rng(12)
    b = 7
    s = ref.rand_scores(rng, b)
    ids = [0, 1, 2, 0, 3, 1, 4]
    configs = [(False, "sum"), (True, "sum"), (False, "mean"), (True, "mean")]
    expected = []
    for with_pos, reduction in configs:
        pos = ref.positives_from_ids(ids, ids) if with_pos else None
        a, bb = ref.vse_hinges(s, 0.2, pos)
        e = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                if a[i, j] > 0:
                    e[i, j] += 1.0
                    e[i, i] -= 1.0
                if bb[i, j] > 0:
                    e[i, j] += 1.0
                    e[j, j] -= 1.0
        expected.append(e / b if reduction == "mean" else e)
    with jax.enable_x64(True):
        p = jnp.asarray(ref.positives_from_ids(ids, ids))
        grads = jax.jit(lambda x: [
            jax.grad(lambda y: losses.sum_of_hinges(y, positives=p if wp else None,
                                                    reduction=r))(x)
            for wp, r in configs])(jnp.asarray(s))
    for g, e in zip(grads, expected):
        assert_close(g, e, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ 4. duplicate image


def test_duplicate_image_in_batch():
    """Pairs 0 and 2 share image 0 (identical image rows -> identical score rows)."""
    rng = np.random.default_rng(21)
    ids = np.array([0, 1, 0, 2, 3])
    img = ref.unit_rows(rng, 5, 8)
    img[2] = img[0]
    txt = ref.noisy_copy(rng, img)  # caption 2 is another caption of image 0
    s = img @ txt.T
    pos = ref.positives_from_ids(ids, ids)
    configs = [(name, r) for name in NAMES for r in ("sum", "mean")]
    want = [LOSSES[n][1](s, 0.2, pos, r) for n, r in configs]
    want_none = [LOSSES[n][1](s, 0.2, None, r) for n, r in configs]
    # with pos=None, caption 0 sees image 2 (same image, same score as its own) as a negative:
    # hinge m + S_20 - S_00 = m > 0, so the two values must differ.
    assert np.all(np.array(want_none) - np.array(want) > 0.05)
    with jax.enable_x64(True):
        def f(x, jids):
            p = losses.positives_from_ids(jids, jids)
            return jnp.stack([LOSSES[n][0](x, positives=p, reduction=r) for n, r in configs]
                             + [LOSSES[n][0](x, reduction=r) for n, r in configs])

        got = jax.jit(f)(jnp.asarray(s), jnp.asarray(ids))
    assert_close(got[:4], want)
    assert_close(got[4:], want_none)


# ------------------------------------------------------------------ 5. batch of 1, ties


def test_batch_of_one():
    configs = [(n, r) for n in NAMES for r in ("sum", "mean")]
    with jax.enable_x64(True):
        s = jnp.asarray([[0.3]], dtype=jnp.float64)
        vals, grads = jax.jit(lambda x: (
            jnp.stack([LOSSES[n][0](x, reduction=r) for n, r in configs]),
            [jax.grad(lambda y: LOSSES[n][0](y, reduction=r))(x) for n, r in configs]))(s)
    assert np.all(np.asarray(vals) == 0.0)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
        assert np.all(np.asarray(g) == 0.0)


def _tied_scores():
    rng = np.random.default_rng(31)
    s = rng.uniform(-0.5, 0.3, size=(5, 5))
    s[np.arange(5), np.arange(5)] = [0.8, 0.9, 0.7, 0.85, 0.6]
    s[0, 1] = s[0, 3] = 0.75  # row 0: two hardest negatives tie, hinge active (0.15)
    s[2, 4] = s[3, 4] = 0.55  # column 4: two hardest negatives tie, hinge active (0.15)
    # larger, unique maxima for columns 1 and 3 and row 2, so the tied entries above are the
    # maximisers of exactly one active hinge each (row 0 resp. column 4)
    s[2, 1] = 0.85  # row 2 hinge 0.35, column 1 hinge 0.15
    s[4, 3] = 0.8  # row 4 hinge 0.4, column 3 hinge 0.15
    return s


@pytest.mark.parametrize("with_pos", [False, True])
def test_max_of_hinges_ties(with_pos):
    """Value matches; gradient is checked only through tie-routing-independent quantities."""
    s = _tied_scores()
    pos = None
    if with_pos:
        pos = np.eye(5, dtype=bool)
        pos[1, 0] = True  # caption 0 also describes image 1 (not a tie participant)
    want = ref.max_of_hinges(s, 0.2, pos)
    rows, cols = ref.max_of_hinges_terms(s, 0.2, pos)
    row_max, col_max = ref.hardest_negatives(s, pos)
    with jax.enable_x64(True):
        p = None if pos is None else jnp.asarray(pos)
        val, g = jax.jit(jax.value_and_grad(lambda x: losses.max_of_hinges(x, positives=p)))(
            jnp.asarray(s))
    g = np.asarray(g)
    assert_close(val, want)
    n_active = sum(r > 0 for r in rows) + sum(c > 0 for c in cols)
    assert n_active >= 2
    allowed = np.zeros((5, 5), dtype=bool)  # entries that are a maximiser of an active hinge
    for k in range(5):
        assert g[k, k] == pytest.approx(-(int(rows[k] > 0) + int(cols[k] > 0)), abs=1e-12)
        for j in range(5):
            if j != k and rows[k] > 0 and s[k, j] == row_max[k]:
                allowed[k, j] = True
            if j != k and cols[k] > 0 and s[j, k] == col_max[k]:
                allowed[j, k] = True
    off = ~np.eye(5, dtype=bool)
    assert np.all(g[off & ~allowed] == 0.0)
    assert np.all(g[allowed] >= -1e-12)
    assert g[off].sum() == pytest.approx(n_active, abs=1e-12)
    # each tied pair receives exactly the unit gradient of its hinge in total
    assert g[0, 1] + g[0, 3] == pytest.approx(1.0, abs=1e-12)
    assert g[2, 4] + g[3, 4] == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------ 6. low precision


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_low_precision_finite(dtype):
    s = np.random.default_rng(41).uniform(-1.0, 1.0, size=(16, 16))
    x = jnp.asarray(s, dtype=dtype)
    vals, grads = jax.jit(lambda v: (
        jnp.stack([fn(v).astype(jnp.float32) for fn, _ in LOSSES.values()]),
        [jax.grad(fn)(v) for fn, _ in LOSSES.values()]))(x)
    s_in = np.asarray(x, dtype=np.float64)
    for k, (_, reference) in enumerate(LOSSES.values()):
        assert np.isfinite(float(vals[k]))
        assert np.all(np.isfinite(np.asarray(grads[k], dtype=np.float32)))
        assert grads[k].dtype == dtype
        rtol = 5e-2 if dtype == jnp.bfloat16 else 1e-5
        assert_close(float(vals[k]), reference(s_in, 0.2, None, "sum"), rtol=rtol, atol=1e-3)


# ------------------------------------------------------------------ 7. jit / vmap


@pytest.mark.parametrize("name", NAMES)
def test_jit_and_vmap(name):
    fn, _ = LOSSES[name]
    rng = np.random.default_rng(51)
    stack = np.stack([ref.rand_scores(rng, 6) for _ in range(3)])
    ids = np.array([[0, 1, 0, 2, 3, 4], [0, 1, 2, 3, 4, 5], [1, 1, 1, 2, 2, 3]])
    pos = np.stack([ref.positives_from_ids(i, i) for i in ids])
    with jax.enable_x64(True):
        def f(x, p):
            return jnp.stack([fn(x, margin=0.3, reduction="mean"),
                              fn(x, margin=0.3, positives=p)])

        eager = np.array([[float(fn(jnp.asarray(m), margin=0.3, reduction="mean")),
                           float(fn(jnp.asarray(m), margin=0.3, positives=jnp.asarray(p)))]
                          for m, p in zip(stack, pos)])
        jitted = jax.jit(f)(jnp.asarray(stack[1]), jnp.asarray(pos[1]))
        vm = jax.jit(jax.vmap(f))(jnp.asarray(stack), jnp.asarray(pos))
    assert_close(jitted, eager[1], rtol=1e-12)
    assert_close(vm, eager, rtol=1e-12)
    assert not np.allclose(eager[:, 0] * 6, eager[:, 1])  # the positives really differ
    assert_close(eager[:, 0], [LOSSES[name][1](m, 0.3, None, "mean") for m in stack])


# ------------------------------------------------------------------ 8. errors


@pytest.mark.parametrize("case", ["non_square", "rank1", "rank3", "positives_shape",
                                  "reduction"])
@pytest.mark.parametrize("name", NAMES)
def test_value_errors(name, case):
    fn, _ = LOSSES[name]
    scores = {"non_square": np.zeros((3, 4)), "rank1": np.zeros((4,)),
              "rank3": np.zeros((2, 4, 4))}.get(case, np.zeros((4, 4)))
    kwargs = {}
    if case == "positives_shape":
        kwargs["positives"] = jnp.eye(3, dtype=bool)
    if case == "reduction":
        kwargs["reduction"] = "max"
    with pytest.raises(ValueError) as err:
        jax.jit(lambda x: fn(x, **kwargs))(jnp.asarray(scores, dtype=jnp.float32))
    if case == "non_square":
        assert "3" in str(err.value) and "4" in str(err.value)


# ------------------------------------------------------------------ positives_from_ids


def test_positives_from_ids():
    rows = np.array([3, 1, 3])
    cols = np.array([3, 2, 1, 3])
    expected = np.array([[1, 0, 0, 1], [0, 0, 1, 0], [1, 0, 0, 1]], dtype=bool)
    got = losses.positives_from_ids(jnp.asarray(rows), jnp.asarray(cols))
    assert got.shape == (3, 4)
    assert got.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(got), expected)
    np.testing.assert_array_equal(np.asarray(got), ref.positives_from_ids(rows, cols))
    # 2**24 and 2**24 + 1 are equal once cast to float32; ids must compare as integers.
    ids = np.array([2**24, 2**24 + 1, 100000, 100001, 4096, 4097], dtype=np.int32)
    got = jax.jit(losses.positives_from_ids)(jnp.asarray(ids), jnp.asarray(ids))
    np.testing.assert_array_equal(np.asarray(got), np.eye(6, dtype=bool))
