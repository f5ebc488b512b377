"""`itm_jax.similarity.scan_scores` and `bfan_scores` against plain NumPy float64 loops
(`tests/numpy_refs_models.py`: one pair at a time, padding sliced off, attended vectors formed).

Contract (brief and docs/models.md): SCAN's `func_attention` for every raw_feature_norm x agg x
direction (normalisation over the queries for each context item, eps 1e-8 added to the L2 norm,
cosine clamped at 1e-8, leaky ReLU slope 0.1); BFAN = t2i + i2t focal attention, the selection
with no gradient, "keep all" where no item passes; padding (at or past cap_lens / region_lens)
changes no score and no gradient and gets exactly zero gradient; one-word captions, one-region
images and N_i = 1 work; jit, grad, vmap and a batch sharded over 4 devices; memory bounded by
a block of pairs; one ValueError per bad input.
"""

import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import numpy_refs_models as ref
from itm_jax import similarity

SCAN_CASES = list(itertools.product(similarity.SCAN_NORMS, similarity.SCAN_AGGS,
                                    similarity.DIRECTIONS))
# Small blocks, so that a test crosses block edges, pads to whole blocks and cuts caption
# blocks to a shorter length (L = 6: blocks of short captions run at 4 words). The tests of
# every option combination run as one block, which compiles 3x faster; the blocking is the
# same code for every option and has its own tests.
BLOCKS = dict(block_images=2, block_captions=3)

pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def make_sets(seed, ni=3, nc=4, r=3, length=6, d=5, cap_lens=(1, 6, 3, 4), region_lens=None,
              pad_value=0.0):
    """Float64 images [ni, r, d], captions [nc, length, d], lengths; padding set to `pad_value`
    times noise (0: zeros)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(ni, r, d))
    captions = rng.normal(size=(nc, length, d))
    cap_lens = np.asarray(cap_lens, np.int32)
    pad = np.arange(length)[None, :, None] >= cap_lens[:, None, None]
    captions = np.where(pad, pad_value * rng.normal(size=captions.shape), captions)
    if region_lens is not None:
        region_lens = np.asarray(region_lens, np.int32)
        pad = np.arange(r)[None, :, None] >= region_lens[:, None, None]
        images = np.where(pad, pad_value * rng.normal(size=images.shape), images)
    return images, captions, cap_lens, region_lens


def value_and_grads(fn, images, captions, cap_lens, region_lens, weights, **options):
    """Scores and the gradients of ``sum(weights * scores)`` w.r.t. images and captions."""
    (_, s), grads = _jitted_value_and_grads(fn, tuple(sorted(options.items())))(
        images, captions, cap_lens, region_lens, weights)
    return np.asarray(s), [np.asarray(g) for g in grads]


@functools.lru_cache(maxsize=None)
def _jitted_value_and_grads(fn, options):
    def loss(im, cap, cap_lens, region_lens, weights):
        s = fn(im, cap, cap_lens, region_lens=region_lens, **dict(options))
        return jnp.sum(weights * s), s

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def reference_grads(ref_fn, images, captions, cap_lens, region_lens, weights, **options):
    loss = lambda im, cap: np.sum(  # noqa: E731
        weights * ref_fn(im, cap, cap_lens, region_lens=region_lens, **options))
    return (ref.numerical_grad(lambda im: loss(im, captions), images),
            ref.numerical_grad(lambda cap: loss(images, cap), captions))


def assert_close(got, want, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------ SCAN values


@pytest.mark.parametrize("norm,agg,direction", SCAN_CASES)
def test_scan_matches_reference(x64, norm, agg, direction):
    """Every option combination, ragged captions and images, at unit scale and at a scale
    where both eps (the L2 norm's, added; the cosine's, a clamp) decide the value."""
    images, captions, cap_lens, region_lens = make_sets(0, region_lens=(3, 1, 2))
    options = dict(direction=direction, raw_feature_norm=norm, agg=agg, lambda_softmax=4.0,
                   lambda_lse=5.0)
    f = jax.jit(lambda im, cap: similarity.scan_scores(im, cap, cap_lens, region_lens=region_lens,
                                                       **options))
    for scale in (1.0, 3e-5):
        got = f(images * scale, captions * scale)
        assert got.shape == (3, 4) and got.dtype == jnp.float64
        want = ref.scan_scores(images * scale, captions * scale, cap_lens,
                               region_lens=region_lens, **options)
        assert_close(got, want)


@pytest.mark.parametrize("norm,direction", list(itertools.product(similarity.SCAN_NORMS,
                                                                  similarity.DIRECTIONS)))
def test_scan_gradients(x64, norm, direction):
    """jax.grad of sum(W * scores) against central differences of the NumPy loops, every agg;
    padded word and region positions get exactly zero gradient."""
    images, captions, cap_lens, region_lens = make_sets(1, region_lens=(2, 3, 1))
    weights = np.random.default_rng(2).normal(size=(3, 4))
    for agg in similarity.SCAN_AGGS:
        options = dict(direction=direction, raw_feature_norm=norm, agg=agg)
        _, (g_img, g_cap) = value_and_grads(similarity.scan_scores, images, captions, cap_lens,
                                            region_lens, weights, **options)
        want_img, want_cap = reference_grads(ref.scan_scores, images, captions, cap_lens,
                                             region_lens, weights, **options)
        assert_close(g_img, want_img, rtol=1e-6, atol=1e-8)
        assert_close(g_cap, want_cap, rtol=1e-6, atol=1e-8)
        assert_padding_grads_zero(g_img, g_cap, cap_lens, region_lens)


def assert_padding_grads_zero(g_img, g_cap, cap_lens, region_lens):
    word_pad = np.arange(g_cap.shape[1])[None, :] >= cap_lens[:, None]
    assert np.all(g_cap[word_pad] == 0.0)
    if region_lens is not None:
        region_pad = np.arange(g_img.shape[1])[None, :] >= region_lens[:, None]
        assert np.all(g_img[region_pad] == 0.0)


# ------------------------------------------------------------------------------ BFAN values


@pytest.mark.parametrize("focal", similarity.BFAN_FOCALS)
def test_bfan_matches_reference(x64, focal):
    """Values and gradients in float64, ragged captions and images; the hard selection
    passes no gradient (central differences hold it fixed away from a threshold: the margins
    are checked). No single-word caption or single-region image here: with one query, the
    norm over the queries makes every positive raw attention ~1, so context items nearly tie
    and the selection flips under the differences' steps."""
    images, captions, cap_lens, region_lens = make_sets(3, cap_lens=(2, 6, 3, 4),
                                                        region_lens=(3, 2, 2))
    weights = np.random.default_rng(4).normal(size=(3, 4))
    margins = []
    want = ref.bfan_scores(images, captions, cap_lens, focal=focal, region_lens=region_lens,
                           margins=margins)
    assert min(margins) > 1e-4  # no selection flips under steps of 1e-6
    got, (g_img, g_cap) = value_and_grads(similarity.bfan_scores, images, captions, cap_lens,
                                          region_lens, weights, focal=focal, **BLOCKS)
    assert_close(got, want)
    # The selection matters here: the same attention without it (SCAN's) scores differently.
    soft = sum(ref.scan_scores(images, captions, cap_lens, direction=d, lambda_softmax=20.0,
                               region_lens=region_lens) for d in similarity.DIRECTIONS)
    assert np.max(np.abs(want - soft)) > 1e-2
    want_img, want_cap = reference_grads(ref.bfan_scores, images, captions, cap_lens,
                                         region_lens, weights, focal=focal)
    assert_close(g_img, want_img, rtol=1e-6, atol=1e-8)
    assert_close(g_cap, want_cap, rtol=1e-6, atol=1e-8)
    assert_padding_grads_zero(g_img, g_cap, cap_lens, region_lens)


