"""Reader of CUHK-PEDES (Li et al., "Person Search with Natural Language Description", CVPR 2017).

Layout of ``root`` (the dataset is distributed by its authors on request, see
https://github.com/ShuangLI59/Person-Search-with-Natural-Language-Description)::

    reid_raw.json   a JSON list of records, one per image:
                    {"split": "train" | "val" | "test", "id": <person id>,
                     "file_path": "CUHK01/0363004.png", "captions": [str, ...],
                     "processed_tokens": [[str, ...], ...]}
    imgs/           the images, at imgs/{file_path}

Splits follow the records' ``split`` field (11,003 / 1,000 / 1,000 identities in the standard
release). Each record is one image with usually two captions; captions are flattened in record
order. ``processed_tokens`` is ignored: captions are tokenised by ``itm_jax.data.vocab``.

Item ids: ``image_id`` is the record's index in ``reid_raw.json``; ``caption_id`` is the
caption's index among all captions of the file flattened in record order (both unique across
splits); ``label`` is the person id remapped to ``[0, num_identities)`` within the split by
ascending raw id (the class index of CMPC / instance losses); ``identity`` is the raw person id.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from PIL import Image

from itm_jax.errors import DataError

SPLITS = ("train", "val", "test")

_RELEASE = (
    "CUHK-PEDES, obtained from its authors on request: "
    "https://github.com/ShuangLI59/Person-Search-with-Natural-Language-Description"
)
_LAYOUT = (
    "Expected {root}/reid_raw.json and the images under {root}/imgs/ (e.g. "
    "{root}/imgs/CUHK01/0363004.png) from " + _RELEASE + "."
)


class CuhkPedesSource:
    """One split of CUHK-PEDES as a ``CaptionedSource``; images decoded on access.

    Items:
      image:   ``image`` uint8 ``[H, W, 3]`` RGB (sizes vary by image), ``image_id`` int64,
               ``label`` int64, ``identity`` int64.
      caption: ``caption`` str, ``caption_id`` int64.
    """

    def __init__(self, root: str | os.PathLike, split: str):
        """Reads ``{root}/reid_raw.json`` and keeps the records of ``split``.

        Args:
          root: the dataset folder holding ``reid_raw.json`` and ``imgs/``.
          split: ``train``, ``val`` or ``test``.
        """
        if split not in SPLITS:
            raise ValueError(f"Unknown CUHK-PEDES split {split!r}; expected one of {SPLITS}.")
        self.root = os.fspath(root)
        self.split = split
        layout = _LAYOUT.format(root=self.root)
        json_path = os.path.join(self.root, "reid_raw.json")
        if not os.path.isfile(json_path):
            raise DataError(f"No CUHK-PEDES annotation file at {json_path}. {layout}")
        self._img_dir = os.path.join(self.root, "imgs")
        if not os.path.isdir(self._img_dir):
            raise DataError(f"No CUHK-PEDES image folder at {self._img_dir}. {layout}")
        try:
            with open(json_path, encoding="utf-8") as f:
                records = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(
                f"{json_path} is not valid JSON, probably truncated ({e}): copy it again from "
                f"{_RELEASE}."
            ) from None
        if not isinstance(records, list):
            raise DataError(f"{json_path} must hold a JSON list of records. {layout}")

        paths, identities, image_ids, captions, caption_ids, cap_to_img = [], [], [], [], [], []
        n_file_captions = 0
        for r, record in enumerate(records):
            _check_record(record, r, json_path)
            if record["split"] == split:
                image_index = len(paths)
                paths.append(record["file_path"])
                identities.append(record["id"])
                image_ids.append(r)
                for k, caption in enumerate(record["captions"]):
                    captions.append(caption)
                    caption_ids.append(n_file_captions + k)
                    cap_to_img.append(image_index)
            n_file_captions += len(record["captions"])
        if not paths:
            found = sorted({rec["split"] for rec in records})
            raise DataError(
                f"{json_path} has no {split!r} records (splits present: {found}): use the "
                f"complete reid_raw.json of {_RELEASE}."
            )

        self._paths = paths
        self._identities = np.asarray(identities, dtype=np.int64)
        # np.unique sorts, so labels follow ascending raw id.
        _, self._labels = np.unique(self._identities, return_inverse=True)
        self._labels = self._labels.astype(np.int64)
        self._image_ids = np.asarray(image_ids, dtype=np.int64)
        self._captions = captions
        self._caption_ids = np.asarray(caption_ids, dtype=np.int64)
        self._cap_to_img = np.asarray(cap_to_img, dtype=np.int64)
        # A missing image found now, not mid-epoch; a stat per image (~0.1 s for 34k images).
        missing = [
            f"{os.path.join(self._img_dir, path)} (record {r})"
            for path, r in zip(paths, image_ids)
            if not os.path.isfile(os.path.join(self._img_dir, path))
        ]
        if missing:
            raise DataError(
                f"{len(missing)} of the {len(paths)} {split} images of {json_path} are missing, "
                f"e.g. {', '.join(missing[:3])}. {layout}"
            )

    @property
    def num_images(self) -> int:
        return len(self._paths)

    @property
    def num_captions(self) -> int:
        return len(self._captions)

    @property
    def num_identities(self) -> int:
        return int(self._labels.max()) + 1

    @property
    def cap_to_img(self) -> np.ndarray:
        """``[num_captions]`` int64: index (in this split) of each caption's image."""
        return self._cap_to_img

    @property
    def labels(self) -> np.ndarray:
        """``[num_images]`` int64 contiguous identity labels of the split's images."""
        return self._labels

    def image(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self._paths):
            raise IndexError(f"image index {index} is outside [0, {len(self._paths)}).")
        path = os.path.join(self._img_dir, self._paths[index])
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError:
            raise DataError(
                f"Image {path} (record {self._image_ids[index]}) is missing. "
                f"{_LAYOUT.format(root=self.root)}"
            ) from None
        except OSError as e:  # PIL's error for unidentified, truncated or corrupt image data
            raise DataError(
                f"Image {path} (record {self._image_ids[index]}) does not decode ({e}), so the "
                f"file is truncated or damaged: replace it with an intact copy from {_RELEASE}."
            ) from None
        return {
            "image": pixels,
            "image_id": self._image_ids[index],
            "label": self._labels[index],
            "identity": self._identities[index],
        }

    def caption(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self._captions):
            raise IndexError(f"caption index {index} is outside [0, {len(self._captions)}).")
        return {"caption": self._captions[index], "caption_id": self._caption_ids[index]}

    def __repr__(self) -> str:
        return (
            f"CuhkPedesSource({self.root!r}, {self.split!r}, images={self.num_images}, "
            f"captions={self.num_captions}, identities={self.num_identities})"
        )


def _check_record(record: Any, index: int, json_path: str) -> None:
    """Raises a DataError naming the record and field when ``record`` is malformed."""

    def bad(why):
        return DataError(
            f"{json_path}, record {index}: {why}; use the reid_raw.json of {_RELEASE}."
        )

    if not isinstance(record, dict):
        raise bad(f"expected an object, got {type(record).__name__}")
    missing = [k for k in ("split", "id", "file_path", "captions") if k not in record]
    if missing:
        raise bad(f"missing field(s) {missing}")
    if record["split"] not in SPLITS:
        raise bad(f"split {record['split']!r} is not one of {SPLITS}")
    if not isinstance(record["id"], int) or isinstance(record["id"], bool):
        raise bad(f"id must be an integer, got {record['id']!r}")
    if not isinstance(record["file_path"], str) or not record["file_path"]:
        raise bad(f"file_path must be a non-empty string, got {record['file_path']!r}")
    caps = record["captions"]
    if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
        raise bad("captions must be a non-empty list of strings")
