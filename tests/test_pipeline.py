"""Grain pipelines: determinism, process sharding, drop remainder, resume, eval padding/mask."""

import grain
import numpy as np
import pytest

from itm_jax.data.pipeline import eval_batches, train_loader
from itm_jax.data.preprocess import EvalTransform, TrainTransform

MAX_LEN = 6


class ArraySource:
    """In-memory CaptionedSource: image i has ``caps[i]`` captions; images or features."""

    def __init__(self, caps=(3, 2, 4, 1, 3, 2, 5), features=False):
        self.features = features
        self._cap_to_img = np.repeat(np.arange(len(caps)), caps)

    @property
    def num_images(self):
        return int(self._cap_to_img[-1]) + 1

    @property
    def num_captions(self):
        return len(self._cap_to_img)

    @property
    def cap_to_img(self):
        return self._cap_to_img

    def image(self, index):
        item = {"image_id": np.int64(100 + index), "label": np.int64(index)}
        if self.features:
            item["image_feat"] = np.full((3, 4), index, np.float32)
        else:  # sizes vary per image, as decoded JPEGs do
            rng = np.random.default_rng(index)
            item["image"] = rng.integers(0, 256, (20 + index, 16 + 2 * index, 3), dtype=np.uint8)
        return item

    def caption(self, index):
        return {"caption": " ".join(["tok"] * (1 + index % 4)) + f" c{index}", "caption_id": np.int64(1000 + index)}


def tokenize(caption):
    """Words -> their lengths, padded to MAX_LEN (a stand-in for Vocabulary.encode)."""
    words = caption.split()[:MAX_LEN]
    tokens = np.zeros(MAX_LEN, np.int32)
    tokens[: len(words)] = [len(w) for w in words]
    return tokens, np.int32(len(words))


def take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def features_loader(**kw):
    args = dict(global_batch_size=4, seed=0, tokenize=tokenize, shard_index=0, shard_count=1)
    return train_loader(ArraySource(features=True), **{**args, **kw})


def test_train_batch_schema_and_consistency():
    src = ArraySource()
    (batch,) = take(train_loader(src, global_batch_size=4, seed=0, tokenize=tokenize,
                                 image_transform=TrainTransform(size=16), shard_index=0, shard_count=1), 1)
    assert set(batch) == {"image", "tokens", "length", "image_id", "caption_id", "label",
                          "image_index", "caption_index"}
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["tokens"].shape == (4, MAX_LEN) and batch["tokens"].dtype == np.int32
    assert batch["length"].dtype == np.int32
    for k in ("image_id", "caption_id", "label", "image_index", "caption_index"):
        assert batch[k].shape == (4,) and batch[k].dtype == np.int64
    np.testing.assert_array_equal(batch["image_index"], src.cap_to_img[batch["caption_index"]])
    np.testing.assert_array_equal(batch["image_id"], 100 + batch["image_index"])
    np.testing.assert_array_equal(batch["caption_id"], 1000 + batch["caption_index"])
    for row, c in enumerate(batch["caption_index"]):
        tokens, length = tokenize(src.caption(c)["caption"])
        np.testing.assert_array_equal(batch["tokens"][row], tokens)
        assert batch["length"][row] == length


def test_same_seed_same_stream_and_other_seed_differs():
    a = take(train_loader(ArraySource(), global_batch_size=4, seed=3, tokenize=tokenize,
                          image_transform=TrainTransform(size=8), shard_index=0, shard_count=1), 6)
    b = take(train_loader(ArraySource(), global_batch_size=4, seed=3, tokenize=tokenize,
                          image_transform=TrainTransform(size=8), shard_index=0, shard_count=1), 6)
    c = take(train_loader(ArraySource(), global_batch_size=4, seed=4, tokenize=tokenize,
                          image_transform=TrainTransform(size=8), shard_index=0, shard_count=1), 6)
    assert_batches_equal(a, b)
    order = lambda batches: np.concatenate([x["caption_index"] for x in batches])
    assert not np.array_equal(order(a), order(c))
    # Same caption drawn twice (different epochs or seeds) gets different augmentations.
    images = {}
    for batch in a + c:
        for i, img in zip(batch["caption_index"], batch["image"]):
            images.setdefault(int(i), []).append(img)
    repeated = [v for v in images.values() if len(v) > 1]
    assert repeated and all(not np.array_equal(v[0], v[1]) for v in repeated)