@pytest.mark.parametrize("focal", similarity.BFAN_FOCALS)
def test_bfan_float32_matches_float64_with_clear_margins(focal):
    """float32 against the float64 loops on inputs whose selections are far from flipping."""
    images, captions, cap_lens, _ = make_sets(8, ni=4, nc=5, r=5, d=16, cap_lens=(2, 6, 3, 5, 4))
    margins = []
    want = ref.bfan_scores(images, captions, cap_lens, focal=focal, margins=margins)
    assert min(margins) > 1e-3
    got = similarity.bfan_scores(images.astype(np.float32), captions.astype(np.float32),
                                 cap_lens, focal=focal, **BLOCKS)
    assert got.dtype == jnp.float32
    assert_close(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- padding, sizes


@pytest.mark.parametrize("fn,options", [
    (similarity.scan_scores, dict(direction="t2i", raw_feature_norm="clipped_l2norm", agg="mean")),
    (similarity.scan_scores, dict(direction="i2t", raw_feature_norm="softmax", agg="logsumexp")),
    (similarity.scan_scores, dict(direction="t2i", raw_feature_norm="l2norm", agg="max")),
    (similarity.bfan_scores, dict(focal="equal")),
    (similarity.bfan_scores, dict(focal="prob")),
])
def test_padding_noise_changes_nothing(fn, options):
    """Padding filled with noise x100 (and inf): the same scores and gradients, bit for bit,
    as zero padding, and exactly zero gradient at every padded position."""
    weights = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)
    results = []
    for pad_value in (0.0, 100.0, np.inf):
        images, captions, cap_lens, region_lens = make_sets(8, region_lens=(1, 3, 2),
                                                            pad_value=pad_value)
        images, captions = images.astype(np.float32), captions.astype(np.float32)
        results.append(value_and_grads(fn, images, captions, cap_lens, region_lens, weights,
                                       **options, **BLOCKS))
    (s0, (gi0, gc0)) = results[0]
    assert np.all(np.isfinite(s0)) and np.all(np.isfinite(gi0)) and np.all(np.isfinite(gc0))
    for s, (gi, gc) in results[1:]:
        np.testing.assert_array_equal(s, s0)
        np.testing.assert_array_equal(gi, gi0)
        np.testing.assert_array_equal(gc, gc0)
    assert_padding_grads_zero(gi0, gc0, cap_lens, region_lens)


