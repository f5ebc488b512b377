"""Karpathy TFDS builder and TfdsSource, on tiny generated JSON + JPEG files (no TensorFlow)."""

import io
import json
import pickle
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from itm_jax.data import karpathy
from itm_jax.data.pipeline import eval_batches
from itm_jax.data.source import CaptionedSource
from itm_jax.data.tfds_source import TfdsSource
from itm_jax.errors import DataError

# (split, number of captions) per image, in JSON order.
FLICKR = [("train", 5), ("test", 5), ("train", 6), ("val", 5), ("train", 5), ("test", 5)]
COCO = [("restval", 5), ("train", 5), ("val", 5), ("test", 7), ("train", 5), ("restval", 6)]


def _write_image(path, index, mode="RGB", fmt="JPEG"):
    # Smooth colour gradients (distinct per image), so JPEG re-encoding stays close.
    h, w = 24 + 2 * index, 32 - index
    base = np.random.default_rng(index).uniform(30, 200, 3)
    ramp = np.linspace(0, 50, w)[None, :, None] + np.linspace(0, 20, h)[:, None, None]
    pixels = (base + ramp).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)


def _entry(i, split, num_captions, **extra):
    sentences = [
        {"raw": f"image {i} says {k}", "tokens": ["image", str(i), "says", str(k)], "sentid": 100 * i + k}
        for k in range(num_captions)
    ]
    return {"imgid": i, "split": split, "sentids": [s["sentid"] for s in sentences],
            "sentences": sentences, **extra}


def _write_flickr8k(manual):
    entries = []
    for i, (split, n) in enumerate(FLICKR):
        filename = f"{1000 + i}_abc.jpg"
        # Image 2 is grayscale and image 4 a PNG under a .jpg name: both must be re-encoded.
        mode, fmt = {2: ("L", "JPEG"), 4: ("RGB", "PNG")}.get(i, ("RGB", "JPEG"))
        _write_image(manual / "flickr8k" / filename, i, mode, fmt)
        entries.append(_entry(i, split, n, filename=filename))
    (manual / "dataset_flickr8k.json").write_text(json.dumps({"images": entries, "dataset": "flickr8k"}))
    return entries


