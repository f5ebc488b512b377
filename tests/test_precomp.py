"""The precomp reader on small generated folders: both VSE++ row layouts, region sets, ids."""

import json
import pickle

import numpy as np
import pytest

from itm_jax.data.datasets import get_sources
from itm_jax.data.precomp import PrecompSource
from itm_jax.data.source import CaptionedSource, PairSource
from itm_jax.errors import ConfigError, DataError


def _data_error(path, match, *args, **kwargs):
    """The one-line DataError of ``PrecompSource(*args, **kwargs)``, which must name ``path``."""
    with pytest.raises(DataError, match=match) as e:
        PrecompSource(*args, **kwargs)
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    return message


def _make(tmp_path, *, n_images=4, c=5, per_caption=False, feat_shape=(6,), split="train"):
    """Writes ``{split}_ims.npy`` / ``{split}_caps.txt``; returns the per-image features."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n_images, *feat_shape)).astype(np.float32)
    rows = feats
    if per_caption:
        # Row 5 i + k = image i's features + k: the rows of an image differ (like crops), so a
        # test sees which row was read; the reader must read the first (k = 0).
        offsets = np.tile(np.arange(c, dtype=np.float32), n_images)
        rows = np.repeat(feats, c, axis=0) + offsets.reshape(-1, *(1,) * len(feat_shape))
    np.save(tmp_path / f"{split}_ims.npy", rows)
    captions = [f"caption {k} of image {i}" for i in range(n_images) for k in range(c)]
    (tmp_path / f"{split}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    return feats


@pytest.mark.parametrize("per_caption", [False, True])
def test_images_and_captions(tmp_path, per_caption):
    feats = _make(tmp_path, per_caption=per_caption)
    src = PrecompSource(tmp_path, "train")
    assert isinstance(src, CaptionedSource)
    assert (src.num_images, src.num_captions) == (4, 20)
    np.testing.assert_array_equal(src.cap_to_img, np.repeat(np.arange(4), 5))
    for i in range(4):
        item = src.image(i)
        assert item["image_feat"].dtype == np.float32 and item["image_feat"].shape == (6,)
        np.testing.assert_array_equal(item["image_feat"], feats[i])
        assert item["image_id"] == i and item["label"] == i
        assert item["image_id"].dtype == np.int64
    cap = src.caption(7)
    assert cap == {"caption": "caption 2 of image 1", "caption_id": 7}
    assert cap["caption_id"].dtype == np.int64


def test_region_features(tmp_path):
    feats = _make(tmp_path, n_images=3, feat_shape=(4, 8), split="test")
    src = PrecompSource(tmp_path, "test")
    assert src.feature_shape == (4, 8)
    for i in range(3):
        np.testing.assert_array_equal(src.image(i)["image_feat"], feats[i])


@pytest.mark.parametrize("mmap", [True, False])
def test_reads_match_the_array_and_are_copies(tmp_path, mmap):
    _make(tmp_path, n_images=5, feat_shape=(3, 4))
    full = np.load(tmp_path / "train_ims.npy")
    src = PrecompSource(tmp_path, "train", mmap=mmap)
    assert isinstance(src._feats, np.memmap) == mmap
    order = np.random.default_rng(1).permutation(5)
    for i in order:
        feat = src.image(i)["image_feat"]
        np.testing.assert_array_equal(feat, full[i])
        assert type(feat) is np.ndarray and feat.flags.owndata and feat.flags.writeable
        feat[...] = -1  # the source is unaffected
        np.testing.assert_array_equal(src.image(i)["image_feat"], full[i])


def test_caps_per_image(tmp_path):
    _make(tmp_path, n_images=3, c=2)
    src = PrecompSource(tmp_path, "train", caps_per_image=2)
    assert (src.num_images, src.num_captions) == (3, 6)
    np.testing.assert_array_equal(src.cap_to_img, [0, 0, 1, 1, 2, 2])


def test_pair_source_is_consistent(tmp_path):
    feats = _make(tmp_path, per_caption=True)
    pairs = PairSource(PrecompSource(tmp_path, "train"))
    assert len(pairs) == 20
    for j in range(20):
        item = pairs[j]
        i = j // 5
        assert item["image_index"] == i and item["caption_index"] == j
        assert item["caption"].endswith(f"of image {i}")
        np.testing.assert_array_equal(item["image_feat"], feats[i])


def test_ids_file_per_image(tmp_path):
    _make(tmp_path, n_images=3)
    (tmp_path / "train_ids.txt").write_text("391895\n522418\n184613\n")
    src = PrecompSource(tmp_path, "train")
    assert [int(src.image(i)["image_id"]) for i in range(3)] == [391895, 522418, 184613]
    assert [int(src.image(i)["label"]) for i in range(3)] == [0, 1, 2]


def test_ids_file_per_row(tmp_path):
    _make(tmp_path, n_images=2, per_caption=True)
    (tmp_path / "train_ids.txt").write_text("\n".join(["11"] * 5 + ["22"] * 5))
    np.testing.assert_array_equal(PrecompSource(tmp_path, "train").image_ids, [11, 22])
    (tmp_path / "train_ids.txt").write_text("\n".join(["11"] * 4 + ["22"] * 6))
    _data_error(tmp_path / "train_ids.txt", "must share its id", tmp_path, "train")


@pytest.mark.parametrize(
    "content, match", [("1\n2\n", "holds 2 image ids .* 3 images"), ("1\nx\n3\n", "integer")]
)
def test_bad_ids_file(tmp_path, content, match):
    _make(tmp_path, n_images=3)
    (tmp_path / "train_ids.txt").write_text(content)
    _data_error(tmp_path / "train_ids.txt", match, tmp_path, "train")


def test_synthetic_meta_ids(tmp_path):
    _make(tmp_path, n_images=3, split="dev")
    meta = {"image_ids": {"dev": [7, 8, 9], "train": [1]}}
    (tmp_path / "synthetic_meta.json").write_text(json.dumps(meta))
    np.testing.assert_array_equal(PrecompSource(tmp_path, "dev").image_ids, [7, 8, 9])
    # An ids file takes precedence over the metadata.
    (tmp_path / "dev_ids.txt").write_text("4\n5\n6\n")
    np.testing.assert_array_equal(PrecompSource(tmp_path, "dev").image_ids, [4, 5, 6])


@pytest.mark.parametrize(
    "meta, match",
    [
        ('{"image_ids": [1, 2, 3]}', "must map split names"),
        ('{"image_ids": {"dev": ["a", "b", "c"]}}', "must be a list of integers"),
        ('{"image_ids": {"dev": [1, 2]}}', "holds 2 image ids"),
        ("{", "not valid JSON"),
    ],
)
def test_bad_synthetic_meta(tmp_path, meta, match):
    _make(tmp_path, n_images=3, split="dev")
    (tmp_path / "synthetic_meta.json").write_text(meta)
    _data_error(tmp_path / "synthetic_meta.json", match, tmp_path, "dev")


def test_pickle_reopens_the_map(tmp_path):
    _make(tmp_path, n_images=3, feat_shape=(2, 3))
    src = PrecompSource(tmp_path, "train")
    clone = pickle.loads(pickle.dumps(src))
    # The pickle names the file instead of carrying the features.
    assert np.load(tmp_path / "train_ims.npy").tobytes() not in pickle.dumps(src)
    assert isinstance(clone._feats, np.memmap)
    np.testing.assert_array_equal(clone.image(2)["image_feat"], src.image(2)["image_feat"])


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown precomp split 'val'"):
        PrecompSource(tmp_path, "val")
    _data_error(tmp_path / "nowhere", "does not exist.*coco_precomp", tmp_path / "nowhere", "train")
    _data_error(tmp_path / "train_ims.npy", "train_ims.npy.*f30k_precomp", tmp_path, "train")
    _make(tmp_path, n_images=3)
    (tmp_path / "train_caps.txt").write_text("a\n" * 14)
    _data_error(tmp_path / "train_caps.txt", "14 captions for 3 feature rows.*15 captions",
                tmp_path, "train")
    np.save(tmp_path / "train_ims.npy", np.zeros(3, np.float32))
    _data_error(tmp_path / "train_ims.npy", r"\[N, F\] or \[N, R, F\]", tmp_path, "train")
    _make(tmp_path, n_images=3)
    src = PrecompSource(tmp_path, "train")
    with pytest.raises(IndexError, match="image index 3"):
        src.image(3)
    with pytest.raises(IndexError, match="caption index -1"):
        src.caption(-1)


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("keep", [60, -10, 0])  # inside the header, inside the data, empty
def test_truncated_features_name_the_file_and_the_release(tmp_path, mmap, keep):
    _make(tmp_path, n_images=3)
    ims = tmp_path / "train_ims.npy"
    ims.write_bytes(ims.read_bytes()[:keep])
    message = _data_error(ims, "not a readable .npy array", tmp_path, "train", mmap=mmap)
    assert "truncated" in message and "download it again" in message and "vsepp" in message


@pytest.mark.parametrize("content, match", [(b"", "is empty"), (b"a\xff\n" * 15, "not UTF-8")])
def test_empty_or_binary_captions_name_the_file(tmp_path, content, match):
    _make(tmp_path, n_images=3)
    (tmp_path / "train_caps.txt").write_bytes(content)
    message = _data_error(tmp_path / "train_caps.txt", match, tmp_path, "train")
    assert "download it again" in message


def test_get_sources_reads_the_configured_splits(tmp_path):
    for split, n in (("train", 4), ("dev", 2), ("testall", 3)):
        _make(tmp_path, n_images=n, split=split)
    cfg = {"name": "precomp", "data_dir": str(tmp_path), "test_split": "testall"}
    sources = get_sources(cfg)
    assert [sources[s].num_images for s in ("train", "val", "test")] == [4, 2, 3]
    with pytest.raises(ConfigError, match=r"data.test_split='val' .*test_split=test .* testall"):
        get_sources({**cfg, "test_split": "val"})
    with pytest.raises(ConfigError, match="data.data_dir, which is empty: pass --config.data.d"):
        get_sources({**cfg, "data_dir": ""})
