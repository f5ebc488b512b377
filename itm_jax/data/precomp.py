"""Reader of the "precomp" layout of VSE++, SCAN and VSRN: precomputed image features + captions.

Layout of ``data_dir`` for a split (``train``, ``dev``, ``test``, ``testall``)::

    {split}_ims.npy   float32 [N_rows, F] (one global feature per image, e.g. ResNet-152)
                      or [N_rows, R, F] (a set of R region features per image, e.g. the 36
                      bottom-up-attention regions of SCAN/VSRN)
    {split}_caps.txt  one caption per line, UTF-8; captions k*c .. k*c + c - 1 describe image k
                      (c = caps_per_image, 5 for COCO and Flickr30K)
    {split}_ids.txt   optional, one integer image id per line (per image, or per feature row)

The files are the features released with VSE++ (``data/coco_precomp/``, ``data/f30k_precomp/``
from https://github.com/fartashf/vsepp) and SCAN (https://github.com/kuanghuei/SCAN, same
names, region features); ``testall`` is COCO's 5K test set, ``test`` its 1K subset.

Feature rows: as in VSE++'s ``PrecompDataset`` (``im_div = 5 if images.shape[0] != length
else 1``, image row = caption index // im_div), a file may store each image once (``N_rows =
N_captions / c``) or once per caption (``N_rows = N_captions``, rows k*c .. k*c + c - 1 being
the same image, or its crops). Either way the split has ``N_captions / c`` distinct images, and
image k reads row k (stored once) or row k*c (stored per caption). VSE++ shortens COCO ``dev``
to its first 5000 captions for speed; this reader keeps every caption and leaves that choice to
the evaluation.

Image ids, first available of: ``{split}_ids.txt``; ``synthetic_meta.json`` in ``data_dir``
holding ``{"image_ids": {split: [id, ...]}}`` (written by generators of synthetic precomp data);
the image's index in the split. ``label`` is the image's index in the split (precomp data has
no identities).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from itm_jax.errors import DataError

SPLITS = ("train", "dev", "test", "testall")

_RELEASES = (
    "the features released by the VSE++ authors (https://github.com/fartashf/vsepp: "
    "data/coco_precomp/, data/f30k_precomp/) or the SCAN authors "
    "(https://github.com/kuanghuei/SCAN: region features, same layout)"
)
_WHERE = f"Download {_RELEASES} and pass that folder as data_dir."


class PrecompSource:
    """One split of a precomp folder as a ``CaptionedSource`` (random access, memory-mapped).

    Items:
      image:   ``image_feat`` float32 ``[F]`` or ``[R, F]`` (a copy, not a view of the map),
               ``image_id`` int64, ``label`` int64 (the image index).
      caption: ``caption`` str, ``caption_id`` int64 (its line index in ``{split}_caps.txt``).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        *,
        mmap: bool = True,
        caps_per_image: int = 5,
    ):
        """Opens ``{data_dir}/{split}_ims.npy`` and reads ``{data_dir}/{split}_caps.txt``.

        Args:
          data_dir: the precomp folder, e.g. ``data/coco_precomp``.
          split: one of ``train``, ``dev``, ``test``, ``testall``.
          mmap: memory-map the features (random access without loading ~GBs of regions);
            ``False`` loads them into memory.
          caps_per_image: captions per image, c above.
        """
        if split not in SPLITS:
            raise ValueError(f"Unknown precomp split {split!r}; expected one of {SPLITS}.")
        if caps_per_image < 1:
            raise ValueError(f"caps_per_image must be >= 1, got {caps_per_image}.")
        self.data_dir = os.fspath(data_dir)
        self.split = split
        self.mmap = mmap
        self.caps_per_image = caps_per_image
        self._check_files()

        try:
            with open(self._caps_path, encoding="utf-8") as f:
                # VSE++ strips each line; keep interior whitespace, drop the line ending.
                self._captions = [line.strip() for line in f]
        except UnicodeDecodeError as e:
            raise DataError(
                f"{self._caps_path} is not UTF-8 text ({e}): download it again from {_RELEASES}."
            ) from None
        self._feats = self._open_features()
        n_rows, n_caps, c = self._feats.shape[0], len(self._captions), caps_per_image
        if n_caps == 0:
            raise DataError(f"{self._caps_path} is empty: download it again from {_RELEASES}.")
        if n_rows == n_caps and n_caps % c == 0:
            self._row_stride = c  # features stored once per caption (VSE++ im_div = 1)
        elif n_rows * c == n_caps:
            self._row_stride = 1  # features stored once per image (VSE++ im_div = 5)
        else:
            raise DataError(
                f"{self._caps_path} has {n_caps} captions for {n_rows} feature rows in "
                f"{self._ims_path}: expected {c} captions per image, i.e. {n_rows * c} captions "
                f"(one row per image) or {n_rows} captions (one row per caption, a multiple of "
                f"{c}). Pass caps_per_image= if your data has another number of captions per "
                "image, or check that both files belong to the same split."
            )
        self._num_images = n_caps // c
        self._cap_to_img = np.arange(n_caps, dtype=np.int64) // c
        self._image_ids = self._read_image_ids()

    @property
    def _ims_path(self) -> str:
        return os.path.join(self.data_dir, f"{self.split}_ims.npy")

    @property
    def _caps_path(self) -> str:
        return os.path.join(self.data_dir, f"{self.split}_caps.txt")

    def _check_files(self) -> None:
        if not os.path.isdir(self.data_dir):
            raise DataError(
                f"Precomp folder {self.data_dir} does not exist. It must hold "
                f"{self.split}_ims.npy and {self.split}_caps.txt. {_WHERE}"
            )
        missing = [p for p in (self._ims_path, self._caps_path) if not os.path.isfile(p)]
        if missing:
            present = sorted(os.listdir(self.data_dir))[:20]
            raise DataError(
                f"Missing {', '.join(missing)}; a precomp split needs {self.split}_ims.npy and "
                f"{self.split}_caps.txt (found {present}). {_WHERE}"
            )

    def _open_features(self) -> np.ndarray:
        try:
            feats = np.load(self._ims_path, mmap_mode="r" if self.mmap else None)
        except (ValueError, EOFError) as e:  # NumPy's errors for a truncated or non-.npy file
            raise DataError(
                f"{self._ims_path} is not a readable .npy array ({e}), so it is truncated or "
                f"not a NumPy file: download it again from {_RELEASES}."
            ) from None
        if feats.ndim not in (2, 3) or not np.issubdtype(feats.dtype, np.floating):
            raise DataError(
                f"{self._ims_path} must be a float array [N, F] or [N, R, F], got "
                f"{feats.dtype} {feats.shape}: use the image features of {_RELEASES}."
            )
        return feats

    def _read_image_ids(self) -> np.ndarray:
        ids_path = os.path.join(self.data_dir, f"{self.split}_ids.txt")
        if os.path.isfile(ids_path):
            try:  # ValueError covers non-integers and non-UTF-8 bytes (UnicodeDecodeError)
                with open(ids_path, encoding="utf-8") as f:
                    ids = np.array([int(x) for x in f if x.strip()], dtype=np.int64)
            except ValueError as e:
                raise DataError(
                    f"{ids_path} must hold one integer image id per line ({e}): fix or "
                    "remove it (without it, ids are the image indices)."
                ) from None
            return self._ids_per_image(ids, ids_path)
        meta_path = os.path.join(self.data_dir, "synthetic_meta.json")
        if os.path.isfile(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    meta = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(
                    f"{meta_path} is not valid JSON ({e}): remove it, or regenerate the folder "
                    "with itm_jax.data.synthetic_features.write_precomp."
                ) from None
            all_ids = meta.get("image_ids", {}) if isinstance(meta, dict) else {}
            if not isinstance(all_ids, dict):
                raise DataError(
                    f'{meta_path}: "image_ids" must map split names to lists of integer ids.'
                )
            ids = all_ids.get(self.split)
            if ids is not None:
                try:
                    ids = np.asarray(ids, dtype=np.int64)
                except (TypeError, ValueError):
                    raise DataError(
                        f'{meta_path}: "image_ids"[{self.split!r}] must be a list of integers.'
                    ) from None
                return self._ids_per_image(ids, meta_path)
        return np.arange(self._num_images, dtype=np.int64)

    def _ids_per_image(self, ids: np.ndarray, where: str) -> np.ndarray:
        """Per-image ids from a list with one id per image or, for per-caption rows, per row."""
        n_rows = self._feats.shape[0]
        if ids.shape == (self._num_images,):
            return ids
        if self._row_stride > 1 and ids.shape == (n_rows,):
            per_image = ids.reshape(self._num_images, self._row_stride)
            if not (per_image == per_image[:, :1]).all():
                k = int(np.flatnonzero((per_image != per_image[:, :1]).any(axis=1))[0])
                raise DataError(
                    f"{where} gives image {k} (rows {k * self._row_stride}.."
                    f"{(k + 1) * self._row_stride - 1}) different ids {per_image[k].tolist()}; "
                    "the rows of one image must share its id."
                )
            return per_image[:, 0].copy()
        raise DataError(
            f"{where} holds {ids.size} image ids for split {self.split!r}, which has "
            f"{self._num_images} images ({n_rows} feature rows); give one id per image."
        )

    # Memory maps do not pickle as maps (they would copy the whole array into each Grain worker);
    # workers reopen the file instead.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_feats"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._feats = self._open_features()

    @property
    def num_images(self) -> int:
        return self._num_images

    @property
    def num_captions(self) -> int:
        return len(self._captions)

    @property
    def cap_to_img(self) -> np.ndarray:
        """``[num_captions]`` int64: image index of each caption (``caption // c``)."""
        return self._cap_to_img

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one ``image_feat``: ``(F,)`` or ``(R, F)``."""
        return tuple(self._feats.shape[1:])

    @property
    def image_ids(self) -> np.ndarray:
        """``[num_images]`` int64 image ids (see the module docstring for their origin)."""
        return self._image_ids

    def image(self, index: int) -> dict[str, Any]:
        index = _check_index(index, self._num_images, "image")
        row = self._feats[index * self._row_stride]
        return {
            "image_feat": np.array(row, dtype=np.float32, copy=True),
            "image_id": self._image_ids[index],
            "label": np.int64(index),
        }

    def caption(self, index: int) -> dict[str, Any]:
        index = _check_index(index, len(self._captions), "caption")
        return {"caption": self._captions[index], "caption_id": np.int64(index)}

    def __repr__(self) -> str:
        return (
            f"PrecompSource({self.data_dir!r}, {self.split!r}, images={self._num_images}, "
            f"captions={len(self._captions)}, feature_shape={self.feature_shape})"
        )


def _check_index(index, size: int, what: str) -> int:
    index = int(index)
    if not 0 <= index < size:
        raise IndexError(f"{what} index {index} is outside [0, {size}).")
    return index
