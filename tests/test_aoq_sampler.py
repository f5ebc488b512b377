"""AOQ round 2's offline-negative sampler against the authors' sampling (Chen et al., Sec. 3.2),
and the batch extra that adds its items to the training examples."""

import numpy as np
import pytest

from itm_jax.aoq.extra import OfflineNegatives
from itm_jax.aoq.sampler import OfflineSampler
from itm_jax.data.pipeline import train_loader

CPI = 5


class Source:
    """``n`` images with 5 captions each; feature of image i = i; images 0 and 1 share an id."""

    def __init__(self, n=40):
        self.n = n
        self.image_ids = np.arange(n, dtype=np.int64)
        self.image_ids[1] = 0  # a duplicate picture at two indices

    num_images = property(lambda self: self.n)
    num_captions = property(lambda self: self.n * CPI)
    cap_to_img = property(lambda self: np.repeat(np.arange(self.n), CPI))

    def image(self, index):
        return {"image_id": self.image_ids[index], "label": np.int64(index),
                "image_feat": np.full((3,), index, np.float32)}

    def caption(self, index):
        return {"caption": f"c {index}", "caption_id": np.int64(index)}


def tokenize(caption):
    return np.array([int(caption.split()[1]), 7], np.int32), np.int32(2)


def mined(src, h_t, h_i, seed=0):
    """Random lists that never hold a positive (by id), as the miner guarantees."""
    rng = np.random.default_rng(seed)
    ids, c2i = src.image_ids, src.cap_to_img
    i2t = np.stack([rng.permutation(np.flatnonzero(ids[c2i] != ids[i]))[:h_t]
                    for i in range(src.num_images)])
    t2i = np.stack([rng.permutation(np.flatnonzero(ids != ids[c2i[t]]))[:h_i]
                    for t in range(src.num_captions)])
    return i2t, t2i


def draws(sampler, src, count, seed=0):
    rng = np.random.default_rng(seed)
    caps = rng.integers(src.num_captions, size=count)
    return caps, [sampler.draw(int(src.cap_to_img[t]), int(t), rng) for t in caps]


