"""The region-word model of SCAN and BFAN: sets of regions and words, scored by attention.

``SetEncoder`` maps a batch to each image's regions ``[B, R, D]`` (``RegionProjection``) and
each caption's words ``{"words": [B, L, D], "length": [B]}`` (``BiGRUWordEncoder``); its
``scorer`` (``itm_jax.scoring.AttentionScorer``: SCAN's stacked cross attention or BFAN's focal
attention, ``itm_jax.similarity``) turns any number of images and captions into their score
matrix. The train step, the metrics, the mining job and the run API call that scorer, so every
loss of the score matrix applies unchanged; losses that read global embeddings do not.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
from flax import nnx

from itm_jax.models.regions import BiGRUWordEncoder, RegionProjection
from itm_jax.scoring import AttentionScorer


class SetEncoder(nnx.Module):
    """Region and word encoders with the attention scorer that compares them.

    ``__call__(batch)`` takes ``image_feat [B, R, F]``, ``tokens [B, L]`` and ``length [B]``
    and returns ``img_set [B, R, D]`` and ``txt_set {"words": [B, L, D], "length": [B]}``.
    """

    def __init__(self, image_encoder: RegionProjection, text_encoder: BiGRUWordEncoder,
                 scorer: AttentionScorer):
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.scorer = scorer

    def embed_images(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """``[B, R, D]`` region vectors (L2-normalised per region)."""
        return self.image_encoder(batch["image_feat"])

    def embed_captions(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """``{"words": [B, L, D], "length": [B]}``, zero past each caption's length."""
        words, length = self.text_encoder(batch["tokens"], batch["length"])
        return {"words": words, "length": length}

    def __call__(self, batch: Mapping[str, jax.Array], *, extra_images=None,
                 extra_captions=None) -> dict:
        """``img_set``, ``txt_set`` of ``batch``'s pairs, and the sets of ``extra_images`` /
        ``extra_captions`` (each region and word is encoded on its own: no batch statistics)."""
        out = {"img_set": self.embed_images(batch), "txt_set": self.embed_captions(batch)}
        if extra_images is not None:
            out["extra_images"] = self.embed_images(extra_images)
        if extra_captions is not None:
            out["extra_captions"] = self.embed_captions(extra_captions)
        return out


SCORERS = ("scan", "bfan")


def build_set_encoder(cfg: Mapping, *, vocab_size: int, image_dim: int,
                      word_vectors: jax.Array | None = None, rngs: nnx.Rngs) -> SetEncoder:
    """``SetEncoder`` from ``config.model`` with ``image="regions"``: ``embed_dim``,
    ``word_dim``, ``scorer`` (``"scan"`` or ``"bfan"``) and that scorer's options,
    ``model.scan`` (``direction``, ``raw_feature_norm``, ``agg``, ``lambda_softmax``,
    ``lambda_lse``) or ``model.bfan`` (``focal``, ``lambda_softmax``), the keyword arguments of
    ``itm_jax.similarity.scan_scores`` / ``bfan_scores``."""
    scorer = cfg.get("scorer", "dot")
    if scorer not in SCORERS:
        raise ValueError(f"model.image='regions' is scored by attention: model.scorer must be "
                         f"one of {', '.join(SCORERS)}; got {scorer!r}.")
    options = tuple(sorted(dict(cfg[scorer]).items()))
    return SetEncoder(
        RegionProjection(image_dim, cfg["embed_dim"], rngs=rngs),
        BiGRUWordEncoder(vocab_size, cfg["word_dim"], cfg["embed_dim"], pretrained=word_vectors,
                         rngs=rngs),
        AttentionScorer(scorer, options),
    )
