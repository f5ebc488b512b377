"""The CUHK-PEDES reader on a generated reid_raw.json and a few small PNG/JPEG images."""

import json

import numpy as np
import pytest
from PIL import Image

from itm_jax.data.cuhk_pedes import CuhkPedesSource
from itm_jax.data.datasets import get_sources
from itm_jax.data.source import CaptionedSource, PairSource
from itm_jax.errors import ConfigError, DataError

# (split, person id, file_path, number of captions)
RECORDS = [
    ("train", 40, "CUHK01/0040001.png", 2),
    ("test", 7, "test_query/p7_s1.jpg", 2),
    ("train", 12, "CUHK03/12_1.png", 1),
    ("train", 40, "CUHK01/0040002.png", 3),
    ("val", 99, "Market/0099_c1.png", 2),
    ("train", 5, "VIPER/005.png", 2),
]


def _pixels(r):
    """Distinct image per record: height 6 + r, width 4, values from the record index."""
    return (np.arange((6 + r) * 4 * 3).reshape(6 + r, 4, 3) * (r + 1) % 256).astype(np.uint8)


def _make(root):
    records = []
    for r, (split, pid, path, n) in enumerate(RECORDS):
        caps = [f"record {r} caption {k}" for k in range(n)]
        records.append({
            "split": split, "captions": caps, "file_path": path, "id": pid,
            "processed_tokens": [c.split() for c in caps],
        })
        img_path = root / "imgs" / path
        img_path.parent.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(_pixels(r))
        if path.endswith(".jpg"):
            im.save(img_path, quality=100)
        else:
            # Saved with an alpha channel, which the reader must drop.
            im.convert("RGBA").save(img_path)
    (root / "reid_raw.json").write_text(json.dumps(records))
    return records


def test_train_split(tmp_path):
    _make(tmp_path)
    src = CuhkPedesSource(tmp_path, "train")
    assert isinstance(src, CaptionedSource)
    # Train records are 0, 2, 3, 5 with 2, 1, 3, 2 captions.
    assert (src.num_images, src.num_captions, src.num_identities) == (4, 8, 3)
    np.testing.assert_array_equal(src.cap_to_img, [0, 0, 1, 2, 2, 2, 3, 3])
    # Raw ids 40, 12, 40, 5 -> labels by ascending raw id: 5->0, 12->1, 40->2.
    np.testing.assert_array_equal(src.labels, [2, 1, 2, 0])
    for i, r in enumerate([0, 2, 3, 5]):
        item = src.image(i)
        assert item["image"].dtype == np.uint8 and item["image"].shape == (6 + r, 4, 3)
        np.testing.assert_array_equal(item["image"], _pixels(r))
        assert item["image_id"] == r and item["identity"] == RECORDS[r][1]
        assert item["label"] == src.labels[i]
        for key in ("image_id", "label", "identity"):
            assert item[key].dtype == np.int64
    # caption_id counts every caption of the file in record order: record 2's is the 5th.
    assert src.caption(2) == {"caption": "record 2 caption 0", "caption_id": 4}
    assert src.caption(7)["caption"] == "record 5 caption 1"
    assert src.caption(7)["caption_id"] == 2 + 2 + 1 + 3 + 2 + 1


def test_test_split_jpeg(tmp_path):
    _make(tmp_path)
    src = CuhkPedesSource(tmp_path, "test")
    assert (src.num_images, src.num_captions, src.num_identities) == (1, 2, 1)
    item = src.image(0)
    assert item["image"].shape == (7, 4, 3) and item["label"] == 0 and item["identity"] == 7
    # JPEG is lossy even at quality 100; the decoded image stays close.
    assert np.abs(item["image"].astype(int) - _pixels(1)).mean() < 8


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_pair_source_is_consistent(tmp_path, split):
    records = _make(tmp_path)
    src = CuhkPedesSource(tmp_path, split)
    pairs = PairSource(src)
    assert len(pairs) == sum(len(r["captions"]) for r in records if r["split"] == split)
    for j in range(len(pairs)):
        item = pairs[j]
        r = int(item["image_id"])
        assert records[r]["split"] == split
        assert item["caption"] in records[r]["captions"]
        assert item["identity"] == records[r]["id"]
        assert item["image_index"] == src.cap_to_img[j] and item["caption_index"] == j


