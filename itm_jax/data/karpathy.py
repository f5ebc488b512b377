"""TFDS builder for COCO / Flickr30K / Flickr8K with Karpathy's splits (no TensorFlow needed).

One example per image::

    image        tfds Image, JPEG bytes stored as-is (non-RGB or non-JPEG files re-encoded
                 to RGB JPEG, quality 95, no chroma subsampling), decoded to uint8 [H, W, 3]
    image_id     int64, COCO's ``cocoid`` (COCO) or Karpathy's ``imgid`` (Flickr)
    filename     str, e.g. ``COCO_val2014_000000391895.jpg``
    captions     Sequence(Text), the raw sentences, in the JSON's order
    caption_ids  Sequence(int64), Karpathy's ``sentid`` of each sentence

Configs (``karpathy/<config>``), with split sizes in images:

    coco           train 82,783 (Karpathy "train" only), val 5,000, test 5,000
    coco_restval   train 113,287 ("train" + "restval", what the VSE++/SCAN line of papers
                   trains on), val 5,000, test 5,000
    flickr30k      train 29,000, val 1,014, test 1,000
    flickr8k       train 6,000, val 1,000, test 1,000

Examples are written in the JSON's order (shuffling disabled), so index ``i`` of a split is the
``i``-th image of that split in Karpathy's file: a fixed, documented order, which fold-based
protocols (COCO 5-fold 1K test) need.

Manual files (TFDS ``manual_dir``), one folder for all three datasets::

    <manual_dir>/dataset_coco.json          \\
    <manual_dir>/dataset_flickr30k.json      > from caption_datasets.zip (Karpathy's splits)
    <manual_dir>/dataset_flickr8k.json      /
    <manual_dir>/coco/train2014/COCO_train2014_*.jpg   COCO 2014 train images
    <manual_dir>/coco/val2014/COCO_val2014_*.jpg       COCO 2014 val images
    <manual_dir>/flickr30k/<id>.jpg                    Flickr30K images (flickr30k-images/)
    <manual_dir>/flickr8k/<id>_<hash>.jpg              Flickr8K images (Flicker8k_Dataset/)

Prepare (writes ArrayRecord files, which ``tfds.data_source`` / :class:`TfdsSource` read)::

    python -m itm_jax.data.karpathy --config coco_restval \\
        --manual_dir ~/data/karpathy --data_dir ~/tensorflow_datasets

Building uses only TFDS's NumPy/protobuf path: images are passed as encoded bytes (TFDS would
call ``tf.image.encode_jpeg`` only for NumPy arrays) and ``file_format="array_record"`` needs no
``tf.io`` writer, so TensorFlow is never imported.

Bad manual files stop the build with a :class:`~itm_jax.errors.DataError` naming the file and
the fix: a missing or unparsable JSON, missing images, and images cut short or otherwise
undecodable (see ``_jpeg_bytes``), which are reported here rather than by a training run. The
check costs nothing for a complete JPEG, the common case; other files are decoded once.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from itm_jax.errors import DataError, UserError

# Where the manual files come from, in words that also fit one-line error messages.
_JSON_SOURCE = "caption_datasets.zip (https://cs.stanford.edu/people/karpathy/deepimagesent/)"
_IMAGE_SOURCES = {
    "coco": "COCO 2014 train and val images (https://cocodataset.org/#download)",
    "flickr30k": (
        "Flickr30K images (flickr30k-images/, from the request form of the Flickr30K authors: "
        "https://shannon.cs.illinois.edu/DenotationGraph/)"
    ),
    "flickr8k": (
        "Flickr8K images (Flicker8k_Dataset/, from "
        "https://hockenmaier.cs.illinois.edu/8k-pictures.html)"
    ),
}

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put Karpathy's split files and the images in one folder (pass it as `manual_dir`):

  <manual_dir>/dataset_coco.json, dataset_flickr30k.json, dataset_flickr8k.json
      from {_JSON_SOURCE}
  <manual_dir>/coco/train2014/*.jpg and <manual_dir>/coco/val2014/*.jpg
      {_IMAGE_SOURCES["coco"]}
  <manual_dir>/flickr30k/*.jpg
      {_IMAGE_SOURCES["flickr30k"]}
  <manual_dir>/flickr8k/*.jpg
      {_IMAGE_SOURCES["flickr8k"]}

Only the JSON and image folder of the config being built are needed. Preparing checks every
image, so a truncated or damaged file is reported by name.
"""

