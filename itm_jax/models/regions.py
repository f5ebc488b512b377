"""Region and word encoders of the cross-attention models SCAN and BFAN.

SCAN (Lee et al., "Stacked Cross Attention for Image-Text Matching", ECCV 2018) and BFAN (Liu
et al., "Focus Your Attention: A Bidirectional Focal Attention Network for Image-Text
Matching", ACM MM 2019) score a pair from attention between an image's regions and a caption's
words, so their encoders keep one vector per region and one per word instead of pooling:

- ``RegionProjection``: ``features [B, R, F] -> [B, R, D]``, a linear map of each region's
  bottom-up feature, then L2-normalised per region;
- ``BiGRUWordEncoder``: ``tokens [B, L], lengths [B] -> ([B, L, D], lengths)``, a
  bidirectional GRU whose two directions are averaged per word, then L2-normalised per word.

Both normalise with ``l2n(x) = x / (||x|| + 1e-8)`` (the eps is added to the norm, as the
authors' ``l2norm``). Their GRUs are PyTorch's (``itm_jax.models.text.torch_gru_cell``), so
that the authors' checkpoints convert exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from itm_jax.models.image import xavier_linear
from itm_jax.models.text import (
    _check_dims,
    _check_inputs,
    _embedding,
    _symmetric_uniform,
    _valid_mask,
    torch_gru_cell,
)
from itm_jax.similarity import l2n


class RegionProjection(nnx.Module):
    """SCAN / BFAN image side (authors' ``EncoderImagePrecomp``): one joint-space vector per region.

    ``features [B, R, F] -> [B, R, embed_dim]``: ``l2n(W f_r + b)`` for every region ``r``
    (``normalize=False``, the authors' ``no_imgnorm``, skips the normalisation). Each region is
    mapped on its own, so a padded region changes only its own row; the scores read
    ``region_lens``.

    Args:
      in_dim: region feature size F (2048 for bottom-up features).
      embed_dim: joint space size D (1024).
      normalize: L2-normalise each region's vector.
      rngs: parameter RNG (``fc``: Xavier-uniform weight, zero bias, as the authors').
    """

    def __init__(self, in_dim: int, embed_dim: int, *, normalize: bool = True, rngs: nnx.Rngs):
        self.fc = xavier_linear(in_dim, embed_dim, rngs=rngs)
        self.in_dim = in_dim
        self.embed_dim = embed_dim
        self.normalize = normalize

    def __call__(self, features: jax.Array) -> jax.Array:
        features = jnp.asarray(features)
        if features.ndim != 3 or features.shape[-1] != self.in_dim:
            raise ValueError(
                f"RegionProjection expects region features [B, R, {self.in_dim}]; got shape "
                f"{features.shape}."
            )
        regions = self.fc(features)  # [B, R, D]
        return l2n(regions) if self.normalize else regions


class BiGRUWordEncoder(nnx.Module):
    """SCAN / BFAN text side (authors' ``EncoderText`` with ``bi_gru``): one vector per word.

    ``tokens [B, L], lengths [B] -> (words [B, L, embed_dim], lengths [B])``. A forward GRU
    reads ``tokens[b, :lengths[b]]`` and a backward GRU reads the same valid words from the
    last one back (its output at word t has read words ``lengths-1 .. t``); the two outputs at
    each word are averaged and the result is ``l2n``-normalised per word. Positions at or past
    ``lengths[b]`` are zero, and padding (its ids, its amount) changes no valid word's vector
    and gets no gradient: ids there are replaced by 0 before the lookup and neither direction
    reads a padded step before a valid one. A one-word caption is valid.

    Args:
      vocab_size: number of word ids (id 0 is ``<pad>``).
      word_dim: word embedding size (300).
      embed_dim: GRU units per direction = word vector size D (1024).
      normalize: L2-normalise each word vector (the authors' ``no_txtnorm=False``).
      pretrained: optional ``[vocab_size, word_dim]`` table to start the embedding from;
        otherwise ``U(-0.1, 0.1)`` as the authors'.
      rngs: parameter RNG.

    Parameters: ``embed.embedding [V, word_dim]``; ``forward_rnn.cell`` and
    ``backward_rnn.cell`` are ``torch_gru_cell`` s (PyTorch's ``rnn.*_l0`` and
    ``rnn.*_l0_reverse``).
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int = 300,
        embed_dim: int = 1024,
        *,
        normalize: bool = True,
        pretrained=None,
        rngs: nnx.Rngs,
    ):
        _check_dims("BiGRUWordEncoder", vocab_size=vocab_size, word_dim=word_dim,
                    embed_dim=embed_dim)
        self.embed = _embedding(vocab_size, word_dim, pretrained, "BiGRUWordEncoder", rngs,
                                _symmetric_uniform(0.1))
        self.forward_rnn = nnx.RNN(torch_gru_cell(word_dim, embed_dim, rngs=rngs), rngs=False)
        self.backward_rnn = nnx.RNN(torch_gru_cell(word_dim, embed_dim, rngs=rngs),
                                    reverse=True, keep_order=True, rngs=False)
        self.embed_dim = embed_dim
        self.normalize = normalize

    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        tokens, lengths = _check_inputs(tokens, lengths, "BiGRUWordEncoder")
        b, seq = tokens.shape
        valid = _valid_mask(lengths, seq)  # [B, L]
        x = self.embed(jnp.where(valid, tokens, 0))  # [B, L, word_dim]
        h0 = jnp.zeros((b, self.embed_dim), x.dtype)
        fwd = self.forward_rnn(x, initial_carry=h0, seq_lengths=lengths)  # [B, L, D]
        bwd = self.backward_rnn(x, initial_carry=h0, seq_lengths=lengths)  # [B, L, D]
        words = 0.5 * (fwd + bwd)
        if self.normalize:
            words = l2n(words)
        return jnp.where(valid[..., None], words, 0.0), lengths
