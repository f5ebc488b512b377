"""The mining kernels of AOQ round 2: exact lists against brute force, both backends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itm_jax.aoq import kernel


# Tiny problems compile far longer than they run.
pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _data(n=150, d=16, seed=0, max_caps=7):
    """Images with 1..max_caps captions each (captions near their image, so positives would top
    the lists if they were not excluded), duplicate pictures (equal ids at 5/17, 10/11/12) and
    exact ties (images 2 and 3 and the first two captions of image 8 have equal embeddings)."""
    rng = np.random.default_rng(seed)
    cap_to_img = np.repeat(np.arange(n), rng.integers(2, max_caps + 1, n))
    ids = 10 * np.arange(n)
    ids[5], ids[11], ids[12] = ids[17], ids[10], ids[10]
    img = _unit(rng.standard_normal((n, d)))
    img[3] = img[2]
    cap = _unit(img[cap_to_img] + 0.7 * rng.standard_normal((len(cap_to_img), d)))
    first = np.flatnonzero(cap_to_img == 8)[0]
    cap[first + 1] = cap[first]
    return img, cap, cap_to_img, ids


def _brute(img, cap, cap_to_img, ids, h_t, h_i):
    """NumPy reference: ``(i2t, i2t_scores, t2i, t2i_scores)`` from the full score matrix."""
    s = img.astype(np.float64) @ cap.T.astype(np.float64)
    s[ids[:, None] == ids[cap_to_img][None, :]] = -np.inf
    i2t = np.argsort(-s, axis=1, kind="stable")[:, :h_t]
    t2i = np.argsort(-s.T, axis=1, kind="stable")[:, :h_i]
    return i2t, np.take_along_axis(s, i2t, 1), t2i, np.take_along_axis(s.T, t2i, 1)


def _check(got: kernel.Mined, img, cap, cap_to_img, ids, h_t, h_i):
    """Equal to the reference by score (tolerating float32 rounding and the order of exact ties),
    each score that of its pair, descending, no positive, no repeat."""
    _, ref_t, _, ref_i = _brute(img, cap, cap_to_img, ids, h_t, h_i)
    assert got.i2t.shape == (len(img), h_t) and got.t2i.shape == (len(cap), h_i)
    assert got.i2t.dtype == got.t2i.dtype == np.int32
    np.testing.assert_allclose(got.i2t_scores, ref_t, atol=2e-6)
    np.testing.assert_allclose(got.t2i_scores, ref_i, atol=2e-6)
    pair_t = np.einsum("nd,nkd->nk", img, cap[got.i2t])
    pair_i = np.einsum("md,mkd->mk", cap, img[got.t2i])
    np.testing.assert_allclose(got.i2t_scores, pair_t, atol=2e-6)
    np.testing.assert_allclose(got.t2i_scores, pair_i, atol=2e-6)
    for scores, lists in ((got.i2t_scores, got.i2t), (got.t2i_scores, got.t2i)):
        step = np.diff(scores, axis=1)
        assert (step <= 0).all() and ((step < 0) | (np.diff(lists, axis=1) > 0)).all()
    assert not (ids[cap_to_img][got.i2t] == ids[:, None]).any()
    assert not (ids[got.t2i] == ids[cap_to_img][:, None]).any()
    for lists in (got.i2t, got.t2i):
        assert (np.diff(np.sort(lists, axis=1), axis=1) > 0).all()


@pytest.mark.parametrize("devices,block", [(1, 32), (1, 96), (4, 32)])
def test_lists_equal_brute_force(devices, block):
    # 150 images: neither blocks of 32 or 96 nor steps of 4 x 32 divide it.
    img, cap, cap_to_img, ids = _data()
    got = kernel.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=40, h_i=12,
                             block_size=block, devices=jax.devices()[:devices])
    _check(got, img, cap, cap_to_img, ids, 40, 12)


def test_clustered_images_are_recomputed(monkeypatch):
    # Runs of 40 near-identical images: a caption's top images fill its groups of 32 beyond the
    # 5 kept, the check fails and those captions are recomputed over every image.
    rng = np.random.default_rng(3)
    base = rng.standard_normal((5, 16))
    img = _unit(np.repeat(base, 40, axis=0) + 0.01 * rng.standard_normal((200, 16)))
    cap_to_img = np.arange(200)
    cap = _unit(img + 0.5 * rng.standard_normal((200, 16)))
    ids = np.arange(200)
    redone = []
    exact = kernel._exact_columns_fn
    monkeypatch.setattr(kernel, "_exact_columns_fn",
                        lambda caps, *a, **kw: redone.append(1) or exact(caps, *a, **kw))
    got = kernel.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=30, h_i=20, block_size=64,
                             devices=jax.devices()[:1])
    assert redone
    _check(got, img, cap, cap_to_img, ids, 30, 20)


def test_group_top_keeps_the_largest():
    rng = np.random.default_rng(4)
    x = np.round(rng.standard_normal((3, 32, 50)), 1).astype(np.float32)  # many ties
    x[0, 5:, 7] = -np.inf
    values, member, bound = jax.jit(lambda a: kernel._group_top(a, 5))(jnp.asarray(x))
    order = np.argsort(-x, axis=1, kind="stable")  # ties: lower member first
    np.testing.assert_array_equal(member, order[:, :5].transpose(1, 0, 2))
    np.testing.assert_array_equal(values, np.take_along_axis(x, order, 1)[:, :5].transpose(1, 0, 2))
    np.testing.assert_array_equal(bound, np.take_along_axis(x, order, 1)[:, 5])


def test_faiss_backend_agrees():
    pytest.importorskip("faiss")
    img, cap, cap_to_img, ids = _data()
    got = kernel.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=40, h_i=12,
                             backend="faiss", block_size=64)
    _check(got, img, cap, cap_to_img, ids, 40, 12)
    ours = kernel.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=40, h_i=12,
                              devices=jax.devices()[:1])
    np.testing.assert_allclose(got.i2t_scores, ours.i2t_scores, atol=2e-6)
    np.testing.assert_allclose(got.t2i_scores, ours.t2i_scores, atol=2e-6)
    assert (got.i2t == ours.i2t).mean() > 0.99 and (got.t2i == ours.t2i).mean() > 0.99


def test_h_beyond_the_negatives_is_rejected():
    img, cap, cap_to_img, ids = _data(n=20)
    with pytest.raises(ValueError, match="h_i=19 exceeds the 17 negatives of caption"):
        kernel.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=5, h_i=19)


def test_any_number_of_devices_mines_the_same_bytes():
    # Each device merges its own range of images into its own lists, merged at the end; exact
    # ties between images of different devices' ranges (149 = 1, 75 = 4) resolve as on one.
    img, cap, cap_to_img, ids = _data()
    img[149], img[75] = img[1], img[4]
    mined = [kernel.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=40, h_i=12,
                                block_size=32, devices=jax.devices()[:k]) for k in (1, 2, 3)]
    _check(mined[0], img, cap, cap_to_img, ids, 40, 12)
    for other in mined[1:]:
        for a, b in zip(mined[0], other):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _sets(n=70, regions=3, words=4, d=8, seed=5):
    """Region and word sets (ragged captions, 1-3 captions per image), L2-normalised per item."""
    rng = np.random.default_rng(seed)
    cap_to_img = np.repeat(np.arange(n), rng.integers(1, 4, n))
    ids = np.arange(n)
    ids[7] = ids[9]  # a duplicate picture
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa
    img = unit(rng.standard_normal((n, regions, d)))
    cap = {"words": unit(img[cap_to_img, :1] + rng.standard_normal((len(cap_to_img), words, d))),
           "length": rng.integers(1, words + 1, len(cap_to_img)).astype(np.int32)}
    return img, cap, cap_to_img, ids


@pytest.mark.parametrize("name, options", [
    ("scan", (("agg", "logsumexp"), ("direction", "t2i"), ("lambda_lse", 6.0),
              ("lambda_softmax", 9.0), ("raw_feature_norm", "clipped_l2norm"))),
    ("bfan", (("focal", "prob"), ("lambda_softmax", 20.0))),
])
@pytest.mark.parametrize("devices", [1, 4])
def test_attention_scorer_lists_equal_its_score_matrix(name, options, devices):
    """Mining a set model's sets: the lists of its attention score matrix (scored here whole,
    by the scorer's own function), positives and duplicates excluded, on 1 and 4 devices."""
    from itm_jax.scoring import AttentionScorer

    img, cap, cap_to_img, ids = _sets()
    scorer = AttentionScorer(name, options)
    got = kernel.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=20, h_i=8, block_size=32,
                             devices=jax.devices()[:devices], scorer=scorer)
    s = np.asarray(scorer(jnp.asarray(img), jax.tree.map(jnp.asarray, cap)), np.float64)
    s[ids[:, None] == ids[cap_to_img][None, :]] = -np.inf
    ref_t = -np.sort(-s, axis=1)[:, :20]
    ref_i = -np.sort(-s.T, axis=1)[:, :8]
    np.testing.assert_allclose(got.i2t_scores, ref_t, atol=1e-5)
    np.testing.assert_allclose(got.t2i_scores, ref_i, atol=1e-5)
    np.testing.assert_allclose(got.i2t_scores, np.take_along_axis(s, got.i2t, 1), atol=1e-5)
    np.testing.assert_allclose(got.t2i_scores, np.take_along_axis(s.T, got.t2i, 1), atol=1e-5)
    assert not (ids[cap_to_img][got.i2t] == ids[:, None]).any()
    assert not (ids[got.t2i] == ids[cap_to_img][:, None]).any()
    if devices == 4:
        one = kernel.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=20, h_i=8,
                                 block_size=32, devices=jax.devices()[:1], scorer=scorer)
        for a, b in zip(got, one, strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="backend='faiss' searches dot products"):
        kernel.mine_arrays(img, cap, cap_to_img, h_t=20, h_i=8, backend="faiss", scorer=scorer)
