"""AOQ round 2: the offline hard negatives of each training pair (Chen et al., ECCV 2020, Sec.
3.2), and the Grain map that adds them to the training examples.

For training pair ``(i, t)`` (caption index ``t``, its image ``i``) and the mined lists
``i2t [N_img, H_t]`` / ``t2i [N_cap, H_i]`` (``itm_jax.aoq.store.load_mined``), one draw
``n ~ U{0..h_t-1}`` gives, as the authors' code does,

    t_off   = i2t[i, n]                        offline hard negative caption of i
    i_off   = t2i[t, n // captions_per_image]  offline hard negative image of t
    t_tilde = a uniform caption of i_off       so (i_off, t_tilde) is a positive pair
    i_tilde = the image of t_off               so (i_tilde, t_off) is a positive pair

The image rank follows the caption rank (``n // captions_per_image``), so both negatives of a
pair are about equally hard. ``(i_off, t_off)`` and ``(i_tilde, t_tilde)`` are negatives unless
``t_off`` happens to describe ``i_off`` (then both derived pairs match); the paper re-samples
in that case, the authors' code does not: ``resample_matching`` (default True, the paper).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grain
import numpy as np

from itm_jax.data.pipeline import Tokenize, tokenized
from itm_jax.data.source import CaptionedSource, image_ids

# Draws before giving up on finding a non-matching (i_off, t_off); each draw matches with
# probability ~ (fraction of matching lists), so this is only reached by degenerate lists.
_MAX_DRAWS = 1000


class OfflineSampler:
    """Draws the four offline items of a training pair.

    Args:
      source: the training split the lists were mined on.
      i2t: int ``[N_img, >= h_t]`` caption indices per image, hardest first.
      t2i: int ``[N_cap, >= h_i]`` image indices per caption, hardest first.
      h_t, h_i: sample from the first ``h_t`` / ``h_i`` entries (the paper: 300 / 60).
      captions_per_image: divides the caption rank into the image rank (5).
      resample_matching: draw again while ``t_off`` describes ``i_off`` (compared by image id).
    """

    def __init__(self, source: CaptionedSource, i2t: np.ndarray, t2i: np.ndarray, *,
                 h_t: int, h_i: int, captions_per_image: int, resample_matching: bool = True):
        cap_to_img = np.asarray(source.cap_to_img)
        if i2t.shape[0] != source.num_images or t2i.shape[0] != source.num_captions:
            raise ValueError(
                f"Mined lists i2t {i2t.shape} / t2i {t2i.shape} do not fit the training split "
                f"({source.num_images} images, {source.num_captions} captions); re-run itm-mine "
                "on this dataset.")
        if not (0 < h_t <= i2t.shape[1] and 0 < h_i <= t2i.shape[1]):
            raise ValueError(f"h_t={h_t}, h_i={h_i} must be in [1, {i2t.shape[1]}] and "
                             f"[1, {t2i.shape[1]}] (the mined list lengths); lower them or mine "
                             "longer lists.")
        if (h_t - 1) // captions_per_image >= h_i:
            raise ValueError(f"The image rank n // {captions_per_image} of a caption rank "
                             f"n < h_t={h_t} reaches {(h_t - 1) // captions_per_image}, past "
                             f"h_i={h_i}; use h_i >= ceil(h_t / captions_per_image).")
        self.i2t, self.t2i = i2t, t2i
        self.h_t, self.cpi, self.resample = h_t, captions_per_image, resample_matching
        self.cap_to_img = cap_to_img
        self.image_ids = image_ids(source)
        # Captions of each image, grouped: captions of image k are order[starts[k]:starts[k+1]].
        self.order = np.argsort(cap_to_img, kind="stable")
        self.starts = np.searchsorted(cap_to_img[self.order], np.arange(source.num_images + 1))

    def draw(self, image_index: int, caption_index: int, rng: np.random.Generator) -> dict[str, Any]:
        """``{rank, t_off, i_off, t_tilde, i_tilde}`` (int64 indices into the split)."""
        for _ in range(_MAX_DRAWS):
            n = int(rng.integers(self.h_t))
            t_off = int(self.i2t[image_index, n])
            i_off = int(self.t2i[caption_index, n // self.cpi])
            i_tilde = int(self.cap_to_img[t_off])
            if not (self.resample and self.image_ids[i_tilde] == self.image_ids[i_off]):
                break
        else:
            raise ValueError(
                f"No non-matching offline pair for caption {caption_index} in {_MAX_DRAWS} "
                f"draws: its mined lists hold only captions of its offline images. Raise h_t/h_i "
                "or set aoq.resample_matching=False.")
        start, stop = self.starts[i_off], self.starts[i_off + 1]
        t_tilde = int(self.order[start + rng.integers(stop - start)])
        return {k: np.int64(v) for k, v in dict(
            rank=n, t_off=t_off, i_off=i_off, t_tilde=t_tilde, i_tilde=i_tilde).items()}


class OfflineItems(grain.transforms.RandomMap):
    """Adds AOQ's offline items to a training example: ``{role}_{field}`` for the images
    ``i_off, i_tilde`` (``image`` / ``image_feat``) and the captions ``t_off, t_tilde``
    (``tokens``, ``length``), plus ``offline_rank`` (the draw ``n``).

    ``transform``: the training image transform, None for precomputed features.
    """

    def __init__(self, source: CaptionedSource, sampler: OfflineSampler, tokenize: Tokenize,
                 transform: Callable | None):
        self.source = source
        self.sampler = sampler
        self.tokenize = tokenize
        self.transform = transform

    def random_map(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        drawn = self.sampler.draw(int(example["image_index"]), int(example["caption_index"]), rng)
        out = {**example, "offline_rank": drawn["rank"]}
        for role in ("i_off", "i_tilde"):
            item = self.source.image(int(drawn[role]))
            if self.transform is None:
                out[f"{role}_image_feat"] = np.asarray(item["image_feat"])
            else:
                out[f"{role}_image"] = self.transform(item["image"], rng)
        for role in ("t_off", "t_tilde"):
            caption = self.source.caption(int(drawn[role]))["caption"]
            out.update({f"{role}_{k}": v for k, v in tokenized(self.tokenize, caption).items()})
        return out
