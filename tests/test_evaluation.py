"""Retrieval metrics (itm_jax.evaluation) against per-query argsort references and hand counts.

The references follow the VSE++ evaluation code: per query, argsort the gallery's scores in
descending order and read off the position of the ground truth (the best position among an
image's own captions). Argsort leaves the order of equal scores arbitrary, so after finding the
position they step back over equal scores: "strictly higher" means ties never raise a rank.

Random embeddings are small integers times a power of two, so every dot product is exact in
float32 whatever the summation order: the float64 NumPy scores and the float32 JAX block
matmuls agree bit for bit, and the ranks must match exactly, ties included.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from itm_jax.evaluation import metrics as ev

METRIC_KEYS = ("r1", "r5", "r10", "medr", "meanr")
FLAT_KEYS = tuple(f"{d}_{k}" for d in ("i2t", "t2i") for k in METRIC_KEYS) + ("rsum",)


# ---------------------------------------------------------------- references (NumPy, per query)


def _first_of_ties(sorted_scores, pos):
    while pos > 0 and sorted_scores[pos - 1] == sorted_scores[pos]:
        pos -= 1
    return pos


def ref_i2t_ranks(scores, cap_to_img):
    ranks = np.zeros(scores.shape[0], np.int64)
    for i in range(scores.shape[0]):
        d = scores[i]
        inds = np.argsort(d)[::-1]
        pos = min(np.where(inds == j)[0][0] for j in np.flatnonzero(cap_to_img == i))
        ranks[i] = _first_of_ties(d[inds], pos)
    return ranks


def ref_t2i_ranks(scores, cap_to_img):
    ranks = np.zeros(scores.shape[1], np.int64)
    for j in range(scores.shape[1]):
        d = scores[:, j]
        inds = np.argsort(d)[::-1]
        ranks[j] = _first_of_ties(d[inds], np.where(inds == cap_to_img[j])[0][0])
    return ranks


def exact_embeddings(rng, n, d, hi=500):
    # |entries| <= 500 and d <= 32: every partial sum is an integer below 2**24 (times 2**-12).
    return (rng.integers(-hi, hi + 1, (n, d)) * 2.0**-12).astype(np.float32)


def scores64(img, cap):
    return img.astype(np.float64) @ cap.astype(np.float64).T


# ---------------------------------------------------------------- parity with the references


@pytest.mark.parametrize(
    "n, caps, d, block",
    [
        (7, 1, 8, 3),  # 7 captions: two full blocks and a tail of one
        (20, 5, 16, 7),  # 100 captions, block does not divide M
        (20, 5, 16, 25),  # block divides M
        (33, 5, 32, None),  # default block larger than M: one block
        (40, 1, 16, 10),
    ],
)
def test_ranks_match_reference(n, caps, d, block):
    rng = np.random.default_rng(n * 100 + caps)
    img, cap = exact_embeddings(rng, n, d), exact_embeddings(rng, n * caps, d)
    c2i = np.repeat(np.arange(n), caps)
    s = scores64(img, cap)
    r_i2t, r_t2i = ev._ranks(img, cap, caps, None, need_captions=True, block_size=block)
    np.testing.assert_array_equal(r_i2t, ref_i2t_ranks(s, c2i))
    np.testing.assert_array_equal(r_t2i, ref_t2i_ranks(s, c2i))


def test_public_functions_match_reference():
    rng = np.random.default_rng(1)
    img, cap = exact_embeddings(rng, 30, 16), exact_embeddings(rng, 150, 16)
    c2i = np.repeat(np.arange(30), 5)
    s = scores64(img, cap)
    a, b = ev.i2t(img, cap), ev.t2i(img, cap, caps_per_image=5)
    np.testing.assert_array_equal(a["ranks"], ref_i2t_ranks(s, c2i))
    np.testing.assert_array_equal(b["ranks"], ref_t2i_ranks(s, c2i))
    assert a["ranks"].shape == (30,) and b["ranks"].shape == (150,)
    assert np.issubdtype(a["ranks"].dtype, np.integer)
    for out in (a, b):
        assert all(type(out[k]) is float for k in METRIC_KEYS)
    flat = ev.recall_metrics(jnp.asarray(img), jnp.asarray(cap))
    assert tuple(flat) == FLAT_KEYS and all(type(v) is float for v in flat.values())
    for k in METRIC_KEYS:
        assert flat[f"i2t_{k}"] == a[k] and flat[f"t2i_{k}"] == b[k]
    assert flat["rsum"] == pytest.approx(sum(x[f"r{k}"] for x in (a, b) for k in (1, 5, 10)))


def test_cap_to_img_uneven_counts_and_shuffled_order():
    rng = np.random.default_rng(2)
    n = 12
    counts = rng.integers(1, 7, n)  # 1 to 6 captions per image
    c2i = rng.permutation(np.repeat(np.arange(n), counts))  # captions not grouped by image
    img, cap = exact_embeddings(rng, n, 8), exact_embeddings(rng, len(c2i), 8)
    s = scores64(img, cap)
    r_i2t, r_t2i = ev._ranks(img, cap, 5, c2i, need_captions=True, block_size=5)
    np.testing.assert_array_equal(r_i2t, ref_i2t_ranks(s, c2i))
    np.testing.assert_array_equal(r_t2i, ref_t2i_ranks(s, c2i))
    np.testing.assert_array_equal(ev.i2t(img, cap, cap_to_img=c2i)["ranks"], r_i2t)


def test_t2i_allows_images_without_captions_i2t_does_not():
    rng = np.random.default_rng(3)
    c2i = np.array([0, 0, 2, 2, 2, 4])  # images 1 and 3 are distractors only
    img, cap = exact_embeddings(rng, 5, 8), exact_embeddings(rng, 6, 8)
    out = ev.t2i(img, cap, cap_to_img=c2i)
    np.testing.assert_array_equal(out["ranks"], ref_t2i_ranks(scores64(img, cap), c2i))
    for fn in (ev.i2t, ev.recall_metrics):
        with pytest.raises(ValueError, match=r"2 of 5 images have none \(first: \[1, 3\]\)"):
            fn(img, cap, cap_to_img=c2i)


# ---------------------------------------------------------------- t2i with image labels (PEDES)


def brute_t2i_label_ranks(scores, cap_to_img, labels):
    """Per caption: other-label images scoring strictly above its best same-label image."""
    ranks = np.zeros(scores.shape[1], np.int64)
    for j in range(scores.shape[1]):
        positives = [i for i in range(scores.shape[0]) if labels[i] == labels[cap_to_img[j]]]
        best = max(scores[i, j] for i in positives)
        ranks[j] = sum(1 for i in range(scores.shape[0])
                       if labels[i] != labels[cap_to_img[j]] and scores[i, j] > best)
    return ranks


def brute_recall_at_k(scores, cap_to_img, labels, k):
    """The CMPM code's ``recall_at_k``: a hit when some top-k image has the caption's label."""
    hits = 0
    for j in range(scores.shape[1]):
        top = np.argsort(-scores[:, j], kind="stable")[:k]
        hits += any(labels[i] == labels[cap_to_img[j]] for i in top)
    return 100.0 * hits / scores.shape[1]


@pytest.mark.parametrize("n, caps, d, block, persons", [
    (24, 2, 8, 5, 6),  # CUHK-PEDES layout: two captions per image, four images per person
    (30, 1, 16, None, 30),  # one person per image: the own-image protocol
    (17, 3, 8, 4, 1),  # one person: every caption ranks 0
])
def test_t2i_image_labels_match_brute_force(n, caps, d, block, persons):
    rng = np.random.default_rng(n + persons)
    img, cap = exact_embeddings(rng, n, d), exact_embeddings(rng, n * caps, d)
    c2i = rng.permutation(np.repeat(np.arange(n), caps))
    labels = 1000 + 7 * rng.permutation(np.arange(n) % persons)  # raw ids: only equality counts
    s = scores64(img, cap)
    _, got = ev._ranks(img, cap, caps, c2i, need_captions=False, block_size=block,
                       image_labels=labels)
    want = brute_t2i_label_ranks(s, c2i, labels)
    np.testing.assert_array_equal(got, want)
    out = ev.t2i(img, cap, cap_to_img=c2i, image_labels=labels)
    np.testing.assert_array_equal(out["ranks"], want)
    if persons == n:
        np.testing.assert_array_equal(want, ref_t2i_ranks(s, c2i))
    elif persons == 1:
        assert (want == 0).all()
    else:  # another image of the person outranks the caption's own image for some captions
        assert (want < ref_t2i_ranks(s, c2i)).any()
    # Without ties in a caption's scores, R@K is the top-K hit rate of the CMPM code.
    assert all(len(set(s[:, j])) == n for j in range(s.shape[1]))
    for k in (1, 5, 10):
        assert out[f"r{k}"] == pytest.approx(brute_recall_at_k(s, c2i, labels, k))


def test_t2i_image_labels_hand_built():
    # Images 0, 1 show person 5, image 2 person 9. Caption 0 (of image 0) scores image 1 best:
    # a hit at rank 0 by identity, rank 1 by own image. Caption 1 (of image 2) scores image 0
    # and image 1 above image 2: rank 2 either way.
    img = np.eye(3, dtype=np.float32)
    cap = np.array([[0.5, 0.9, 0.1], [0.8, 0.7, 0.3]], np.float32)
    own = ev.t2i(img, cap, cap_to_img=np.array([0, 2]))
    person = ev.t2i(img, cap, cap_to_img=np.array([0, 2]), image_labels=np.array([5, 5, 9]))
    np.testing.assert_array_equal(own["ranks"], [1, 2])
    np.testing.assert_array_equal(person["ranks"], [0, 2])
    assert (person["r1"], own["r1"]) == (50.0, 0.0)


def test_t2i_protocol_passes_the_identities():
    from itm_jax.evaluation.metrics import protocol_metrics

    img = np.eye(3, dtype=np.float32)
    cap = np.array([[0.5, 0.9, 0.1], [0.8, 0.7, 0.3]], np.float32)
    c2i, persons = np.array([0, 2]), np.array([5, 5, 9])
    own = protocol_metrics(img, cap, c2i, "t2i")
    person = protocol_metrics(img, cap, c2i, "t2i", image_labels=persons)
    assert (own["t2i_r1"], person["t2i_r1"]) == (0.0, 50.0)
    assert person["rsum"] == person["t2i_r1"] + person["t2i_r5"] + person["t2i_r10"]
    assert set(person) == {f"t2i_{k}" for k in METRIC_KEYS} | {"rsum"}


def test_trainer_evaluates_cuhk_pedes_by_identity():
    # The trainer's test metrics hand a source's per-image `labels` (CuhkPedesSource's
    # identities) to the t2i protocol; a stand-in trainer keeps this free of a model.
    from types import SimpleNamespace

    from itm_jax.evaluation.metrics import split_metrics

    img = np.eye(3, dtype=np.float32)
    cap = np.array([[0.5, 0.9, 0.1], [0.8, 0.7, 0.3]], np.float32)
    pedes = SimpleNamespace(cap_to_img=np.array([0, 2]), labels=np.array([2, 2, 0]))
    plain = SimpleNamespace(cap_to_img=np.array([0, 2]))  # a source without identities
    for src, r1 in ((pedes, 50.0), (plain, 0.0)):
        exp = SimpleNamespace(sources={"test": src}, config=SimpleNamespace(eval_protocol="t2i"),
                              scorer=None)
        assert split_metrics(exp, img, cap, "test")["t2i_r1"] == r1


def test_t2i_image_labels_errors():
    img, cap = np.ones((4, 3), np.float32), np.ones((8, 3), np.float32)
    with pytest.raises(ValueError, match=r"image_labels must have shape \[N\] = \(4,\)"):
        ev.t2i(img, cap, caps_per_image=2, image_labels=np.zeros(8, int))
    with pytest.raises(ValueError, match="image_labels must be an integer array"):
        ev.t2i(img, cap, caps_per_image=2, image_labels=np.zeros(4))


def test_sharded_inputs_give_the_same_ranks():
    rng = np.random.default_rng(4)
    img, cap = exact_embeddings(rng, 16, 8), exact_embeddings(rng, 80, 8)
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    img_s = jax.device_put(img, NamedSharding(mesh, P("data")))
    cap_s = jax.device_put(cap, NamedSharding(mesh, P("data")))
    want = ev._ranks(img, cap, 5, None, need_captions=True, block_size=16)
    got = ev._ranks(img_s, cap_s, 5, None, need_captions=True, block_size=16)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------- hand-built cases


def test_hand_built_3_images_6_captions():
    img = np.array([[1, 0], [0, 1], [1, 1]])
    cap = np.array([[2, 0], [0, 1], [0, 3], [1, 0], [1, 1], [3, -1]])  # 2 captions per image
    # S = img @ cap.T     cap: 0   1   2   3   4   5     owner: 0 0 1 1 2 2
    #   img0 (1, 0)          2   0   0   1   1   3
    #   img1 (0, 1)          0   1   3   0   1  -1
    #   img2 (1, 1)          2   1   3   1   2   2
    # i2t: img0 best own 2, cap5 (3) higher -> 1; img1 best own 3 -> 0;
    #      img2 best own 2, cap2 (3) higher, cap0 (2) only ties -> 1.
    # t2i: cap0 own 2, img2 ties -> 0; cap1 own 0 < 1, 1 -> 2; cap2 own 3, img2 ties -> 0;
    #      cap3 own 0 < 1, 1 -> 2; cap4 own 2 -> 0; cap5 own 2 < 3 -> 1.
    a = ev.i2t(img, cap, caps_per_image=2)
    b = ev.t2i(img, cap, caps_per_image=2)
    np.testing.assert_array_equal(a["ranks"], [1, 0, 1])
    np.testing.assert_array_equal(b["ranks"], [0, 2, 0, 2, 0, 1])
    assert (a["r1"], a["r5"], a["r10"]) == pytest.approx((100 / 3, 100, 100))
    assert a["medr"] == 2.0  # median(0, 1, 1) = 1
    assert a["meanr"] == pytest.approx(2 / 3 + 1)
    assert (b["r1"], b["r5"], b["r10"]) == (50.0, 100.0, 100.0)
    assert b["medr"] == 1.0  # median(0, 0, 0, 1, 2, 2) = 0.5, floored to 0
    assert b["meanr"] == pytest.approx(5 / 6 + 1)
    flat = ev.recall_metrics(img, cap, caps_per_image=2)
    assert flat["rsum"] == pytest.approx(100 / 3 + 100 + 100 + 50 + 100 + 100)
    half = ev.i2t(jnp.asarray(img, jnp.bfloat16), jnp.asarray(cap, jnp.bfloat16), caps_per_image=2)
    np.testing.assert_array_equal(half["ranks"], [1, 0, 1])  # bfloat16 inputs, float32 scores


def test_hand_built_with_explicit_cap_to_img():
    # The same scores as above with the captions listed in another order.
    img = np.array([[1, 0], [0, 1], [1, 1]])
    cap = np.array([[3, -1], [0, 1], [2, 0], [1, 1], [0, 3], [1, 0]])
    c2i = np.array([2, 0, 0, 2, 1, 1])
    np.testing.assert_array_equal(ev.i2t(img, cap, cap_to_img=c2i)["ranks"], [1, 0, 1])
    np.testing.assert_array_equal(ev.t2i(img, cap, cap_to_img=c2i)["ranks"], [1, 2, 0, 0, 0, 2])


# ---------------------------------------------------------------- ties


def test_identical_captions_all_rank_zero():
    img = np.eye(4, dtype=np.float32)
    cap = np.ones((20, 4), np.float32)  # every score is 1: all ties
    out = ev.recall_metrics(img, cap)
    assert out["i2t_r1"] == out["t2i_r1"] == 100.0
    assert out["i2t_medr"] == out["t2i_medr"] == out["i2t_meanr"] == out["t2i_meanr"] == 1.0


def test_duplicate_of_own_caption_under_another_image_does_not_count():
    img = np.array([[1.0, 0.0], [0.0, 1.0]])
    cap = np.array([[0.7, 0.1], [0.2, 0.1], [0.7, 0.1], [0.0, 1.0]])  # cap2 duplicates cap0
    a = ev.i2t(img, cap, caps_per_image=2)
    np.testing.assert_array_equal(a["ranks"], [0, 0])  # img0: cap2 ties its best own caption
    # cap2 (owner img1) scores 0.7 with img0 and 0.1 with img1: one image strictly higher.
    np.testing.assert_array_equal(ev.t2i(img, cap, caps_per_image=2)["ranks"], [0, 0, 1, 0])


def test_duplicate_images_tie_for_t2i():
    img = np.array([[1.0, 2.0], [1.0, 2.0], [-1.0, 0.0]])  # images 0 and 1 identical
    cap = np.array([[1.0, 1.0], [0.5, 1.0], [-2.0, 0.0]])
    np.testing.assert_array_equal(ev.t2i(img, cap, caps_per_image=1)["ranks"], [0, 0, 0])
    np.testing.assert_array_equal(ev.i2t(img, cap, caps_per_image=1)["ranks"], [0, 1, 0])


def test_random_ties_match_reference():
    # Entries in {-1, 0, 1} and D=3: only 7 distinct scores, so ties everywhere.
    rng = np.random.default_rng(5)
    img = exact_embeddings(rng, 25, 3, hi=1)
    cap = exact_embeddings(rng, 75, 3, hi=1)
    c2i = np.repeat(np.arange(25), 3)
    s = scores64(img, cap)
    r_i2t, r_t2i = ev._ranks(img, cap, 3, None, need_captions=True, block_size=8)
    np.testing.assert_array_equal(r_i2t, ref_i2t_ranks(s, c2i))
    np.testing.assert_array_equal(r_t2i, ref_t2i_ranks(s, c2i))


# ---------------------------------------------------------------- medr / meanr / R@K


def ranks_via_t2i(ranks):
    """t2i with D=1: image k scores k + 1, so a caption of image n-1-r has exactly r above it."""
    ranks = np.asarray(ranks)
    n = int(ranks.max()) + 1
    img = np.arange(1, n + 1, dtype=np.float32)[:, None]
    cap = np.ones((len(ranks), 1), np.float32)
    return ev.t2i(img, cap, cap_to_img=n - 1 - ranks)


@pytest.mark.parametrize(
    "ranks",
    [[0, 1, 2, 3], [0, 3, 3], [4, 0, 9, 10, 12, 0, 5, 1], [0], [20, 30], list(range(25))],
)
def test_recall_and_rank_definitions(ranks):
    out = ranks_via_t2i(ranks)
    np.testing.assert_array_equal(out["ranks"], ranks)
    r = np.asarray(ranks)
    for k in (1, 5, 10):
        assert out[f"r{k}"] == pytest.approx(100.0 * np.mean(r < k))
    assert out["medr"] == np.floor(np.median(r)) + 1
    assert out["meanr"] == pytest.approx(r.mean() + 1)


def test_even_length_median_is_floored():
    assert ranks_via_t2i([0, 1, 2, 3])["medr"] == 2.0  # median 1.5 -> 1, plus one
    assert ranks_via_t2i([20, 30])["medr"] == 26.0  # median 25
    assert ranks_via_t2i([0, 1])["medr"] == 1.0  # median 0.5 -> 0
    assert ranks_via_t2i([0, 1, 2, 3])["meanr"] == 2.5


# ---------------------------------------------------------------- COCO 1K (5 folds)


@pytest.mark.parametrize("caps", [1, 2])
def test_coco_1k_5fold_is_mean_over_consecutive_folds(caps):
    rng = np.random.default_rng(6)
    # D=2 with tiny integers: many near-misses, so each fold's numbers are far from trivial.
    img = exact_embeddings(rng, 5000, 2, hi=6)
    cap = exact_embeddings(rng, 5000 * caps, 2, hi=6)
    got = ev.coco_1k_5fold(img, cap, caps_per_image=caps)
    folds = [
        ev.recall_metrics(
            img[1000 * f : 1000 * (f + 1)], cap[1000 * caps * f : 1000 * caps * (f + 1)],
            caps_per_image=caps,
        )
        for f in range(5)
    ]
    assert tuple(got) == FLAT_KEYS
    for k in FLAT_KEYS[:-1]:
        assert got[k] == pytest.approx(np.mean([m[k] for m in folds]), rel=1e-12)
    recalls = [got[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert got["rsum"] == pytest.approx(sum(recalls), rel=1e-12)
    assert len({m["i2t_r1"] for m in folds}) > 1  # folds differ, so the slicing matters


def test_coco_1k_5fold_needs_the_5k_split():
    img, cap = np.zeros((1000, 4), np.float32), np.zeros((5000, 4), np.float32)
    with pytest.raises(ValueError, match="5K split"):
        ev.coco_1k_5fold(img, cap)
    with pytest.raises(ValueError, match="5K split"):
        ev.coco_1k_5fold(np.zeros((5000, 4)), np.zeros((20000, 4)), caps_per_image=5)


# ---------------------------------------------------------------- errors


def test_errors():
    img, cap = np.ones((4, 3), np.float32), np.ones((20, 3), np.float32)
    with pytest.raises(ValueError, match="img_emb must be 2-D"):
        ev.i2t(np.ones(3), cap)
    with pytest.raises(ValueError, match="cap_emb must be 2-D"):
        ev.t2i(img, np.ones((2, 10, 3)))
    with pytest.raises(ValueError, match="Embedding sizes differ"):
        ev.recall_metrics(img, np.ones((20, 4)))
    with pytest.raises(ValueError, match=r"20 captions for 4 images with caps_per_image=4"):
        ev.i2t(img, cap, caps_per_image=4)
    with pytest.raises(ValueError, match="positive int"):
        ev.t2i(img, cap, caps_per_image=0)
    with pytest.raises(ValueError, match="empty"):
        ev.t2i(np.ones((0, 3)), cap)
    with pytest.raises(ValueError, match=r"shape \[M\]"):
        ev.t2i(img, cap, cap_to_img=np.zeros(19, int))
    with pytest.raises(ValueError, match="integer array"):
        ev.t2i(img, cap, cap_to_img=np.zeros(20))
    bad = np.repeat(np.arange(4), 5)
    for value in (4, -1):
        bad[7] = value
        with pytest.raises(ValueError, match=rf"\[0, 4\).*caption 7 -> {value}"):
            ev.t2i(img, cap, cap_to_img=bad)
    # NaN scores compare False with everything and would silently give rank 0.
    nan_row = np.arange(20)[:, None] == 3
    with pytest.raises(ValueError, match="finite"):
        ev.recall_metrics(img, np.where(nan_row, np.nan, cap))
    with pytest.raises(ValueError, match="finite"):
        ev.t2i(img, np.where(nan_row, np.inf, cap))
    with pytest.raises(ValueError, match="finite"):  # an image without captions, t2i only
        ev.t2i(np.where(np.arange(4)[:, None] == 3, np.nan, img), cap, cap_to_img=np.arange(20) % 3)
