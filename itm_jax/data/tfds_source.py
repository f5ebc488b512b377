"""A :class:`~itm_jax.data.source.CaptionedSource` over a prepared TFDS dataset (ArrayRecord).

Reads two feature layouts, one example per image:

    ``karpathy/<config>`` (this package's builder):
        ``image``, ``image_id``, ``captions`` (Sequence(Text)), ``caption_ids``
    TFDS's own ``coco_captions`` (Karpathy splits train/val/test/restval):
        ``image``, ``image/id``, ``captions`` = Sequence({``text``, ``id``})

Example::

    src = TfdsSource("karpathy/coco_restval", "test", data_dir="~/tensorflow_datasets")
    src.num_images, src.num_captions          # 5000, 25010
    src.image(0)   # {"image": uint8 [H, W, 3], "image_id": int64, "label": int64 (= 0)}
    src.caption(7) # {"caption": str, "caption_id": int64}

The dataset is opened from its files (``dataset_info.json`` / ``features.json``), never by running
the generating builder's code: TFDS's ``coco_captions`` builder needs TensorFlow to instantiate,
its prepared files do not. It must have been prepared with ``file_format="array_record"``.

Cost of construction: captions are flattened once, by one pass over the split's records in which
only the caption fields are decoded (the JPEG bytes are read from disk, never decoded). That is
one sequential read of the split (about 19 GB for COCO train+restval, 0.7 GB for COCO test).
The caption index is kept in memory as concatenated UTF-8 plus offsets (~30 MB for COCO
train+restval) and travels with the source when Grain pickles it into worker processes, so
workers do not repeat the pass; they only re-open the record files.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import read_only_builder
from tensorflow_datasets.core.utils import file_utils

from itm_jax.errors import DataError

_INDEX_CHUNK = 1024  # records per batched read while indexing captions


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where a TFDS feature dict keeps the fields a CaptionedSource needs."""

    image_id: str
    caption_text: tuple[str, ...]  # path into the decoded example
    caption_id: tuple[str, ...]

    @property
    def caption_features(self) -> tuple[str, ...]:
        return tuple(sorted({self.caption_text[0], self.caption_id[0]}))


_KARPATHY = _Layout(image_id="image_id", caption_text=("captions",), caption_id=("caption_ids",))
_COCO_CAPTIONS = _Layout(
    image_id="image/id", caption_text=("captions", "text"), caption_id=("captions", "id")
)


def _layout_of(features: tfds.features.FeaturesDict, name: str) -> _Layout:
    keys = set(features.keys())
    if {"image", "image_id", "captions", "caption_ids"} <= keys:
        return _KARPATHY
    if {"image", "image/id", "captions"} <= keys:
        inner = getattr(features["captions"], "feature", None)  # Sequence({...}) -> {...}
        if isinstance(inner, tfds.features.FeaturesDict) and {"text", "id"} <= set(inner.keys()):
            return _COCO_CAPTIONS
    raise DataError(
        f"TFDS dataset {name!r} has features {sorted(keys)}; TfdsSource reads either "
        "karpathy/* (image, image_id, captions, caption_ids) or coco_captions "
        "(image, image/id, captions={text, id}): prepare one of those."
    )