_CITATION = """\
@inproceedings{karpathy2015deep,
  title     = {Deep Visual-Semantic Alignments for Generating Image Descriptions},
  author    = {Karpathy, Andrej and Fei-Fei, Li},
  booktitle = {CVPR},
  year      = {2015}
}
"""

_JPEG_END = b"\xff\xd9"  # the EOI marker that ends every complete JPEG
_DESCRIPTION = "COCO / Flickr30K / Flickr8K with Karpathy's splits, one example per image."
_SPLITS = ("train", "val", "test")


@dataclasses.dataclass(eq=False, kw_only=True)
class KarpathyConfig(tfds.core.BuilderConfig):
    """Which JSON file, image folder and Karpathy splits make up each TFDS split."""

    dataset: str  # the JSON's "dataset" field: "coco", "flickr30k" or "flickr8k"
    image_dir: str  # folder under manual_dir holding this dataset's images
    train_from: tuple[str, ...] = ("train",)

    @property
    def json_file(self) -> str:
        return f"dataset_{self.dataset}.json"


class Karpathy(tfds.core.GeneratorBasedBuilder):
    """Karpathy-split COCO / Flickr30K / Flickr8K, one example per image with its captions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        KarpathyConfig(
            name="coco", dataset="coco", image_dir="coco",
            description="COCO 2014, train = Karpathy 'train' (82,783 images).",
        ),
        KarpathyConfig(
            name="coco_restval", dataset="coco", image_dir="coco",
            train_from=("train", "restval"),
            description="COCO 2014, train = Karpathy 'train' + 'restval' (113,287 images).",
        ),
        KarpathyConfig(
            name="flickr30k", dataset="flickr30k", image_dir="flickr30k",
            description="Flickr30K with Karpathy's splits.",
        ),
        KarpathyConfig(
            name="flickr8k", dataset="flickr8k", image_dir="flickr8k",
            description="Flickr8K with Karpathy's splits.",
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        # `DatasetInfo(builder=self)` rather than `dataset_info_from_configs`: the latter reads
        # README/CITATIONS files from a per-dataset package folder this module does not have.
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "image_id": np.int64,
                "filename": tfds.features.Text(),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "caption_ids": tfds.features.Sequence(np.int64),
            }),
            homepage="https://cs.stanford.edu/people/karpathy/deepimagesent/",
            citation=_CITATION,
            # Keep the JSON's order (examples are keyed by JSON position), so COCO's 1K test
            # folds are fixed blocks of Karpathy's file rather than of a hash order.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config: KarpathyConfig = self.builder_config
        manual_dir = dl_manager.manual_dir  # `prepare` has checked that it exists
        entries = _read_karpathy_json(manual_dir / config.json_file, config.dataset)
        image_root = manual_dir / config.image_dir
        wanted = {"train": set(config.train_from), "val": {"val"}, "test": {"test"}}
        splits = {
            split: [(i, e) for i, e in enumerate(entries) if e["split"] in wanted[split]]
            for split in _SPLITS
        }
        _check_images_exist(
            image_root, [e for split in splits.values() for _, e in split], config
        )
        return {split: self._generate_examples(items, image_root) for split, items in splits.items()}

    def _generate_examples(self, entries: list[tuple[int, dict]], image_root: epath.Path):
        source = _IMAGE_SOURCES[self.builder_config.dataset]
        for position, entry in entries:
            sentences = entry["sentences"]
            yield position, {
                "image": _jpeg_bytes(_image_path(image_root, entry), source),
                "image_id": int(entry.get("cocoid", entry["imgid"])),
                "filename": entry["filename"],
                "captions": [s["raw"] for s in sentences],
                "caption_ids": [int(s["sentid"]) for s in sentences],
            }


def _read_karpathy_json(path: epath.Path, dataset: str) -> list[dict]:
    again = f"unzip {path.name} again from {_JSON_SOURCE} into {path.parent}"
    if not path.exists():
        raise DataError(
            f"Karpathy split file {path} is missing: unzip {path.name} from {_JSON_SOURCE} "
            f"into {path.parent}."
        )
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON, probably truncated ({e}): {again}.") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: {again}.") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(
            f"{path} has no 'images' list, so it is not one of Karpathy's split files "
            '({"images": [{"filename", "split", "sentences", ...}], "dataset": ...}): '
            f"{again}."
        )
    if data.get("dataset", dataset) != dataset:
        raise DataError(
            f"{path} is Karpathy's {data['dataset']!r} file, but this config builds "
            f"{dataset!r}: put dataset_{dataset}.json from {_JSON_SOURCE} there."
        )
    entries = data["images"]
    for k, e in enumerate(entries):
        if not _is_entry(e):
            raise DataError(
                f"{path}: image entry {k} lacks Karpathy's fields ('filename', 'imgid' or "
                f"'cocoid', 'sentences' with 'raw' and 'sentid'): {again}."
            )
    bad = sorted({e.get("split") for e in entries} - {"train", "val", "test", "restval"}, key=str)
    if bad:
        raise DataError(
            f"{path}: unknown split names {bad}; expected train/val/test/restval: {again}."
        )
    return entries


def _is_entry(entry) -> bool:
    """Whether ``entry`` has the fields the builder reads (Karpathy's file has more)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
        return False
    sentences = entry.get("sentences")
    return (
        ("imgid" in entry or "cocoid" in entry)
        and isinstance(sentences, list)
        and all(isinstance(s, dict) and "raw" in s and "sentid" in s for s in sentences)
    )


def _image_path(image_root: epath.Path, entry: dict) -> epath.Path:
    # COCO entries carry "filepath" (train2014 / val2014); Flickr images sit in one folder.
    return image_root / entry.get("filepath", "") / entry["filename"]


def _check_images_exist(
    image_root: epath.Path, entries: list[dict], config: KarpathyConfig
) -> None:
    missing = [p for p in (_image_path(image_root, e) for e in entries) if not p.exists()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DataError(
            f"{len(missing)} of the {len(entries)} images of karpathy/{config.name} are missing "
            f"under {image_root} (e.g. {shown}): put the {_IMAGE_SOURCES[config.dataset]} there."
        )


def _jpeg_bytes(path: epath.Path, source: str) -> bytes:
    """The file's bytes if it is an RGB JPEG, else the image re-encoded as RGB JPEG.

    Re-encoding grayscale/CMYK/PNG files up front means every stored image decodes to
    ``[H, W, 3]`` with any JPEG decoder. TFDS stores the bytes unread, so a file cut short is
    caught here or else only when training reads it: an RGB JPEG is stored as-is when it ends
    with the end-of-image marker, which a cut removes (coded data never holds ``FF D9``; a
    cut in the metadata before it fails ``Image.open``); any other file is decoded, and PIL
    fails on data that ends early. ``source`` says where intact copies come from.
    """
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG" and image.mode == "RGB":
                if not data.endswith(_JPEG_END):  # cut short, or bytes after the image
                    image.load()
                return data
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=95, subsampling=0)
            return buffer.getvalue()
    except OSError as e:  # PIL's error for unidentified, truncated or corrupt image data
        raise DataError(
            f"Image {path} does not decode ({e}), so the file is truncated or damaged: "
            f"replace it with an intact copy from the {source}."
        ) from None


def prepare(
    config: str, *, manual_dir: epath.PathLike, data_dir: epath.PathLike | None = None
) -> tfds.core.DatasetBuilder:
    """Builds ``karpathy/<config>`` as ArrayRecord files under ``data_dir`` and returns the builder.

    A no-op when already prepared. ``data_dir`` defaults to TFDS's (``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``).
    """
    builder = Karpathy(config=config, data_dir=data_dir, file_format="array_record")
    manual_dir = epath.Path(manual_dir).expanduser()
    if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
        cfg: KarpathyConfig = builder.builder_config
        raise DataError(
            f"Manual folder {manual_dir} is missing or empty: put {cfg.json_file} there from "
            f"{_JSON_SOURCE}, and the {_IMAGE_SOURCES[cfg.dataset]} in "
            f"{manual_dir / cfg.image_dir}/; `python -m itm_jax.data.karpathy --help` shows "
            "the layout."
        )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=_DESCRIPTION,
        epilog=MANUAL_DOWNLOAD_INSTRUCTIONS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, choices=[c.name for c in Karpathy.BUILDER_CONFIGS])
    parser.add_argument("--manual_dir", required=True, help="folder laid out as shown below")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir to write to")
    args = parser.parse_args(argv)
    try:
        builder = prepare(args.config, manual_dir=args.manual_dir, data_dir=args.data_dir)
    except UserError as e:  # the message names the file and the fix; a traceback adds nothing
        parser.exit(e.exit_code, f"{parser.prog}: error: {e}\n")
    print(f"Prepared {builder.info.full_name} in {builder.data_dir}: {dict(builder.info.splits)}")


if __name__ == "__main__":
    main()
