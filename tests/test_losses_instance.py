"""Dual-path paper: instance_loss and dual_path_ranking.

Contract: docs/losses.md, "Instance loss and dual-path ranking" (with the reductions).
References: tests/numpy_refs.py (`instance_loss`, `dual_path_ranking`).
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


def _logits(rng, b, c=7, scale=3.0):
    return (scale * rng.normal(size=(b, c)), scale * rng.normal(size=(b, c)),
            rng.integers(0, c, size=b).astype(np.int32))


# ================================================================== instance loss


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("b", SIZES)
def test_instance_matches_reference(b, reduction):
    rng = np.random.default_rng(b)
    li, lt, labels = _logits(rng, b)
    want = ref.instance_loss(li, lt, labels, reduction)
    with jax.enable_x64(True):
        got = jax.jit(lambda a, c, lab: jnp.stack([
            losses.instance_loss(a, c, lab, reduction=reduction),
            losses.instance_loss(a, c, lab)]))(jnp.asarray(li), jnp.asarray(lt),
                                               jnp.asarray(labels))
        assert got.dtype == jnp.float64
    assert_close(got[0], want)
    assert_close(got[1], ref.instance_loss(li, lt, labels, "mean"))  # default reduction


def test_instance_hand():
    # img logits [[0, ln3], [0, 0]], txt logits [[ln3, 0], [0, 0]], labels [1, 0]:
    #   img: row0 p(1) = 3/4 -> log(4/3); row1 p(0) = 1/2 -> log 2
    #   txt: row0 p(1) = 1/4 -> log 4;    row1 -> log 2
    #   sum = log(4/3 * 2 * 4 * 2) = log(64/3); mean = log(64/3) / 2
    l3 = math.log(3.0)
    with jax.enable_x64(True):
        args = (jnp.asarray([[0.0, l3], [0.0, 0.0]]), jnp.asarray([[l3, 0.0], [0.0, 0.0]]),
                jnp.asarray([1, 0]))
        got_sum, got_mean = jax.jit(lambda *a: (losses.instance_loss(*a, reduction="sum"),
                                                losses.instance_loss(*a, reduction="mean")))(
            *args)
    assert float(got_sum) == pytest.approx(math.log(64 / 3), rel=1e-12)
    assert float(got_mean) == pytest.approx(math.log(64 / 3) / 2, rel=1e-12)


def test_instance_check_grads():
    rng = np.random.default_rng(10)
    li, lt, labels = _logits(rng, 5, c=4)
    with jax.enable_x64(True):
        lab = jnp.asarray(labels)
        check_grads(jax.jit(lambda a, c: losses.instance_loss(a, c, lab, reduction="sum")
                            + 2.0 * losses.instance_loss(a, c, lab)),
                    (jnp.asarray(li), jnp.asarray(lt)), order=1, modes=("rev",), eps=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_instance_low_precision_large_logits(dtype):
    rng = np.random.default_rng(11)
    li, lt, labels = _logits(rng, 8, c=10, scale=300.0)
    args = (jnp.asarray(li, dtype), jnp.asarray(lt, dtype))
    val, grads = jax.jit(jax.value_and_grad(
        lambda a, c: losses.instance_loss(a, c, jnp.asarray(labels)), argnums=(0, 1)))(*args)
    assert np.isfinite(float(val))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g, np.float32)))
    want = ref.instance_loss(np.asarray(args[0], np.float64), np.asarray(args[1], np.float64),
                             labels)
    assert_close(float(val), want, rtol=1e-5 if dtype == jnp.float32 else 5e-2, atol=1e-2)


def test_instance_jit_and_vmap():
    rng = np.random.default_rng(12)
    items = [_logits(rng, 6) for _ in range(3)]
    lis, lts, labs = (np.stack([it[k] for it in items]) for k in range(3))
    with jax.enable_x64(True):
        f = lambda a, c, lab: losses.instance_loss(a, c, lab, reduction="sum")  # noqa: E731
        eager = np.array([float(f(jnp.asarray(lis[k]), jnp.asarray(lts[k]),
                                  jnp.asarray(labs[k]))) for k in range(3)])
        jitted = jax.jit(f)(lis[0], lts[0], labs[0])
        vm = jax.jit(jax.vmap(f))(jnp.asarray(lis), jnp.asarray(lts), jnp.asarray(labs))
    assert_close(eager, [ref.instance_loss(lis[k], lts[k], labs[k], "sum") for k in range(3)])
    assert_close(jitted, eager[0], rtol=1e-10)
    assert_close(vm, eager, rtol=1e-10)


# The stage weights image:text of the paper (1:1), the authors' COCO / Flickr30K (1:0.1) and
# CUHK-PEDES (1:0.5) stage-II scripts, one branch alone, and an asymmetric pair.
WEIGHTS = [(1.0, 1.0), (1.0, 0.1), (1.0, 0.5), (0.0, 1.0), (1.0, 0.0), (0.3, 2.0)]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("image_weight,text_weight", WEIGHTS)
def test_instance_weights_match_reference(image_weight, text_weight, reduction):
    rng = np.random.default_rng(20)
    li, lt, labels = _logits(rng, 9)
    lt = 0.2 * lt  # flatter text logits: L_textual near log(C), far from L_visual
    want, visual, textual = ref.weighted_instance_loss(li, lt, labels, image_weight, text_weight,
                                                       reduction)
    assert abs(visual - textual) > 0.1  # the weights are told apart
    with jax.enable_x64(True):
        got, aux = jax.jit(lambda a, c, lab: losses.instance_loss(
            a, c, lab, image_weight=image_weight, text_weight=text_weight, reduction=reduction,
            with_aux=True))(jnp.asarray(li), jnp.asarray(lt), jnp.asarray(labels))
    assert_close(got, want)
    # The auxiliary terms are the unweighted cross-entropies.
    assert_close(aux["visual"], visual)
    assert_close(aux["textual"], textual)


def test_instance_default_weights_are_the_spec_sum():
    rng = np.random.default_rng(21)
    li, lt, labels = _logits(rng, 6)
    with jax.enable_x64(True):
        got = losses.instance_loss(jnp.asarray(li), jnp.asarray(lt), jnp.asarray(labels))
    assert_close(got, ref.instance_loss(li, lt, labels, "mean"))


def test_instance_zero_weight_stops_that_branchs_gradient():
    rng = np.random.default_rng(22)
    li, lt, labels = _logits(rng, 5, c=4)
    with jax.enable_x64(True):
        lab = jnp.asarray(labels)
        g_img, g_txt = jax.jit(jax.grad(
            lambda a, c: losses.instance_loss(a, c, lab, image_weight=0.5, text_weight=0.0),
            argnums=(0, 1)))(jnp.asarray(li), jnp.asarray(lt))
        full = jax.grad(lambda a: losses.instance_loss(a, jnp.asarray(lt), lab))(jnp.asarray(li))
    np.testing.assert_array_equal(np.asarray(g_txt), 0.0)
    assert_close(g_img, 0.5 * np.asarray(full), rtol=1e-12)
    # The gradient is the reference's, weighted (central differences of the loop reference).
    want = ref.numerical_grad(
        lambda a: ref.weighted_instance_loss(a, lt, labels, 0.5, 0.0)[0], li)
    assert_close(g_img, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", ["txt_shape", "labels_len", "rank", "labels_rank",
                                  "reduction"])
def test_instance_value_errors(case):
    li, lt, labels = np.zeros((4, 5)), np.zeros((4, 5)), np.arange(4)
    kw = {}
    if case == "txt_shape":
        lt = np.zeros((4, 6))
    elif case == "labels_len":
        labels = np.arange(3)
    elif case == "rank":
        li, lt = np.zeros((4,)), np.zeros((4,))
    elif case == "labels_rank":
        labels = np.zeros((4, 1), dtype=np.int32)
    elif case == "reduction":
        kw["reduction"] = "none"
    with pytest.raises(ValueError):
        jax.jit(lambda a, c, lab: losses.instance_loss(a, c, lab, **kw))(
            jnp.asarray(li, jnp.float32), jnp.asarray(lt, jnp.float32), jnp.asarray(labels))


# ================================================================== dual-path ranking


@pytest.mark.parametrize("b", SIZES)
def test_ranking_matches_reference(b):
    """Margins 1.0 (default) / 0.3 x reductions mean (default) / sum, one size."""
    rng = np.random.default_rng(100 + b)
    s = ref.rand_scores(rng, b, diag_boost=0.6)
    configs = [(m, r) for m in (1.0, 0.3) for r in ("mean", "sum")]
    want = [ref.dual_path_ranking(s, m, None, r) for m, r in configs]
    if b >= 5:  # both sides of the hinge occur at margin 0.3
        rows, cols = ref.max_of_hinges_terms(s, 0.3)
        active = sum(v > 0 for v in rows + cols)
        assert 0 < active < 2 * b
    with jax.enable_x64(True):
        got = jax.jit(lambda x: jnp.stack(
            [losses.dual_path_ranking(x)]
            + [losses.dual_path_ranking(x, margin=m, reduction=r) for m, r in configs]))(
            jnp.asarray(s))
        assert got.dtype == jnp.float64
    assert_close(got, [want[0]] + want)


def test_ranking_with_id_positives():
    rng = np.random.default_rng(2)
    ids = np.array([0, 1, 0, 2, 1, 3, 4])
    img = ref.unit_rows(rng, 7, 8)
    img[2] = img[0]
    img[4] = img[1]
    s = img @ ref.noisy_copy(rng, img).T
    pos = ref.positives_from_ids(ids, ids)
    reds = ["mean", "sum"]
    want = [ref.dual_path_ranking(s, 0.5, pos, r) for r in reds]
    want_none = [ref.dual_path_ranking(s, 0.5, None, r) for r in reds]
    assert np.all(np.abs(np.array(want) - np.array(want_none)) > 0.05)
    with jax.enable_x64(True):
        def f(x, jids):
            p = losses.positives_from_ids(jids, jids)
            eye = jnp.eye(7, dtype=bool)
            return jnp.stack([losses.dual_path_ranking(x, margin=0.5, reduction=r, positives=q)
                              for q in (p, eye) for r in reds])

        got = jax.jit(f)(jnp.asarray(s), jnp.asarray(ids))
    assert_close(got, want + want_none)


def test_ranking_equals_max_of_hinges():
    """[m - (S_kk - max neg)]_+ = max over negatives of the MH hinge: sum == MH(sum),
    mean == MH(sum) / B."""
    rng = np.random.default_rng(3)
    s = ref.rand_scores(rng, 9)
    pos = ref.positives_from_ids([0, 1, 2, 0, 3, 4, 5, 6, 2], [0, 1, 2, 0, 3, 4, 5, 6, 2])
    with jax.enable_x64(True):
        def f(x, p):
            out = []
            for margin in (1.0, 0.2):
                for q in (None, p):
                    mh = losses.max_of_hinges(x, margin=margin, positives=q)
                    out += [losses.dual_path_ranking(x, margin=margin, positives=q,
                                                     reduction="sum") - mh,
                            losses.dual_path_ranking(x, margin=margin, positives=q) - mh / 9]
            return jnp.stack(out)

        jf = jax.jit(f)
        got = jf(jnp.asarray(s), jnp.asarray(pos))
        # every entry positive: no anchor has a negative -> 0 (and MH = 0)
        got_all = jf(jnp.asarray(s), jnp.ones((9, 9), dtype=bool))
        all_pos = jax.jit(lambda x: losses.dual_path_ranking(x, positives=jnp.ones((9, 9), bool)))(
            jnp.asarray(s))
    assert_close(got, 0.0, atol=1e-12)
    assert_close(got_all, 0.0, atol=1e-12)
    assert float(all_pos) == 0.0


def test_ranking_hand():
    # S = [[0.9, 0.8, 0.35], [0.2, 0.7, 0.6], [0.75, 0.1, 0.5]], margin 1:
    #  k=0: row max neg 0.8 -> 1 - (0.9 - 0.8) = 0.9;  col max neg 0.75 -> 1 - 0.15 = 0.85
    #  k=1: row max neg 0.6 -> 0.9;                     col max neg 0.8 -> 1.1
    #  k=2: row max neg 0.75 -> 1.25;                   col max neg 0.6 -> 1.1
    #  sum = 6.1, mean = 6.1 / 3
    with jax.enable_x64(True):
        s = jnp.asarray([[0.9, 0.8, 0.35], [0.2, 0.7, 0.6], [0.75, 0.1, 0.5]])
        # margin 0.5: k=0: 0.4, 0.35; k=1: 0.4, 0.6; k=2: 0.75, 0.6 -> 3.1
        got_sum, got_mean, got_half = jax.jit(lambda x: (
            losses.dual_path_ranking(x, reduction="sum"), losses.dual_path_ranking(x),
            losses.dual_path_ranking(x, margin=0.5, reduction="sum")))(s)
    assert float(got_sum) == pytest.approx(6.1, rel=1e-12)
    assert float(got_mean) == pytest.approx(6.1 / 3, rel=1e-12)
    assert float(got_half) == pytest.approx(3.1, rel=1e-12)


def test_ranking_check_grads():
    rng = np.random.default_rng(4)
    s = ref.rand_scores(rng, 6)
    ids = [0, 1, 0, 2, 3, 4]
    with jax.enable_x64(True):
        p = jnp.asarray(ref.positives_from_ids(ids, ids))
        check_grads(jax.jit(lambda x: losses.dual_path_ranking(x, margin=0.5, reduction="sum")
                            + 3.0 * losses.dual_path_ranking(x, margin=0.3, positives=p)),
                    (jnp.asarray(s),), order=1, modes=("rev",), eps=1e-6)


def test_ranking_ties_gradient_mass():
    s = np.array([[0.8, 0.75, -0.2, 0.75], [0.1, 0.9, 0.0, -0.3], [0.2, 0.3, 0.7, 0.1],
                  [-0.1, 0.0, 0.15, 0.85]])
    # row 0: negatives 0.75 and 0.75 tie (hinge 0.5 + 0.75 - 0.8 = 0.45 > 0); row 2 (0.1),
    # column 1 (0.35, from S_01) and column 3 (0.4, from S_03) active; the rest inactive
    want = ref.dual_path_ranking(s, 0.5, None, "sum")
    rows, cols = ref.max_of_hinges_terms(s, 0.5)
    with jax.enable_x64(True):
        val, g = jax.jit(jax.value_and_grad(
            lambda x: losses.dual_path_ranking(x, margin=0.5, reduction="sum")))(jnp.asarray(s))
    g = np.asarray(g)
    assert_close(val, want)
    n_active = sum(v > 0 for v in rows) + sum(v > 0 for v in cols)
    for k in range(4):
        assert g[k, k] == pytest.approx(-(int(rows[k] > 0) + int(cols[k] > 0)), abs=1e-12)
    off = ~np.eye(4, dtype=bool)
    assert g[off].sum() == pytest.approx(n_active, abs=1e-12)
    assert np.all(g[off] >= -1e-12)


def test_ranking_batch_of_one():
    with jax.enable_x64(True):
        val, g = jax.jit(jax.value_and_grad(
            lambda x: losses.dual_path_ranking(x) + losses.dual_path_ranking(x, reduction="sum")))(
            jnp.asarray([[0.3]], dtype=jnp.float64))
    assert float(val) == 0.0
    assert np.all(np.asarray(g) == 0.0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_ranking_low_precision(dtype):
    s = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, size=(16, 16)), dtype)
    val, g = jax.jit(jax.value_and_grad(lambda x: losses.dual_path_ranking(x)))(s)
    assert np.isfinite(float(val))
    assert np.all(np.isfinite(np.asarray(g, np.float32)))
    want = ref.dual_path_ranking(np.asarray(s, np.float64), 1.0, None, "mean")
    assert_close(float(val), want, rtol=1e-5 if dtype == jnp.float32 else 5e-2, atol=1e-3)


def test_ranking_jit_and_vmap():
    rng = np.random.default_rng(6)
    stack = np.stack([ref.rand_scores(rng, 5) for _ in range(3)])
    with jax.enable_x64(True):
        f = lambda x: losses.dual_path_ranking(x, margin=0.4)  # noqa: E731
        eager = np.array([float(f(jnp.asarray(m))) for m in stack])
        jitted = jax.jit(f)(stack[0])
        vm = jax.jit(jax.vmap(f))(jnp.asarray(stack))
    assert_close(eager, [ref.dual_path_ranking(m, 0.4) for m in stack])
    assert_close(jitted, eager[0], rtol=1e-12)
    assert_close(vm, eager, rtol=1e-12)


@pytest.mark.parametrize("case", ["non_square", "rank", "positives_shape", "reduction"])
def test_ranking_value_errors(case):
    s = np.zeros((4, 4))
    kw = {}
    if case == "non_square":
        s = np.zeros((4, 3))
    elif case == "rank":
        s = np.zeros((4, 4, 1))
    elif case == "positives_shape":
        kw["positives"] = jnp.ones((4, 5), dtype=bool)
    elif case == "reduction":
        kw["reduction"] = "avg"
    with pytest.raises(ValueError):
        jax.jit(lambda x: losses.dual_path_ranking(x, **kw))(jnp.asarray(s, jnp.float32))