def _open_records(name: str, split: str, data_dir: epath.PathLike | None):
    try:
        builder = read_only_builder.builder_from_files(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        # TFDS's own message spans several lines; the folders it searched are what matters.
        where = ", ".join(str(d) for d in file_utils.list_data_dirs(given_data_dir=data_dir))
        if name.startswith("karpathy"):
            how = (
                f"run `python -m itm_jax.data.karpathy --config "
                f"{name.partition('/')[2] or '<config>'} --manual_dir DIR --data_dir {where}` "
                "(`--help` shows what DIR holds)"
            )
        else:
            how = (
                "build it with TFDS and file_format='array_record' (`tfds build "
                f"{name} --file_format=array_record --data_dir {where}`, which needs "
                "TensorFlow), or use karpathy/coco_restval, which builds without TensorFlow"
            )
        raise DataError(f"TFDS dataset {name!r} is not prepared in {where}: {how}.") from None
    try:
        return builder.as_data_source(
            split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
    except NotImplementedError:
        raise DataError(
            f"TFDS dataset {name!r} in {builder.data_dir} is stored as "
            f"{builder.info.file_format}; random access needs ArrayRecord: prepare it again "
            "with file_format='array_record'."
        ) from None


def _get(example: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        example = example[key]
    return example


def _decode_rgb(data: bytes) -> np.ndarray:
    # Decoded here, not by TFDS: PIL's convert also handles CMYK/palette files that TFDS's
    # NumPy decoder would return with the wrong number of channels.
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


class TfdsSource:
    """One split of a prepared TFDS captioned-image dataset, as a ``CaptionedSource``.

    Args:
      name: TFDS name, e.g. ``"karpathy/coco_restval"``, ``"karpathy/flickr30k"``,
        ``"coco_captions"``.
      split: TFDS split, e.g. ``"test"``; TFDS split arithmetic (``"train+restval"``) works.
      data_dir: TFDS data dir; default TFDS's (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      max_captions_per_image: keep only each image's first ``k`` captions. Published COCO and
        Flickr numbers use exactly 5 per image (25,000 COCO test captions; Karpathy's file has
        25,010); ``None`` keeps all.

    Items: image ``{"image": uint8 [H, W, 3], "image_id": int64, "label": int64}`` with
    ``label`` the image's index in this split; caption ``{"caption": str, "caption_id": int64}``.
    """

    def __init__(
        self,
        name: str,
        split: str,
        *,
        data_dir: epath.PathLike | None = None,
        max_captions_per_image: int | None = None,
    ):
        if max_captions_per_image is not None and max_captions_per_image < 1:
            raise ValueError(f"max_captions_per_image must be >= 1 or None, got {max_captions_per_image}.")
        self.name = name
        self.split = split
        self.data_dir = None if data_dir is None else str(epath.Path(data_dir).expanduser())
        self.max_captions_per_image = max_captions_per_image
        self._open()
        self._build_caption_index()

    def _open(self) -> None:
        self._records = _open_records(self.name, self.split, self.data_dir)
        features = self._records.dataset_info.features
        self._layout = _layout_of(features, self.name)
        # Sub-dicts of the dataset's features: parsing with them skips every other field.
        self._image_features = tfds.features.FeaturesDict(
            {k: features[k] for k in ("image", self._layout.image_id)}
        )
        self._caption_features = tfds.features.FeaturesDict(
            {k: features[k] for k in self._layout.caption_features}
        )

    def _build_caption_index(self) -> None:
        texts, ids, counts = [], [], []
        for start in range(0, len(self._records), _INDEX_CHUNK):
            keys = list(range(start, min(start + _INDEX_CHUNK, len(self._records))))
            try:  # the first read of the split: shard files are opened lazily
                records = self._records.__getitems__(keys)
            except RuntimeError as e:  # ArrayRecord's error for a missing or truncated shard
                raise DataError(
                    f"TFDS dataset {self.name!r} in {self._records.dataset_info.data_dir} is "
                    f"incomplete or damaged ({e}): delete that folder and prepare it again."
                ) from None
            for record in records:
                example = self._caption_features.deserialize_example_np(record)
                text = list(_get(example, self._layout.caption_text))
                cid = list(_get(example, self._layout.caption_id))
                if len(text) != len(cid):
                    raise DataError(
                        f"TFDS dataset {self.name!r} split {self.split!r}: an image has "
                        f"{len(text)} captions but {len(cid)} caption ids, so its files are "
                        "inconsistent: delete and prepare it again."
                    )
                k = len(text) if self.max_captions_per_image is None else min(
                    len(text), self.max_captions_per_image
                )
                texts += [t if isinstance(t, bytes) else str(t).encode() for t in text[:k]]
                ids += cid[:k]
                counts.append(k)
        lengths = np.fromiter((len(t) for t in texts), np.int64, count=len(texts))
        self._offsets = np.concatenate([[0], np.cumsum(lengths)])
        self._text = np.frombuffer(b"".join(texts), np.uint8)
        self._caption_ids = np.asarray(ids, np.int64)
        self._cap_to_img = np.repeat(np.arange(len(counts), dtype=np.int64), counts)

    @property
    def num_images(self) -> int:
        return len(self._records)

    @property
    def num_captions(self) -> int:
        return len(self._caption_ids)

    @property
    def cap_to_img(self) -> np.ndarray:
        """``[num_captions]`` int64: index (in this split) of each caption's image."""
        return self._cap_to_img

    def image(self, index: int) -> dict[str, Any]:
        index = int(index)
        example = self._image_features.deserialize_example_np(
            self._records[index], decoders={"image": tfds.decode.SkipDecoding()}
        )
        image_id = np.int64(example[self._layout.image_id])
        try:
            image = _decode_rgb(example["image"])
        except OSError as e:  # PIL's error for truncated or corrupt image data
            raise DataError(
                f"Image {index} (image_id {image_id}) of TFDS dataset {self.name!r} split "
                f"{self.split!r} in {self._records.dataset_info.data_dir} does not decode "
                f"({e}): it was prepared from a damaged file; delete that folder and prepare it "
                "again (for karpathy/*, preparing names the damaged file)."
            ) from None
        return {"image": image, "image_id": image_id, "label": np.int64(index)}

    def caption(self, index: int) -> dict[str, Any]:
        index = int(index)
        text = self._text[self._offsets[index] : self._offsets[index + 1]].tobytes()
        return {"caption": text.decode("utf-8"), "caption_id": self._caption_ids[index]}

    def __getstate__(self) -> dict[str, Any]:
        # The record readers hold open files; workers re-open them from name/split/data_dir.
        state = dict(self.__dict__)
        for key in ("_records", "_layout", "_image_features", "_caption_features"):
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __repr__(self) -> str:
        return (
            f"TfdsSource({self.name!r}, {self.split!r}, images={self.num_images}, "
            f"captions={self.num_captions})"
        )