def _write_coco(manual):
    entries = []
    for i, (split, n) in enumerate(COCO):
        folder = "train2014" if split == "train" else "val2014"
        filename = f"COCO_{folder}_{i:012d}.jpg"
        _write_image(manual / "coco" / folder / filename, i)
        entries.append(_entry(i, split, n, filename=filename, filepath=folder, cocoid=5000 + i))
    (manual / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return entries


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Builds flickr8k, coco and coco_restval once into one data_dir."""
    root = tmp_path_factory.mktemp("karpathy")
    manual, data_dir = root / "manual", root / "data"
    flickr, coco = _write_flickr8k(manual), _write_coco(manual)
    karpathy.main(["--config", "flickr8k", "--manual_dir", str(manual), "--data_dir", str(data_dir)])
    for config in ("coco", "coco_restval"):
        karpathy.prepare(config, manual_dir=manual, data_dir=data_dir)
    return {"manual": manual, "data_dir": data_dir, "flickr8k": flickr, "coco": coco}


def _expected(entries, splits):
    return [(i, e) for i, e in enumerate(entries) if e["split"] in splits]


def _check_split(src, expected, image_root, id_key):
    assert isinstance(src, CaptionedSource)
    assert src.num_images == len(expected)
    captions = [(j, s) for j, (_, e) in enumerate(expected) for s in e["sentences"]]
    assert src.num_captions == len(captions)
    np.testing.assert_array_equal(src.cap_to_img, [j for j, _ in captions])
    for c, (_, s) in enumerate(captions):
        item = src.caption(c)
        assert item["caption"] == s["raw"] and item["caption_id"] == s["sentid"]
        assert isinstance(item["caption"], str) and item["caption_id"].dtype == np.int64
    for j, (_, e) in enumerate(expected):
        item = src.image(j)
        assert item["image_id"] == e[id_key] and item["label"] == j
        assert item["image"].dtype == np.uint8 and item["image"].ndim == 3
        with Image.open(image_root / e.get("filepath", "") / e["filename"]) as original:
            reference = np.asarray(original.convert("RGB"))
        if e.get("_exact", True):
            np.testing.assert_array_equal(item["image"], reference)
        else:
            assert item["image"].shape == reference.shape
            assert np.abs(item["image"].astype(int) - reference).mean() < 4


def test_flickr8k_splits_captions_ids_and_images(built):
    entries = built["flickr8k"]
    for i in (2, 4):  # re-encoded files decode close to, not exactly as, the original
        entries[i]["_exact"] = False
    for split in ("train", "val", "test"):
        src = TfdsSource("karpathy/flickr8k", split, data_dir=built["data_dir"])
        _check_split(src, _expected(entries, {split}), built["manual"] / "flickr8k", "imgid")
    # The grayscale file is stored as 3 equal channels.
    gray = TfdsSource("karpathy/flickr8k", "train", data_dir=built["data_dir"]).image(1)["image"]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    # TFDS's own reader sees the same examples, in JSON order.
    test = tfds.data_source("karpathy/flickr8k", split="test", data_dir=built["data_dir"], download=False)
    assert [int(ex["image_id"]) for ex in test] == [i for i, _ in _expected(entries, {"test"})]
    assert [c.decode() for c in test[0]["captions"]] == [s["raw"] for s in entries[1]["sentences"]]
    assert "tensorflow" not in sys.modules


def test_coco_configs_train_with_and_without_restval(built):
    entries, data_dir, root = built["coco"], built["data_dir"], built["manual"] / "coco"
    cases = {
        ("coco", "train"): {"train"},
        ("coco_restval", "train"): {"train", "restval"},
        ("coco_restval", "test"): {"test"},
        ("coco", "val"): {"val"},
    }
    for (config, split), splits in cases.items():
        src = TfdsSource(f"karpathy/{config}", split, data_dir=data_dir)
        _check_split(src, _expected(entries, splits), root, "cocoid")
    info = tfds.builder_from_directory(data_dir / "karpathy" / "coco_restval" / "1.0.0").info
    assert {k: v.num_examples for k, v in info.splits.items()} == {"train": 4, "val": 1, "test": 1}
    assert "tensorflow" not in sys.modules


def test_max_captions_per_image_keeps_the_first_k(built):
    src = TfdsSource("karpathy/coco_restval", "train", data_dir=built["data_dir"], max_captions_per_image=5)
    assert src.num_captions == 5 * src.num_images  # the 6-caption restval image is cut to 5
    np.testing.assert_array_equal(src.cap_to_img, np.repeat(np.arange(4), 5))
    last = _expected(built["coco"], {"train", "restval"})[-1][1]
    assert [src.caption(c)["caption_id"] for c in range(15, 20)] == last["sentids"][:5]
    with pytest.raises(ValueError, match="max_captions_per_image"):
        TfdsSource("karpathy/coco", "test", data_dir=built["data_dir"], max_captions_per_image=0)


def test_source_pickles_without_record_handles_and_reads_the_same(built):
    src = TfdsSource("karpathy/flickr8k", "train", data_dir=built["data_dir"])
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.cap_to_img, src.cap_to_img)
    assert clone.caption(7) == src.caption(7)
    np.testing.assert_array_equal(clone.image(2)["image"], src.image(2)["image"])
    assert len(pickle.dumps(src)) < 10_000  # index only: no records, no image bytes


def test_eval_batches_over_tfds_source_in_a_worker_process(built):
    src = TfdsSource("karpathy/flickr8k", "train", data_dir=built["data_dir"])

    def run(workers):
        return list(eval_batches(src, batch_size=2, kind="images", worker_count=workers, shard_index=0, shard_count=1))

    local, worker = run(0), run(1)
    assert len(local) == len(worker) == 2
    for a, b in zip(local, worker):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert local[0]["image"].shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in local]), [True, True, True, False])


def _data_error(path, match, fn, *args, **kwargs):
    """The one-line DataError of ``fn(*args, **kwargs)``, which must name ``path``."""
    with pytest.raises(DataError, match=match) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_manual_files_name_the_file_and_where_to_get_it(tmp_path):
    def build(manual):
        karpathy.prepare("flickr8k", manual_dir=manual, data_dir=tmp_path / "data")

    message = _data_error(tmp_path / "nowhere", "Manual folder .* is missing or empty", build,
                          tmp_path / "nowhere")
    assert "dataset_flickr8k.json" in message and "deepimagesent" in message
    assert str(tmp_path / "nowhere" / "flickr8k") in message and "8k-pictures" in message

    manual = tmp_path / "manual"
    (manual / "flickr8k").mkdir(parents=True)  # images folder present, JSON missing
    message = _data_error(manual / "dataset_flickr8k.json", "is missing: unzip", build, manual)
    assert "caption_datasets.zip" in message and "deepimagesent" in message

    _write_flickr8k(manual)
    for name in ("1003_abc.jpg", "1005_abc.jpg"):
        (manual / "flickr8k" / name).unlink()
    message = _data_error(manual / "flickr8k" / "1003_abc.jpg",
                          "2 of the 6 images of karpathy/flickr8k are missing", build, manual)
    assert "1005_abc.jpg" in message and "8k-pictures" in message


def test_malformed_json_names_the_file_and_the_fix(tmp_path):
    manual = tmp_path / "manual"
    entries = _write_coco(manual)
    path = manual / "dataset_coco.json"

    def build():
        karpathy.prepare("coco", manual_dir=manual, data_dir=tmp_path / "data")

    path.write_text(path.read_text()[:300])  # a download or unzip cut short
    message = _data_error(path, "is not valid JSON, probably truncated", build)
    assert "unzip dataset_coco.json again from caption_datasets.zip" in message

    path.write_text(json.dumps({"images": entries, "dataset": "flickr8k"}))
    _data_error(path, "Karpathy's 'flickr8k' file, but this config builds 'coco'", build)

    del entries[3]["sentences"][1]["sentid"]
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    _data_error(path, "image entry 3 lacks Karpathy's fields", build)


@pytest.mark.parametrize("name, keep, zeros", [
    ("1001_abc.jpg", -100, False),  # an RGB JPEG, stored as-is: only its scan data is cut
    ("1001_abc.jpg", -2, False),  # only the end-of-image marker is cut
    ("1001_abc.jpg", -100, True),  # a download that stopped in a preallocated, zeroed file
    ("1001_abc.jpg", 200, False),  # cut inside the headers
    ("1004_abc.jpg", -100, False),  # a PNG under a .jpg name, re-encoded
])
def test_truncated_image_fails_the_prepare_naming_the_file(tmp_path, name, keep, zeros):
    manual, data_dir = tmp_path / "manual", tmp_path / "data"
    _write_flickr8k(manual)
    image = manual / "flickr8k" / name
    intact = image.read_bytes()
    image.write_bytes(intact[:keep] + bytes(len(intact[keep:]) if zeros else 0))
    message = _data_error(image, "does not decode", karpathy.prepare, "flickr8k",
                          manual_dir=manual, data_dir=data_dir)
    assert "truncated or damaged: replace it with an intact copy" in message
    assert "8k-pictures" in message
    # Nothing was left prepared: reading says so, and the repaired folder prepares.
    _data_error(data_dir, "is not prepared", TfdsSource, "karpathy/flickr8k", "train",
                data_dir=data_dir)
    image.write_bytes(intact)
    karpathy.prepare("flickr8k", manual_dir=manual, data_dir=data_dir)
    assert TfdsSource("karpathy/flickr8k", "train", data_dir=data_dir).num_images == 3


def test_bytes_after_a_complete_jpeg_are_kept(tmp_path):
    manual, data_dir = tmp_path / "manual", tmp_path / "data"
    _write_flickr8k(manual)
    image = manual / "flickr8k" / "1001_abc.jpg"  # test image 0
    with Image.open(image) as original:
        pixels = np.asarray(original)
    image.write_bytes(image.read_bytes() + b"camera trailer")  # decodes: not a damaged file
    karpathy.prepare("flickr8k", manual_dir=manual, data_dir=data_dir)
    src = TfdsSource("karpathy/flickr8k", "test", data_dir=data_dir)
    np.testing.assert_array_equal(src.image(0)["image"], pixels)


def test_a_damaged_image_already_prepared_names_the_example(tmp_path, monkeypatch):
    # As prepared by a version that stored bytes without decoding them.
    manual, data_dir = tmp_path / "manual", tmp_path / "data"
    _write_flickr8k(manual)
    image = manual / "flickr8k" / "1001_abc.jpg"  # test image 0, Karpathy imgid 1
    image.write_bytes(image.read_bytes()[:-100])
    monkeypatch.setattr(karpathy, "_jpeg_bytes", lambda path, source: path.read_bytes())
    karpathy.prepare("flickr8k", manual_dir=manual, data_dir=data_dir)
    src = TfdsSource("karpathy/flickr8k", "test", data_dir=data_dir)
    message = _data_error(data_dir, r"Image 0 \(image_id 1\) of TFDS dataset 'karpathy/flickr8k' "
                          "split 'test' .* does not decode", src.image, 0)
    assert "prepare it again" in message


def test_damaged_prepared_files_say_to_prepare_again(tmp_path):
    manual, data_dir = tmp_path / "manual", tmp_path / "data"
    _write_flickr8k(manual)
    karpathy.prepare("flickr8k", manual_dir=manual, data_dir=data_dir)
    (shard,) = (data_dir / "karpathy" / "flickr8k" / "1.0.0").glob("*-test.array_record-*")
    shard.unlink()  # e.g. an interrupted copy of the prepared folder
    message = _data_error(shard, "is incomplete or damaged", TfdsSource, "karpathy/flickr8k",
                          "test", data_dir=data_dir)
    assert "delete that folder and prepare it again" in message


def test_prepare_command_prints_one_line_without_traceback(tmp_path, capsys):
    manual = tmp_path / "manual"
    _write_flickr8k(manual)
    (manual / "dataset_flickr8k.json").write_text('{"images": [')
    argv = ["--config", "flickr8k", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "d")]
    with pytest.raises(SystemExit) as e:
        karpathy.main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: " in err and "Traceback" not in err
    assert str(manual / "dataset_flickr8k.json") in err


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
    message = _data_error(tmp_path, r"TFDS dataset 'karpathy/flickr30k' is not prepared in .*: run "
                          r"`python -m itm_jax\.data\.karpathy --config flickr30k --manual_dir DIR "
                          f"--data_dir {tmp_path}`", TfdsSource, "karpathy/flickr30k", "test",
                          data_dir=tmp_path)
    assert "--help" in message
    _data_error(tmp_path, "array_record", TfdsSource, "coco_captions", "test", data_dir=tmp_path)


def test_reads_tfds_coco_captions_layout_from_files_without_tensorflow(tmp_path):
    # Same name, config, version and features as TFDS's coco_captions builder (whose own code
    # needs TensorFlow), generating three tiny images. Registration is skipped, so TfdsSource
    # can only succeed by reading the prepared files.
    with tfds.core.registered.skip_registration():

        class CocoCaptionsFiles(tfds.core.GeneratorBasedBuilder):
            name = "coco_captions"
            VERSION = tfds.core.Version("1.1.0")
            BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2014")]

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "image/filename": tfds.features.Text(),
                    "image/id": np.int64,
                    "objects": tfds.features.Sequence({
                        "id": np.int64, "area": np.int64, "bbox": tfds.features.BBoxFeature(),
                        "label": tfds.features.ClassLabel(num_classes=80), "is_crowd": np.bool_,
                    }),
                    "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64}),
                }))

            def _split_generators(self, dl_manager):
                return {"test": self._generate_examples()}

            def _generate_examples(self):
                for i in range(3):
                    buffer = io.BytesIO()
                    Image.fromarray(np.full((8, 9 + i, 3), 40 * i, np.uint8)).save(buffer, format="JPEG")
                    yield i, {
                        "image": buffer.getvalue(), "image/filename": f"{i}.jpg", "image/id": 700 + i,
                        "objects": [{"id": 1, "area": 4, "bbox": tfds.features.BBox(0.1, 0.2, 0.5, 0.6),
                                     "label": 3, "is_crowd": False}],
                        "captions": [{"text": f"caption {i}.{k}", "id": 10 * i + k} for k in range(i + 1)],
                    }

        CocoCaptionsFiles(data_dir=tmp_path, file_format="array_record").download_and_prepare()

    src = TfdsSource("coco_captions", "test", data_dir=tmp_path)
    assert (src.num_images, src.num_captions) == (3, 6)
    for j in range(3):  # TFDS shuffled the records: recover each image's generation index
        item = src.image(j)
        i = int(item["image_id"]) - 700
        assert item["image"].shape == (8, 9 + i, 3) and item["label"] == j
        rows = np.flatnonzero(src.cap_to_img == j)
        assert [src.caption(c)["caption"] for c in rows] == [f"caption {i}.{k}" for k in range(i + 1)]
        assert [int(src.caption(c)["caption_id"]) for c in rows] == [10 * i + k for k in range(i + 1)]
    assert "tensorflow" not in sys.modules
