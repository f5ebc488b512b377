"""IMC (intra-modal constraint) loss.

Contract: docs/losses.md, "IMC" (positives are passed to the MH term, lam is applied once in
both variants, the paper variant's cosine distance is 1 - v_n . v_m).
References: tests/numpy_refs.py (`imc`, `imc_term`, loops in float64).

Compilation dominates the CPU run time, so the configurations of one test are evaluated inside
one jitted function (each configuration is still compared on its own).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import numpy_refs as ref
from itm_jax import losses

DELTAS = ["cosine", "l1", "l2", "msd"]
VARIANTS = ["reference", "paper"]
COMBOS = [(v, d) for v in VARIANTS for d in DELTAS]
SIZES = [1, 2, 5, 17]


def assert_close(got, want, rtol=1e-6, atol=1e-9):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


def half_up(v):
    return int(math.floor(v + 0.5))


def _embeddings(rng, b, d=8):
    """{"cosine": (img, txt), "other": (img, txt)}: unit rows (the loss is fed L2-normalised
    rows, see docs/losses.md); for cosine they are clustered so that cosines fall on both sides
    of 0.5 and 0.95."""
    return {"cosine": (ref.clustered_unit_rows(rng, b, d), ref.clustered_unit_rows(rng, b, d)),
            "other": (ref.unit_rows(rng, b, d), ref.unit_rows(rng, b, d))}


def _pick(embs, delta):
    return embs["cosine" if delta == "cosine" else "other"]


def _mus(img, txt, delta, variant):
    """Thresholds: the defaults for the reference variant (its thresholds come from the data);
    for the paper variant the quartiles of the batch's plain distances (between unit rows,
    L1/L2/MSD distances are mostly > 0.5), so the 1[mu_down < delta < mu_up] mask keeps some
    pairs only. The paper variant's default thresholds are covered by the hand cases."""
    if variant == "reference":
        return 0.05, 0.5
    vals = []
    for x in (img, txt):
        dist = ref.pairwise_distances(x, delta)
        vals.extend(dist[~np.eye(len(x), dtype=bool)].tolist())
    u = np.unique(np.round(vals, 12))
    if len(u) < 2:
        return 0.05, 0.5
    # midpoints between neighbouring distinct distances (never on a data value, where an
    # ulp of difference in how the distance is computed would flip the strict comparison)
    lo = len(u) // 4
    hi = min(max(3 * len(u) // 4, lo), len(u) - 2)
    mu_down = u[0] / 2 if lo == 0 else (u[lo - 1] + u[lo]) / 2
    mu_up = (u[hi] + u[hi + 1]) / 2
    return float(mu_down), float(mu_up)


def _jax_embs(embs):
    return {k: (jnp.asarray(v[0]), jnp.asarray(v[1])) for k, v in embs.items()}


# ------------------------------------------------------------------ 1. reference, float64


@pytest.mark.parametrize("b", SIZES)
def test_matches_reference(b):
    """All variant x delta combinations (lam=0.7, margin=0.25), the defaults, and id
    positives for two combinations, at one batch size."""
    rng = np.random.default_rng(100 + b)
    s = ref.rand_scores(rng, b)
    embs = _embeddings(rng, b)
    ids = rng.integers(0, max(1, b // 2), size=b)
    pos = ref.positives_from_ids(ids, ids)
    configs = []  # (variant, delta, kwargs, use_pos)
    for variant, delta in COMBOS:
        img, txt = _pick(embs, delta)
        mu_down, mu_up = _mus(img, txt, delta, variant)
        configs.append((variant, delta, dict(margin=0.25, lam=0.7, delta=delta,
                                             mu_down=mu_down, mu_up=mu_up, variant=variant),
                        False))
    configs.append(("reference", "l1", {}, False))  # all defaults (delta="l1")
    configs.append(("reference", "l1", dict(delta="l1"), True))
    configs.append(("paper", "cosine", dict(delta="cosine", variant="paper"), True))
    want = [ref.imc(s, *_pick(embs, d), positives=pos if p else None, **kw)
            for _, d, kw, p in configs]

    if b >= 5:  # the masks keep some pairs and drop others in both modalities
        for variant, delta, kw, _ in configs[:8]:
            for x in _pick(embs, delta):
                count = ref.imc_mask_count(x, delta, kw["mu_down"], kw["mu_up"], variant)
                assert 0 < count < b * (b - 1), (variant, delta, count)
            img, txt = _pick(embs, delta)
            assert ref.imc_term(img, delta, kw["mu_down"], kw["mu_up"], variant) != (
                pytest.approx(ref.imc_term(txt, delta, kw["mu_down"], kw["mu_up"], variant),
                              rel=1e-3))
            if variant == "reference" and delta != "cosine":
                # mu_up * B = 2.5 / 8.5: Python's round-half-to-even is observable here
                assert any(ref.imc_term(x, delta) != pytest.approx(
                    ref.imc_term(x, delta, rounding=half_up), rel=1e-6) for x in (img, txt))
        assert abs(want[-2] - ref.imc(s, *embs["other"], delta="l1")) > 1e-2  # ids matter

    with jax.enable_x64(True):
        def f(x, e, p):
            return jnp.stack([losses.imc(x, *_pick(e, d), positives=p if use else None, **kw)
                              for _, d, kw, use in configs])

        got = jax.jit(f)(jnp.asarray(s), _jax_embs(embs), jnp.asarray(pos))
        assert got.dtype == jnp.float64
    assert_close(got, want)


@pytest.mark.parametrize("b", [9, 10])
def test_reference_thresholds_round_half_to_even(b):
    """mu*B lands on x.5: 0.5*9 = 4.5 -> 4 (mu_up) and 0.05*10 = 0.5 -> 0 (mu_down) with
    Python's round (B = 5 and 17 are in test_matches_reference); a half-up rounding would pick
    the next sorted entry of R[0]. The test first proves that this choice changes the value."""
    rng = np.random.default_rng(200 + b)
    img, txt = ref.unit_rows(rng, b, 6), ref.unit_rows(rng, b, 6)
    s = ref.rand_scores(rng, b)
    deltas = ["l1", "l2", "msd"]
    for delta in deltas:
        assert ref.imc_term(img, delta) != pytest.approx(
            ref.imc_term(img, delta, rounding=half_up), rel=1e-6)
    want = [ref.imc(s, img, txt, delta=d) for d in deltas]
    with jax.enable_x64(True):
        got = jax.jit(lambda x, a, t: jnp.stack([losses.imc(x, a, t, delta=d) for d in deltas]))(
            jnp.asarray(s), jnp.asarray(img), jnp.asarray(txt))
    assert_close(got, want)


# ------------------------------------------------------------------ golden checks


def test_lam_zero_is_max_of_hinges():
    rng = np.random.default_rng(9)
    s = ref.rand_scores(rng, 7)
    embs = _embeddings(rng, 7)
    pos = ref.positives_from_ids([0, 1, 2, 0, 3, 4, 5], [0, 1, 2, 0, 3, 4, 5])
    with jax.enable_x64(True):
        def f(x, e, p):
            mh = losses.max_of_hinges(x, margin=0.3)
            mh_p = losses.max_of_hinges(x, margin=0.3, positives=p)
            out = [losses.imc(x, *_pick(e, d), lam=0.0, delta=d, variant=v, margin=0.3) - mh
                   for v, d in COMBOS]
            out.append(losses.imc(x, *embs_other(e), lam=0.0, margin=0.3, positives=p) - mh_p)
            return jnp.stack(out + [mh, mh_p])

        embs_other = lambda e: e["other"]  # noqa: E731
        got = np.asarray(jax.jit(f)(jnp.asarray(s), _jax_embs(embs), jnp.asarray(pos)))
    n = len(COMBOS)
    assert_close(got[:n + 1], 0.0, atol=1e-12)
    assert_close(got[n + 1], ref.max_of_hinges(s, 0.3))
    assert_close(got[n + 2], ref.max_of_hinges(s, 0.3, pos))


# ------------------------------------------------------------------ 3. hand-computed cases

X3 = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]  # unit rows; cos(0,1)=0.8, cos(0,2)=0, cos(1,2)=0.6
T3 = [[1.0, 0.0], [0.96, 0.28], [0.0, 1.0]]  # cos(0,1)=0.96 (>= 0.95), cos(0,2)=0, cos(1,2)=0.28


def _hand(img, txt, configs):
    """Evaluate imc(I, img, txt, **kw) for each kw in configs (scores = I: every MH hinge is
    [0.2 + 0 - 1]_+ = 0, so only the IMC terms remain)."""
    b = len(img)
    with jax.enable_x64(True):
        f = jax.jit(lambda x, a, t: jnp.stack([losses.imc(x, a, t, **kw) for kw in configs]))
        return np.asarray(f(jnp.eye(b, dtype=jnp.float64), jnp.asarray(img, dtype=jnp.float64),
                            jnp.asarray(txt, dtype=jnp.float64)))


def test_hand_reference_cosine_and_paper_cosine():
    # reference: img: C = XX^T - I keeps 0.8 and 0.6 (each twice): sum = 2.8, / B = 2.8/3.
    #   txt: 0.96 is not < 0.95, 0.28 not > 0.5 -> 0.  lam = 0.5 -> 0.5 * 2.8 / 3.
    # paper (1 - cos on img): 0.2 (kept), 1.0 (dropped), 0.4 (kept) -> 2 * 0.6 = 1.2;
    #   txt: 1 - cos = 0.04 (< 0.05), 1.0, 0.72 -> all dropped. lam = 0.5 -> 0.6
    got = _hand(X3, T3, [dict(delta="cosine", lam=0.5),
                         dict(delta="cosine", lam=0.5, variant="paper")])
    assert_close(got, [0.5 * 2.8 / 3, 0.6], rtol=1e-12)
    # rows used as given (no normalisation inside): img = [[1.3, 0], [0, 1]]:
    # C = XX^T - I = [[0.69, 0], [0, 0]] -> keeps the 0.69 (0.5 < 0.69 < 0.95) -> 0.69 / 2;
    # txt = I -> C = 0 -> nothing kept
    got = _hand([[1.3, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [dict(delta="cosine")])
    assert_close(got, [0.69 / 2], rtol=1e-12)


def test_hand_reference_distances_b3():
    # x = [0, 1, 3] (D=1), L1: D = [[0,1,3],[1,0,2],[3,2,0]], row norms sqrt10, sqrt5, sqrt13.
    # r = sort(R[0]) = [0, 1/sqrt10, 3/sqrt10]; lo = r[round(0.15)=0] = 0,
    # hi = r[round(1.5)=2] = 3/sqrt10. Kept (0 < R < hi, strict): R01 = 1/sqrt10,
    # R10 = 1/sqrt5, R12 = 2/sqrt5, R20 = 3/sqrt13, R21 = 2/sqrt13 (R02 = hi is dropped).
    # In one dimension L2 = L1. txt = zeros -> D = 0 -> R = 0, nothing kept.
    # MSD: D = [[0,1,9],[1,0,4],[9,4,0]], row norms sqrt82, sqrt17, sqrt97; hi = R02 = 9/sqrt82;
    # kept: 1/sqrt82, 1/sqrt17, 4/sqrt17, 9/sqrt97, 4/sqrt97; with lam = 2.
    l1 = (1 / math.sqrt(10) + 3 / math.sqrt(5) + 5 / math.sqrt(13)) / 3
    msd = (1 / math.sqrt(82) + 5 / math.sqrt(17) + 13 / math.sqrt(97)) / 3
    x = [[0.0], [1.0], [3.0]]
    zeros = [[0.0], [0.0], [0.0]]
    configs = [dict(delta="l1"), dict(delta="l2"), dict(delta="msd", lam=2.0)]
    assert_close(_hand(x, zeros, configs), [l1, l1, 2 * msd], rtol=1e-12)
    # txt carries the constraint just the same as img
    assert_close(_hand(zeros, x, configs[:1]), [l1], rtol=1e-12)


def test_hand_reference_half_even_b5():
    # x = [0, 1, 3, 7, 15]: row 0 of D = [0,1,3,7,15], norm sqrt284. lo = r[round(0.25)=0] = 0,
    # hi = r[round(2.5)=2] = 3/sqrt284 ~ 0.1780 (half-up would use 7/sqrt284).
    # rows: 1: [1,0,2,6,14]/sqrt237 keeps 1, 2;  2: [3,2,0,4,12]/sqrt173 keeps 2 (3/13.15=0.228
    # is too big); 3: [7,6,4,0,8]/sqrt165 none (4/12.85=0.311); 4: [15,14,12,8,0]/sqrt629 none;
    # 0: keeps 1 (3/sqrt284 == hi is dropped).
    want = (1 / math.sqrt(284) + 3 / math.sqrt(237) + 2 / math.sqrt(173)) / 5
    x = [[0.0], [1.0], [3.0], [7.0], [15.0]]
    assert_close(_hand(x, [[0.0]] * 5, [dict(delta="l1")]), [want], rtol=1e-12)


def test_hand_paper_distances():
    # txt: all rows equal -> distances 0, dropped (0 is not > mu_down).
    # x = [0, 0.1, 0.3]: distances 0.1, 0.3, 0.2 all in (0.05, 0.5); ordered pairs -> 2 * 0.6
    # x = [0, 0.1, 0.7]: L1/L2 0.1 (kept), 0.7, 0.6 (dropped) -> 2 * 0.1;
    #                    MSD 0.01 (< 0.05), 0.49, 0.36 (kept) -> 2 * 0.85
    same = [[1.0]] * 3
    got_a = _hand([[0.0], [0.1], [0.3]], same,
                  [dict(delta="l1", variant="paper"),
                   dict(delta="l1", variant="paper", lam=0.5)])
    got_b = _hand([[0.0], [0.1], [0.7]], same,
                  [dict(delta=d, variant="paper") for d in ("l1", "l2", "msd")])
    assert_close(got_a, [1.2, 0.6], rtol=1e-9)
    assert_close(got_b, [0.2, 0.2, 1.7], rtol=1e-9)


def test_hand_paper_cosine_is_not_normalised():
    # rows as given: x0 = [0.5, 0], x1 = [0.8, 0], x2 = [0.6, 0]; 1 - x_n.x_m: (0,1) 0.6,
    # (0,2) 0.7, (1,2) 0.52; mu_up = 0.65 keeps 0.6 and 0.52 -> 2 * 1.12 = 2.24
    # (normalised rows would give 1 - 1 = 0 everywhere; the diagonal 1 - |x|^2 = 0.75, 0.36,
    # 0.64 must not be counted).
    x = [[0.5, 0.0], [0.8, 0.0], [0.6, 0.0]]
    got = _hand(x, [[1.0, 0.0]] * 3, [dict(delta="cosine", variant="paper", mu_up=0.65)])
    assert_close(got, [2.24], rtol=1e-9)


# ------------------------------------------------------------------ 2. gradients


@pytest.mark.parametrize("variant", VARIANTS)
def test_check_grads(variant):
    """Weighted sum over the four deltas. Thresholds/masks carry no gradient, so the
    finite-difference derivative (mask locally constant) is the exact derivative."""
    rng = np.random.default_rng(300)
    b = 5
    s = ref.rand_scores(rng, b)
    embs = _embeddings(rng, b, d=4)
    kws = {}
    for delta in DELTAS:
        img, txt = _pick(embs, delta)
        mu_down, mu_up = _mus(img, txt, delta, variant)
        assert ref.imc_term(img, delta, mu_down, mu_up, variant) > 0
        kws[delta] = dict(delta=delta, variant=variant, mu_down=mu_down, mu_up=mu_up)
    weights = dict(cosine=1.0, l1=0.7, l2=-0.4, msd=0.3)

    with jax.enable_x64(True):
        def f(x, ic, tc, io, to):
            e = {"cosine": (ic, tc), "other": (io, to)}
            return sum(weights[d] * losses.imc(x, *_pick(e, d), lam=0.8, **kws[d])
                       for d in DELTAS)

        check_grads(jax.jit(f), (jnp.asarray(s), *(jnp.asarray(v) for v in embs["cosine"]),
                                 *(jnp.asarray(v) for v in embs["other"])),
                    order=1, modes=("rev",), eps=1e-6)


# ------------------------------------------------------------------ 4. duplicate image / 5. B=1


def _values(configs, s, embs, p=None):
    def f(x, e):
        return jnp.stack([losses.imc(x, *_pick(e, d), positives=p, **kw) for d, kw in configs])

    return np.asarray(jax.jit(f)(jnp.asarray(s), _jax_embs(embs)))


def _values_and_grads(configs, s, embs, p=None, dtype=None):
    """jit(value_and_grad) of sum_k loss_k over the configs; returns (values, grads)."""
    def f(x, e):
        vals = jnp.stack([losses.imc(x, *_pick(e, d), positives=p, **kw).astype(jnp.float32)
                          if dtype is not None else
                          losses.imc(x, *_pick(e, d), positives=p, **kw)
                          for d, kw in configs])
        return jnp.sum(vals), vals

    cast = (lambda a: jnp.asarray(a, dtype)) if dtype is not None else jnp.asarray
    e = {k: (cast(v[0]), cast(v[1])) for k, v in embs.items()}
    (_, vals), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(cast(s), e)
    return np.asarray(vals), jax.tree_util.tree_leaves(grads)


def test_duplicate_image_in_batch():
    """Pairs 0 and 2 share image 0: identical image rows (a zero off-diagonal distance; L2
    needs its zero-safe sqrt there) and identical score rows."""
    rng = np.random.default_rng(400)
    ids = np.array([0, 1, 0, 2, 3])
    embs = {}
    for key, img in (("cosine", ref.clustered_unit_rows(rng, 5, 8)),
                     ("other", ref.unit_rows(rng, 5, 8))):
        img[2] = img[0]
        embs[key] = (img, ref.noisy_copy(rng, img, 0.3 if key == "cosine" else 0.5))
    pos = ref.positives_from_ids(ids, ids)
    configs, want, want_none = [], [], []
    for variant, delta in COMBOS:
        img, txt = _pick(embs, delta)
        s = embs["other"][0] @ embs["other"][1].T
        mu_down, mu_up = _mus(img, txt, delta, variant)
        kw = dict(delta=delta, variant=variant, mu_down=mu_down, mu_up=mu_up)
        configs.append((delta, kw))
        want.append(ref.imc(s, img, txt, positives=pos, **kw))
        want_none.append(ref.imc(s, img, txt, **kw))
    assert np.all(np.array(want_none) - np.array(want) > 0.05)
    # gradients through the zero distance between the duplicated rows: L2 (zero-safe sqrt)
    # in both variants, and the row-normalised L1 of the reference variant
    grad_configs = [(d, kw) for d, kw in configs if kw["delta"] == "l2"
                    or (kw["delta"] == "l1" and kw["variant"] == "reference")]
    with jax.enable_x64(True):
        vals = _values(configs, s, embs, p=jnp.asarray(pos))
        vals_none = _values(configs[:1], s, embs)  # the mask alone makes the difference
        _, grads = _values_and_grads(grad_configs, s, embs, p=jnp.asarray(pos))
    assert_close(vals, want)
    assert_close(vals_none, want_none[:1])
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


def test_batch_of_one():
    embs = {"cosine": ([[0.6, 0.8]], [[1.0, 0.0]]), "other": ([[0.6, 0.8]], [[1.0, 0.0]])}
    configs = [(d, dict(delta=d, variant=v)) for v, d in COMBOS]
    with jax.enable_x64(True):
        vals, grads = _values_and_grads(configs, [[0.4]], embs)
    assert np.all(vals == 0.0)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
        assert np.all(np.asarray(g) == 0.0)


# ------------------------------------------------------------------ 6. low precision


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_low_precision_finite(dtype):
    rng = np.random.default_rng(500)
    b = 12
    s = rng.uniform(-1.0, 1.0, size=(b, b))
    embs = _embeddings(rng, b, d=16)
    # the reference variant (row norms, sorted thresholds) for all deltas; the paper variant
    # (plain masked distances) for L2 (sqrt) and cosine
    configs = [(d, dict(delta=d, variant=v)) for v, d in COMBOS
               if v == "reference" or (d in ("l2", "cosine") and dtype == jnp.bfloat16)]
    vals, grads = _values_and_grads(configs, s, embs, dtype=dtype)
    assert np.all(np.isfinite(vals))
    for g in grads:
        assert g.dtype == dtype
        assert np.all(np.isfinite(np.asarray(g, dtype=np.float32)))
    if dtype == jnp.float32:  # also close to the float64 reference on the rounded inputs
        r = lambda a: np.asarray(jnp.asarray(a, dtype), np.float64)  # noqa: E731
        want = [ref.imc(r(s), *(r(a) for a in _pick(embs, d)), **kw) for d, kw in configs]
        assert_close(vals, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ 7. jit / vmap


@pytest.mark.parametrize("variant,deltas", [("reference", ["l1"]), ("paper", ["l2"])])
def test_jit_and_vmap(variant, deltas):
    rng = np.random.default_rng(600)
    b = 6
    s = np.stack([ref.rand_scores(rng, b) for _ in range(3)])
    items = [_embeddings(rng, b) for _ in range(3)]
    embs = {k: (np.stack([it[k][0] for it in items]), np.stack([it[k][1] for it in items]))
            for k in ("cosine", "other")}
    with jax.enable_x64(True):
        def f(x, e):
            return jnp.stack([losses.imc(x, *_pick(e, d), delta=d, variant=variant)
                              for d in deltas])

        je = _jax_embs(embs)
        eager = np.array([[float(losses.imc(jnp.asarray(s[k]),
                                            *(jnp.asarray(a[k]) for a in _pick(embs, d)),
                                            delta=d, variant=variant)) for d in deltas]
                          for k in range(3)])
        jitted = jax.jit(f)(jnp.asarray(s[0]), jax.tree_util.tree_map(lambda a: a[0], je))
        vm = jax.jit(jax.vmap(f))(jnp.asarray(s), je)
    want = [[ref.imc(s[k], *(a[k] for a in _pick(embs, d)), delta=d, variant=variant)
             for d in deltas] for k in range(3)]
    assert_close(eager, want)
    assert_close(jitted, eager[0], rtol=1e-10)
    assert_close(vm, eager, rtol=1e-10)


# ------------------------------------------------------------------ 8. errors


@pytest.mark.parametrize("case", ["non_square", "scores_rank", "img_rows", "txt_rows",
                                  "img_rank", "positives_shape", "delta", "variant"])
def test_value_errors(case):
    b = 4
    s = np.zeros((b, b))
    img = np.ones((b, 3))
    txt = np.ones((b, 3))
    kw = {}
    if case == "non_square":
        s = np.zeros((b, b + 1))
    elif case == "scores_rank":
        s = np.zeros((b,))
    elif case == "img_rows":
        img = np.ones((b - 1, 3))
    elif case == "txt_rows":
        txt = np.ones((b + 1, 3))
    elif case == "img_rank":
        img = np.ones((b,))
    elif case == "positives_shape":
        kw["positives"] = jnp.eye(b + 1, dtype=bool)
    elif case == "delta":
        kw["delta"] = "l3"
    elif case == "variant":
        kw["variant"] = "authors"
    with pytest.raises(ValueError):
        jax.jit(lambda sc, a, t: losses.imc(sc, a, t, **kw))(
            jnp.asarray(s, jnp.float32), jnp.asarray(img, jnp.float32),
            jnp.asarray(txt, jnp.float32))
