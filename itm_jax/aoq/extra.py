"""AOQ round 2 as a batch extra: how the trainer reaches the offline negatives without naming
AOQ (``itm_jax.objective`` maps the loss name ``aoq_loss`` to ``from_config``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grain
import jax

from itm_jax.aoq.sampler import OfflineItems, OfflineSampler
from itm_jax.aoq.scores import offline_rows, offline_scores
from itm_jax.aoq.store import load_mined
from itm_jax.data.pipeline import Tokenize
from itm_jax.data.source import CaptionedSource
from itm_jax.errors import ConfigError


class OfflineNegatives:
    """The offline items of each training pair (a ``BatchExtra``): added to the examples by
    ``random_map``, scored inside the train step by ``outputs``."""

    # The batch fields the train step passes to the model (``OfflineItems``' images and
    # captions; a source has either ``image`` or ``image_feat``).
    keys: tuple[str, ...] = tuple(
        f"{role}_{k}" for role in ("i_off", "i_tilde") for k in ("image", "image_feat")) + tuple(
        f"{role}_{k}" for role in ("t_off", "t_tilde") for k in ("tokens", "length"))

    def __init__(self, source: CaptionedSource, sampler: OfflineSampler):
        self.source, self.sampler = source, sampler

    def random_map(self, tokenize: Tokenize, transform: Callable | None
                   ) -> grain.transforms.RandomMap:
        """The map adding the offline items to each training example (``transform``: the image
        transform, None for precomputed features)."""
        return OfflineItems(self.source, self.sampler, tokenize, transform)

    def rows(self, batch: Mapping[str, jax.Array]) -> tuple[dict, dict]:
        """The offline images and captions, embedded with the batch's (``offline_rows``)."""
        return offline_rows(batch)

    def outputs(self, model, batch: Mapping[str, jax.Array], out: Mapping[str, jax.Array],
                images, captions) -> dict[str, jax.Array]:
        """Inside the traced train step: the offline score vectors ``[B]`` of the batch pairs
        (``out``: the model outputs, with ``img_emb`` / ``txt_emb [B, D]`` or a set model's
        ``img_set`` / ``txt_set``; ``images``, ``captions``: the embedded offline items)."""
        scorer = getattr(model, "scorer", None)
        if "img_set" in out:
            return offline_scores(scorer, out["img_set"], out["txt_set"], images, captions)
        return offline_scores(scorer, out["img_emb"], out["txt_emb"], images, captions)


def from_config(config, train_source: CaptionedSource) -> OfflineNegatives | None:
    """The offline negatives of the lists in ``config.aoq.mining_dir`` for ``train_source``;
    None when no ``aoq_loss`` entry of ``config.losses`` uses them (variant ``"online"``).

    ``ConfigError`` when one does and ``config.aoq.mining_dir`` is unset; ``load_mined``'s errors
    when the lists do not fit the split.
    """
    offline = [dict(s) for s in config.losses
               if s["name"] == "aoq_loss" and s.get("variant", "adaptive") != "online"]
    if not offline:
        return None
    a = config.aoq
    if not a.mining_dir:
        raise ConfigError(
            f"aoq_loss variant {offline[0].get('variant', 'adaptive')!r} needs offline hard "
            "negatives: run `itm-mine` with a round-1 model and set "
            "--config.aoq.mining_dir=RUN/mining (or use variant='online').")
    i2t, t2i, _ = load_mined(a.mining_dir, train_source, h_t=a.h_t, h_i=a.h_i)
    return OfflineNegatives(train_source, OfflineSampler(
        train_source, i2t, t2i, h_t=a.h_t, h_i=a.h_i,
        captions_per_image=config.data.caps_per_image, resample_matching=a.resample_matching))