def _data_error(path, match, fn, *args):
    """The one-line DataError of ``fn(*args)``, which must name ``path``."""
    with pytest.raises(DataError, match=match) as e:
        fn(*args)
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_files(tmp_path):
    message = _data_error(tmp_path / "reid_raw.json", "annotation file", CuhkPedesSource,
                          tmp_path, "train")
    assert "on request" in message
    _make(tmp_path)
    (tmp_path / "imgs").rename(tmp_path / "images")
    _data_error(tmp_path / "imgs", "image folder", CuhkPedesSource, tmp_path, "train")
    (tmp_path / "images").rename(tmp_path / "imgs")
    # Every image of the split is checked, not only the first.
    for r in (3, 5):
        (tmp_path / "imgs" / RECORDS[r][2]).unlink()
    message = _data_error(tmp_path / "imgs" / RECORDS[3][2], "2 of the 4 train images of .*"
                          "reid_raw.json are missing", CuhkPedesSource, tmp_path, "train")
    assert f"{tmp_path / 'imgs' / RECORDS[5][2]} (record 5)" in message and "on request" in message
    src = CuhkPedesSource(tmp_path, "test")
    image = tmp_path / "imgs" / RECORDS[1][2]
    image.unlink()
    _data_error(image, r"p7_s1.jpg \(record 1\) is missing", src.image, 0)


@pytest.mark.parametrize("keep", [-40, 100])  # the last scan bytes cut; most of the file cut
def test_truncated_image_names_the_file(tmp_path, keep):
    _make(tmp_path)
    src = CuhkPedesSource(tmp_path, "test")
    path = tmp_path / "imgs" / RECORDS[1][2]
    path.write_bytes(path.read_bytes()[:keep])
    message = _data_error(path, r"\(record 1\) does not decode", src.image, 0)
    assert "truncated" in message and "intact copy" in message


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda recs: recs[3].pop("captions"), "record 3: missing field"),
        (lambda recs: recs[2].update(split="dev"), "record 2: split 'dev'"),
        (lambda recs: recs[1].update(id="7"), "record 1: id must be an integer"),
        (lambda recs: recs[0].update(captions=[]), "record 0: captions must be a non-empty"),
        (lambda recs: recs.__setitem__(4, "x"), "record 4: expected an object"),
    ],
)
def test_malformed_records(tmp_path, mutate, match):
    records = _make(tmp_path)
    mutate(records)
    (tmp_path / "reid_raw.json").write_text(json.dumps(records))
    _data_error(tmp_path / "reid_raw.json", match, CuhkPedesSource, tmp_path, "train")


def test_bad_split_and_json(tmp_path):
    _make(tmp_path)
    with pytest.raises(ValueError, match="Unknown CUHK-PEDES split 'dev'"):
        CuhkPedesSource(tmp_path, "dev")
    records = [r for r in json.loads((tmp_path / "reid_raw.json").read_text())
               if r["split"] != "val"]
    (tmp_path / "reid_raw.json").write_text(json.dumps(records))
    json_path = tmp_path / "reid_raw.json"
    _data_error(json_path, "no 'val' records", CuhkPedesSource, tmp_path, "val")
    json_path.write_text('{"split": "train"}')
    _data_error(json_path, "JSON list", CuhkPedesSource, tmp_path, "train")
    json_path.write_text(json.dumps(records)[:-30])  # a download cut short
    message = _data_error(json_path, "not valid JSON, probably truncated", CuhkPedesSource,
                          tmp_path, "train")
    assert "copy it again" in message and "on request" in message


def test_get_sources_needs_a_data_dir(tmp_path):
    _make(tmp_path)
    sources = get_sources({"name": "cuhk_pedes", "data_dir": str(tmp_path)})
    assert [sources[s].num_images for s in ("train", "val", "test")] == [4, 1, 1]
    with pytest.raises(ConfigError, match="data.data_dir, which is empty.*reid_raw.json and imgs/"):
        get_sources({"name": "cuhk_pedes", "data_dir": ""})