def test_draws_follow_the_authors_sampling_and_ranks_are_uniform():
    src = Source()
    i2t, t2i = mined(src, 30, 6)
    sampler = OfflineSampler(src, i2t, t2i, h_t=20, h_i=4, captions_per_image=CPI,
                             resample_matching=False)
    caps, out = draws(sampler, src, 4000)
    ranks = np.array([d["rank"] for d in out])
    assert ranks.min() == 0 and ranks.max() == 19
    counts = np.bincount(ranks, minlength=20)
    # Uniform over h_t: chi-square with 19 dof, p ~ 1e-4 at 50.
    chi2 = ((counts - 200.0) ** 2 / 200.0).sum()
    assert chi2 < 50, counts
    for t, d in zip(caps, out):
        i = src.cap_to_img[t]
        assert d["t_off"] == i2t[i, d["rank"]]
        assert d["i_off"] == t2i[t, d["rank"] // CPI]  # the image rank follows the caption rank
        assert d["i_tilde"] == src.cap_to_img[d["t_off"]]
        assert src.cap_to_img[d["t_tilde"]] == d["i_off"]
    # t_tilde is uniform over the five captions of i_off.
    within = np.bincount([d["t_tilde"] % CPI for d in out], minlength=CPI)
    assert within.min() > 650, within


def matching_lists(src):
    """Lists where t_off describes i_off for about half the draws."""
    # Image i: ranks 0-4 are the captions of image i+2, ranks 5-9 those of image i+3.
    i2t = np.stack([(np.arange(10) + (i + 2) * CPI) % src.num_captions
                    for i in range(src.num_images)])
    t2i = np.stack([np.full(2, (t // CPI + 2) % src.num_images) for t in range(src.num_captions)])
    return i2t, t2i


def test_resample_matching_removes_matching_derived_pairs():
    src = Source()
    src.image_ids = ids = np.arange(src.n)  # no duplicates here: the next test has them
    i2t, t2i = matching_lists(src)
    for resample in (False, True):
        sampler = OfflineSampler(src, i2t, t2i, h_t=10, h_i=2, captions_per_image=CPI,
                                 resample_matching=resample)
        _, out = draws(sampler, src, 2000, seed=1)
        match = np.mean([ids[d["i_tilde"]] == ids[d["i_off"]] for d in out])
        # The (i_off, t_off) pair matches exactly when (i_tilde, t_tilde) does.
        assert all((ids[src.cap_to_img[d["t_off"]]] == ids[d["i_off"]])
                   == (ids[d["i_tilde"]] == ids[src.cap_to_img[d["t_tilde"]]]) for d in out)
        if resample:
            assert match == 0
        else:  # ranks 0-4 point at image i+2, which t2i always names
            assert 0.4 < match < 0.6, match


def test_matching_is_decided_by_image_id_not_index():
    src = Source(n=12)
    # Caption 0's image is index 0 (id 0); every list points at image index 1, which has id 0
    # too, and at its captions.
    i2t = np.tile(np.arange(CPI, 2 * CPI), (12, 1))
    t2i = np.ones((60, 1), np.int64)
    sampler = OfflineSampler(src, i2t, t2i, h_t=5, h_i=1, captions_per_image=CPI)
    with pytest.raises(ValueError, match="resample_matching=False"):
        sampler.draw(5, 25, np.random.default_rng(0))


def test_sampler_rejects_lists_that_do_not_fit():
    src = Source()
    i2t, t2i = mined(src, 30, 6)
    with pytest.raises(ValueError, match="re-run itm-mine"):
        OfflineSampler(src, i2t[:-1], t2i, h_t=20, h_i=4, captions_per_image=CPI)
    with pytest.raises(ValueError, match="mine longer lists"):
        OfflineSampler(src, i2t, t2i, h_t=31, h_i=4, captions_per_image=CPI)
    with pytest.raises(ValueError, match="h_i >= ceil"):
        OfflineSampler(src, i2t, t2i, h_t=30, h_i=5, captions_per_image=CPI)


def test_train_loader_adds_the_offline_items_reproducibly():
    src = Source()
    i2t, t2i = mined(src, 30, 6)
    sampler = OfflineSampler(src, i2t, t2i, h_t=30, h_i=6, captions_per_image=CPI)

    def batches(seed):
        it = iter(train_loader(src, global_batch_size=8, seed=seed, tokenize=tokenize,
                               shard_index=0, shard_count=1,
                               extras=[OfflineNegatives(src, sampler)]))
        return [next(it) for _ in range(5)]

    a, b, other = batches(0), batches(0), batches(1)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert any((x["t_off_tokens"] != y["t_off_tokens"]).any() for x, y in zip(a, other))
    ids = src.image_ids
    for batch in a:
        assert batch["i_off_image_feat"].shape == batch["image_feat"].shape == (8, 3)
        assert batch["t_off_tokens"].shape == batch["tokens"].shape
        i_off = batch["i_off_image_feat"][:, 0].astype(int)
        i_tilde = batch["i_tilde_image_feat"][:, 0].astype(int)
        t_off, t_tilde = batch["t_off_tokens"][:, 0], batch["t_tilde_tokens"][:, 0]
        rank = batch["offline_rank"]
        np.testing.assert_array_equal(t_off, i2t[batch["image_index"], rank])
        np.testing.assert_array_equal(i_off, t2i[batch["caption_index"], rank // CPI])
        np.testing.assert_array_equal(i_tilde, src.cap_to_img[t_off])
        np.testing.assert_array_equal(src.cap_to_img[t_tilde], i_off)
        assert (ids[i_off] != ids[i_tilde]).all()
        assert (ids[i_off] != ids[batch["image_index"]]).all()