def test_one_epoch_drops_the_remainder_and_repeats_nothing():
    n = ArraySource().num_captions  # 20
    batches = list(features_loader(global_batch_size=6, num_epochs=1))
    assert len(batches) == n // 6
    seen = np.concatenate([b["caption_index"] for b in batches])
    assert len(set(seen.tolist())) == len(seen) == 18
    # Each epoch is shuffled anew; batches run across the epoch boundary.
    two = np.concatenate([b["caption_index"] for b in features_loader(global_batch_size=6, num_epochs=2)])
    assert len(two) == 6 * (2 * n // 6)
    assert not np.array_equal(two[:n], two[n : 2 * n])
    assert np.bincount(two, minlength=n).max() == 2
    assert sorted(two[:n].tolist()) == list(range(n))


def test_process_shards_partition_every_global_batch():
    whole = take(features_loader(global_batch_size=6, seed=5), 5)
    parts = [take(features_loader(global_batch_size=6, seed=5, shard_index=p, shard_count=2), 5) for p in range(2)]
    for t, batch in enumerate(whole):
        a, b = parts[0][t], parts[1][t]
        assert a["caption_index"].shape == (3,)
        assert not set(a["caption_index"].tolist()) & set(b["caption_index"].tolist())
        for k in batch:
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), batch[k], err_msg=k)


def test_process_shards_get_the_same_number_of_batches():
    # 20 captions, 1 epoch, global batch 8: 2 full global batches, each shard gets 2 halves.
    counts = [len(list(features_loader(global_batch_size=8, num_epochs=1, shard_index=p, shard_count=2)))
              for p in range(2)]
    assert counts == [2, 2]


def test_resume_from_iterator_state_continues_the_same_stream():
    ds = train_loader(ArraySource(), global_batch_size=4, seed=1, tokenize=tokenize,
                      image_transform=TrainTransform(size=8), shard_index=0, shard_count=1)
    uninterrupted = take(ds, 7)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    resumed = iter(ds)
    resumed.set_state(state)
    assert_batches_equal([next(resumed) for _ in range(4)], uninterrupted[3:])


def test_resume_through_grain_orbax_checkpoint_handler(tmp_path):
    ds = features_loader(seed=2)
    uninterrupted = take(ds, 5)
    it = iter(ds)
    next(it), next(it)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(tmp_path, args=grain.checkpoint.CheckpointSave(it))
    restored = handler.restore(tmp_path, args=grain.checkpoint.CheckpointRestore(iter(ds)))
    assert_batches_equal([next(restored) for _ in range(3)], uninterrupted[2:])


def test_feature_source_passes_features_through():
    (batch,) = take(features_loader(), 1)
    assert "image" not in batch and batch["image_feat"].shape == (4, 3, 4)
    np.testing.assert_array_equal(batch["image_feat"][:, 0, 0], batch["image_index"])
    with pytest.raises(ValueError, match="precomputed 'image_feat'"):
        features_loader(image_transform=TrainTransform())
    with pytest.raises(ValueError, match="precomputed 'image_feat'"):
        eval_batches(ArraySource(features=True), batch_size=4, image_transform=EvalTransform(),
                     shard_index=0, shard_count=1)


def test_default_image_transforms_give_224_crops():
    (batch,) = take(train_loader(ArraySource(), global_batch_size=2, seed=0, tokenize=tokenize,
                                 shard_index=0, shard_count=1), 1)
    assert batch["image"].shape == (2, 224, 224, 3)
    (batch, *_) = list(eval_batches(ArraySource(), batch_size=4, shard_index=0, shard_count=1))
    assert batch["image"].shape == (4, 224, 224, 3)