@pytest.mark.parametrize("r,cap_lens", [(1, (1, 3)), (3, (1, 1))])
def test_one_word_one_region_one_image(x64, r, cap_lens):
    """Sizes the authors' code crashes on: N_i = 1, one-region images, one-word captions.
    A single context item takes all the attention (BFAN: nothing passes the focal test, so
    everything is kept)."""
    images, captions, cap_lens, _ = make_sets(9, ni=1, nc=2, r=r, length=3, cap_lens=cap_lens)
    cases = zip(itertools.product(similarity.SCAN_NORMS, similarity.DIRECTIONS),
                itertools.cycle(similarity.SCAN_AGGS))
    for (norm, direction), agg in cases:
        options = dict(direction=direction, raw_feature_norm=norm, agg=agg)
        got = jax.jit(functools.partial(similarity.scan_scores, **options))(images, captions,
                                                                             cap_lens)
        assert_close(got, ref.scan_scores(images, captions, cap_lens, **options))
    for focal in similarity.BFAN_FOCALS:
        got, (g_img, g_cap) = value_and_grads(similarity.bfan_scores, images, captions, cap_lens,
                                              None, np.ones((1, 2)), focal=focal)
        assert_close(got, ref.bfan_scores(images, captions, cap_lens, focal=focal))
        assert np.all(np.isfinite(g_img)) and np.all(np.isfinite(g_cap))
    # One region and one word: each attends to the other alone, so BFAN = 2 cos(v, e).
    if r == 1:
        v, e = images[0, 0], captions[:, 0]
        cos = e @ v / (np.linalg.norm(v) * np.linalg.norm(e, axis=1))
        one_word = cap_lens == 1
        got = similarity.bfan_scores(images, captions, cap_lens)
        assert_close(np.asarray(got)[0, one_word], 2 * cos[one_word])


def test_block_sizes_do_not_change_scores_or_gradients(x64):
    images, captions, cap_lens, region_lens = make_sets(10, ni=7, nc=9, length=9,
                                                        cap_lens=(9, 1, 5, 2, 8, 3, 4, 9, 6),
                                                        region_lens=(3, 1, 2, 3, 2, 1, 3))
    weights = np.random.default_rng(17).normal(size=(7, 9))
    for fn, options in ((similarity.scan_scores, dict(direction="i2t", agg="logsumexp")),
                        (similarity.bfan_scores, dict(focal="prob"))):
        s0, g0 = value_and_grads(fn, images, captions, cap_lens, region_lens, weights,
                                 block_images=100, block_captions=100, **options)
        for bi, bc in ((1, 1), (3, 4)):
            s, g = value_and_grads(fn, images, captions, cap_lens, region_lens, weights,
                                   block_images=bi, block_captions=bc, **options)
            assert_close(s, s0)
            for a, b in zip(g, g0):
                assert_close(a, b)


def test_memory_is_one_block():
    """The compiled function (forward, and forward + backward) holds far less than the whole
    [Ni, Nc, R, L] attention tensor."""
    ni, nc, r, length, d = 128, 128, 16, 16, 4
    rng = np.random.default_rng(11)
    images = jnp.asarray(rng.normal(size=(ni, r, d)), jnp.float32)
    captions = jnp.asarray(rng.normal(size=(nc, length, d)), jnp.float32)
    cap_lens = jnp.full((nc,), length, jnp.int32)
    whole = ni * nc * r * length * 4  # bytes of one f32 attention tensor: 16 MiB

    def temp_bytes(f):
        return jax.jit(f).lower(images, captions).compile().memory_analysis().temp_size_in_bytes

    for fn in (similarity.scan_scores, similarity.bfan_scores):
        score = lambda im, cap, fn=fn: fn(im, cap, cap_lens, block_images=4,  # noqa: E731
                                          block_captions=4)
        grad = jax.grad(lambda im, cap: jnp.sum(score(im, cap)), argnums=(0, 1))
        assert temp_bytes(score) < whole / 8
        assert temp_bytes(grad) < whole / 8
        unblocked = lambda im, cap, fn=fn: fn(im, cap, cap_lens, block_images=ni,  # noqa: E731
                                              block_captions=nc)
        assert temp_bytes(unblocked) > whole  # the measure sees a whole tensor when there is one


