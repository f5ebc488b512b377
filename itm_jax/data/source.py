"""The one interface every dataset implements, and its caption-level view for training.

A split of a captioned-image dataset is a set of images and a set of captions, each caption
describing one image. Sources give random access to both (memory-mapped or on-disk), so
evaluation can embed every image once and every caption once, and training can iterate over
(image, caption) pairs.

Item conventions (NumPy values):
  image item:   ``image`` uint8 ``[H, W, 3]`` *or* ``image_feat`` float32 ``[F]`` / ``[R, F]``
                (precomputed features), ``image_id`` int64 (the dataset's own id), ``label``
                int64 (identity / instance class; the image's index in the training split
                where the dataset has no identities).
  caption item: ``caption`` str, ``caption_id`` int64.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class CaptionedSource(Protocol):
    """Random access to one split's images and captions."""

    @property
    def num_images(self) -> int: ...

    @property
    def num_captions(self) -> int: ...

    @property
    def cap_to_img(self) -> np.ndarray:
        """``[num_captions]`` int: index (in this split) of each caption's image."""

    def image(self, index: int) -> dict[str, Any]:
        """The image item at ``index`` in ``[0, num_images)``."""

    def caption(self, index: int) -> dict[str, Any]:
        """The caption item at ``index`` in ``[0, num_captions)``."""


class PairSource:
    """Caption-level view: item j is caption j with its image (a Grain random-access source).

    Adds ``image_index`` and ``caption_index`` (positions in the split) so the train step can
    build positives and the AOQ sampler can look up offline negatives.
    """

    def __init__(self, source: CaptionedSource):
        self.source = source

    def __len__(self) -> int:
        return self.source.num_captions

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        image_index = int(self.source.cap_to_img[index])
        return {
            **self.source.image(image_index),
            **self.source.caption(index),
            "image_index": np.int64(image_index),
            "caption_index": np.int64(index),
        }

    def __repr__(self) -> str:
        return f"PairSource({self.source!r})"


def image_ids(source: CaptionedSource) -> np.ndarray:
    """int64 ``[num_images]``: the dataset's image ids (the index where a source has none).

    Two indices with one id are the same picture (duplicates in a split), so positives and
    "matching" are decided by id, never by index.
    """
    ids = getattr(source, "image_ids", None)
    return np.arange(source.num_images, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