@pytest.mark.parametrize("kind", ["images", "captions"])
def test_eval_covers_every_item_once_in_order_with_padding_mask(kind):
    src = ArraySource(features=True)
    n = src.num_images if kind == "images" else src.num_captions  # 7 or 20
    batches = list(eval_batches(src, batch_size=6, kind=kind, tokenize=tokenize, shard_index=0, shard_count=1))
    assert len(batches) == -(-n // 6)
    key = "image_index" if kind == "images" else "caption_index"
    for b in batches:
        assert b["mask"].shape == (6,) and b["mask"].dtype == bool
        assert all(v.shape[0] == 6 for v in b.values())
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b[key] for b in batches])
    np.testing.assert_array_equal(index[mask], np.arange(n))
    assert mask.sum() == n and not mask[n:].any()
    pad = batches[-1]
    for k, v in pad.items():
        if k != "mask":
            assert not np.any(v[~pad["mask"]]), k  # pad rows are zeros
    if kind == "captions":
        np.testing.assert_array_equal(np.concatenate([b["image_index"] for b in batches])[mask], src.cap_to_img)
        first = batches[0]
        np.testing.assert_array_equal(first["tokens"][2], tokenize(src.caption(2)["caption"])[0])
    else:
        np.testing.assert_array_equal(np.concatenate([b["image_id"] for b in batches])[mask], 100 + np.arange(n))


def test_eval_sharded_across_processes_covers_everything_once():
    src = ArraySource(features=True)  # 20 captions, global batch 8: 3 batches, 4 pad rows
    shards = [list(eval_batches(src, batch_size=8, kind="captions", tokenize=tokenize,
                                shard_index=p, shard_count=2)) for p in range(2)]
    assert [len(s) for s in shards] == [3, 3]
    # The last global batch is rows 16..23: shard 0 holds 16..19, shard 1 only padding.
    assert shards[1][-1]["mask"].sum() == 0 and shards[0][-1]["mask"].all()
    real = np.concatenate([b["caption_index"][b["mask"]] for s in shards for b in s])
    assert sorted(real.tolist()) == list(range(20))
    whole = list(eval_batches(src, batch_size=8, kind="captions", tokenize=tokenize, shard_index=0, shard_count=1))
    for t, b in enumerate(whole):
        np.testing.assert_array_equal(
            np.concatenate([shards[0][t]["caption_index"], shards[1][t]["caption_index"]])[b["mask"]],
            b["caption_index"][b["mask"]],
        )


def test_train_loader_with_a_worker_process_matches_in_process():
    def run(workers):
        return take(train_loader(ArraySource(), global_batch_size=4, seed=9, tokenize=tokenize,
                                 image_transform=TrainTransform(size=8), worker_count=workers,
                                 shard_index=0, shard_count=1), 3)

    assert_batches_equal(run(1), run(0))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="multiple of shard_count=4"):
        features_loader(global_batch_size=6, shard_count=4)
    with pytest.raises(ValueError, match=r"shard_index must be in \[0, 2\)"):
        features_loader(shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="do not fill one global batch"):
        features_loader(global_batch_size=24, num_epochs=1)
    with pytest.raises(ValueError, match="needs tokenize"):
        eval_batches(ArraySource(), batch_size=4, kind="captions", shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="kind must be"):
        eval_batches(ArraySource(), batch_size=4, kind="pairs", shard_index=0, shard_count=1)


def test_shard_defaults_come_from_jax_processes():
    # A single-process run: defaults are shard 0 of 1, i.e. the whole global batch.
    (batch,) = take(train_loader(ArraySource(features=True), global_batch_size=4, seed=0, tokenize=tokenize), 1)
    assert batch["caption_index"].shape == (4,)