# ------------------------------------------------------------------- transforms and sharding


def test_vmap_of_single_pairs_is_the_diagonal():
    """Scoring matched pairs one at a time under vmap (as a scorer's `pairs` does)."""
    images, captions, cap_lens, _ = make_sets(12, ni=4, nc=4, cap_lens=(1, 6, 2, 5))
    images, captions = images.astype(np.float32), captions.astype(np.float32)
    for fn in (similarity.scan_scores, similarity.bfan_scores):
        one = lambda v, e, n, fn=fn: fn(v[None], e[None], n[None])[0, 0]  # noqa: E731
        pairs = jax.jit(jax.vmap(one))(images, captions, cap_lens)
        np.testing.assert_allclose(pairs, np.diag(fn(images, captions, cap_lens)), rtol=1e-6,
                                   atol=1e-7)


@pytest.mark.parametrize("fn,options,axis", [
    (similarity.scan_scores, dict(agg="logsumexp"), "images"),
    (similarity.bfan_scores, dict(focal="prob"), "captions"),
])
def test_sharded_batch_equals_one_device(fn, options, axis):
    """Images or captions (with their lengths) sharded on a 4-device `data` mesh inside jit:
    the scores and the gradients equal the single-device ones."""
    assert jax.device_count() >= 4
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    images, captions, cap_lens, region_lens = make_sets(13, ni=8, nc=8, length=6,
                                                        cap_lens=(1, 6, 3, 4, 2, 6, 5, 1),
                                                        region_lens=(3, 1, 2, 3, 3, 2, 1, 3))
    images, captions = images.astype(np.float32), captions.astype(np.float32)
    weights = np.random.default_rng(14).normal(size=(8, 8)).astype(np.float32)

    def loss(im, cap, lens, rlens):
        s = fn(im, cap, lens, region_lens=rlens, **options, **BLOCKS)
        return jnp.sum(weights * s), s

    f = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    (_, want), want_grads = jax.jit(f)(images, captions, cap_lens, region_lens)
    args = [jnp.asarray(a) for a in (images, captions, cap_lens, region_lens)]
    on = (0, 3) if axis == "images" else (1, 2)
    args = [jax.device_put(a, NamedSharding(mesh, P("data"))) if k in on else a
            for k, a in enumerate(args)]
    assert args[on[0]].sharding.num_devices == 4
    (_, got), got_grads = jax.jit(f)(*args)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_half_precision_inputs_give_float32():
    images, captions, cap_lens, _ = make_sets(15)
    for fn in (similarity.scan_scores, similarity.bfan_scores):
        want = fn(images.astype(np.float32), captions.astype(np.float32), cap_lens)
        got = fn(jnp.asarray(images, jnp.bfloat16), jnp.asarray(captions, jnp.bfloat16),
                 cap_lens)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, atol=0.05)


# ---------------------------------------------------------------------------------- errors


def test_bad_input_raises_one_clear_error():
    images, captions, cap_lens, _ = make_sets(16)
    cases = [
        (similarity.scan_scores, dict(agg="avg"), "unknown agg='avg'; valid: logsumexp"),
        (similarity.scan_scores, dict(direction="both"), "unknown direction='both'"),
        (similarity.scan_scores, dict(raw_feature_norm="l1norm"), "unknown raw_feature_norm"),
        (similarity.bfan_scores, dict(focal="soft"), "unknown focal='soft'; valid: equal, prob"),
        (similarity.scan_scores, dict(block_images=0), "block_images must be an integer >= 1"),
        (similarity.bfan_scores, dict(block_captions=2.5), "block_captions must be an integer"),
        (similarity.scan_scores, dict(region_lens=np.array([1, 2])), "region_lens as an integer"),
        (similarity.bfan_scores, dict(region_lens=np.array([1, 4, 2])), "1 <= region_lens <= 3"),
    ]
    for fn, options, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            fn(images, captions, cap_lens, **options)
    shape_cases = [
        ((images, captions[..., :4], cap_lens), "with the same D; got (3, 3, 5) and (4, 6, 4)"),
        ((images[0], captions, cap_lens), "expects images [Ni, R, D]"),
        ((images, captions, cap_lens[:3]), "cap_lens as an integer [4] array"),
        ((images, captions, cap_lens.astype(np.float32)), "cap_lens as an integer [4] array"),
        ((images, captions, np.array([0, 1, 2, 3])), "1 <= cap_lens <= 6"),
        ((images, captions, np.array([1, 7, 2, 3])), "1 <= cap_lens <= 6"),
    ]
    for fn in (similarity.scan_scores, similarity.bfan_scores):
        for args, message in shape_cases:
            with pytest.raises(ValueError, match=re.escape(message)):
                fn(*args)
