"""VSRN's reasoning image encoder and its caption-generation training term.

Li et al., "Visual Semantic Reasoning for Image-Text Matching", ICCV 2019 (authors' code
KunpengLi1994/VSRN). The image of a pair becomes one global embedding, so VSRN scores pairs by
dot products like VSE++ (whose GRU caption encoder it reuses), but the embedding comes from
reasoning over the image's regions: a graph of the regions refines their features
(``RsGCN``, four blocks), and a GRU reads the refined regions in order and its final state is
the image. During training the refined regions must also let a decoder regenerate the caption
(``CaptionGenerator``; the loss is ``itm_jax.losses.caption_generation``), added to the
retrieval loss with weight 1.

Everything works channels-last: the authors' ``[B, C, N]`` 1x1 convolutions are per-region
linear maps of ``[B, N, C]`` arrays. Parameter layouts for converting the authors' PyTorch
checkpoints are given on each module.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from itm_jax.models.image import xavier_linear
from itm_jax.models.text import (
    _check_dims,
    _check_dropout,
    _check_inputs,
    _rng_stream,
    _symmetric_uniform,
    _valid_mask,
    torch_gru_cell,
)

VARIANTS = ("coco", "f30k")
NUM_GCN_BLOCKS = 4


def torch_linear(in_dim: int, out_dim: int, *, use_bias: bool = True, kernel_init=None,
                 rngs: nnx.Rngs) -> nnx.Linear:
    """PyTorch's ``nn.Linear`` / 1x1 ``nn.Conv1d``: ``kernel [in, out] = weight.T`` (a conv's
    ``weight[:, :, 0].T``); weight and bias start ``U(-1/sqrt(in), 1/sqrt(in))`` unless
    ``kernel_init`` is given."""
    init = _symmetric_uniform(1.0 / math.sqrt(in_dim))
    return nnx.Linear(in_dim, out_dim, use_bias=use_bias, kernel_init=kernel_init or init,
                      bias_init=init, rngs=rngs)


def _over_regions(x: jax.Array) -> jax.Array:
    """VSRN's ``l2norm`` on ``[B, N, C]``: each (image, channel) divided by its norm over the
    N regions, with no eps (the authors' ``dim=1`` on a region-major tensor)."""
    return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=1, keepdims=True))


class TorchBatchNorm(nnx.Module):
    """PyTorch's ``BatchNorm1d`` on channels-last inputs: ``x [..., C] -> [..., C]``.

    Each channel is normalised over all the other axes together (``[B, C]``: the batch;
    ``[B, N, C]``: batch x regions, M values per channel). Train mode normalises with the
    batch mean and *biased* variance and then updates ``mean <- (1 - momentum) mean +
    momentum mu`` and ``var <- (1 - momentum) var + momentum sigma^2 M / (M - 1)``: the
    running variance is the *unbiased* one, as PyTorch stores it (``nnx.BatchNorm`` stores the
    biased one, and names its decay ``1 - momentum``). Eval mode (``use_running_average``, set
    by ``model.eval()``) normalises with the running statistics.

    Parameters: ``scale [C] = weight``, ``bias [C] = bias``; ``nnx.BatchStat`` ``mean [C] =
    running_mean``, ``var [C] = running_var`` (``num_batches_tracked`` is unused).

    Args:
      num_features: channels C.
      momentum: PyTorch's momentum, the weight of the new batch statistics (0.1).
      epsilon: added to the variance (1e-5).
      zero_init: start ``scale`` and ``bias`` at 0, so the layer outputs zeros (VSRN's
        residual blocks); otherwise 1 and 0.
      use_running_average: start in eval mode.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, epsilon: float = 1e-5,
                 zero_init: bool = False, use_running_average: bool = False):
        self.scale = nnx.Param(jnp.full((num_features,), 0.0 if zero_init else 1.0, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_features = num_features
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.num_features:
            raise ValueError(f"TorchBatchNorm expects [..., {self.num_features}] inputs; got "
                             f"shape {x.shape}.")
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            m = math.prod(x.shape[:-1])
            if m < 2:
                raise ValueError(
                    f"TorchBatchNorm in train mode needs more than one value per channel; got "
                    f"input shape {x.shape}. Train with batches of 2 or more, or call "
                    "model.eval()."
                )
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            p = self.momentum
            self.mean[...] = jax.lax.stop_gradient((1 - p) * self.mean[...] + p * mean)
            self.var[...] = jax.lax.stop_gradient((1 - p) * self.var[...] + p * var * m / (m - 1))
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


class RsGCN(nnx.Module):
    """One graph-reasoning block (authors' ``Rs_GCN``): ``v [B, N, C] -> [B, N, C]``.

    ``g, theta, phi`` are per-region linear maps to ``C'`` channels; the affinity of regions i
    and j is ``A[i, j] = theta_i . phi_j / N`` (no softmax, no mask: the raw product over the
    number of regions); each region gathers ``y_i = sum_j A[i, j] g_j``, which ``w`` maps back
    to C channels; the output is ``v + bn(w(y))`` with ``bn`` a ``TorchBatchNorm`` started at
    ``scale = bias = 0``, so a freshly built block is the identity.

    Parameters (PyTorch ``Rs_GCN_k.*``): ``g``, ``theta``, ``phi`` ``[C, C']`` (``g``,
    ``theta``, ``phi``: ``weight[:, :, 0].T``, ``bias``), ``w [C', C]`` (``W.0``), ``bn``
    (``W.1``).
    """

    def __init__(self, channels: int, inter_channels: int, *, rngs: nnx.Rngs):
        self.g = torch_linear(channels, inter_channels, rngs=rngs)
        self.theta = torch_linear(channels, inter_channels, rngs=rngs)
        self.phi = torch_linear(channels, inter_channels, rngs=rngs)
        self.w = torch_linear(inter_channels, channels, rngs=rngs)
        self.bn = TorchBatchNorm(channels, zero_init=True)

    def __call__(self, v: jax.Array) -> jax.Array:
        n = v.shape[1]
        affinity = jnp.einsum("bic,bjc->bij", self.theta(v), self.phi(v)) / n  # [B, N, N]
        y = jnp.einsum("bij,bjc->bic", affinity, self.g(v))  # [B, N, C']
        return v + self.bn(self.w(y))


class VSRNImageEncoder(nnx.Module):
    """VSRN image encoder (authors' ``EncoderImagePrecompAttn``, ``use_abs=False``,
    ``no_imgnorm=False``).

    ``regions [B, N, in_dim] -> (emb [B, embed_dim], H [B, N, embed_dim])``:

    1. ``F = fc(regions)``; for ``variant="coco"`` (every dataset other than the authors'
       ``f30k_precomp``) each channel of F is divided by its norm over the N regions.
    2. Four ``RsGCN`` blocks (separate weights), then again each channel divided by its norm
       over the regions: that is ``H``, the input of ``CaptionGenerator``.
    3. A GRU (``torch_gru_cell``, zero initial state) reads ``H[:, 0], ..., H[:, N-1]``; its
       final state ``g`` (``variant="f30k"``: ``bn(g)``, a ``TorchBatchNorm`` over the batch)
       divided by its norm is ``emb``.

    The region normalisations have no eps, as the authors'. The GRU reads every region in
    order (no mask), so the result depends on the region order. BatchNorm (the blocks', and
    f30k's ``bn``) follows ``model.train()`` / ``model.eval()``; the authors evaluate in eval
    mode.

    Args:
      in_dim: region feature size (2048).
      embed_dim: E (2048 in VSRN).
      variant: ``"coco"`` or ``"f30k"`` (see above).
      inter_dim: the blocks' inner size C'; VSRN uses E (the default).
      rngs: parameter RNG.

    Parameters (PyTorch ``img_enc.*``): ``fc`` (``fc``, Xavier-uniform weight and zero bias as
    the authors'), ``gcn/0`` .. ``gcn/3`` (``Rs_GCN_1`` .. ``Rs_GCN_4``, see ``RsGCN``),
    ``rnn.cell`` (``img_rnn``, see ``torch_gru_cell``), ``bn`` (f30k only, ``bn``).
    """

    def __init__(self, in_dim: int, embed_dim: int = 2048, *, variant: str = "coco",
                 inter_dim: int | None = None, rngs: nnx.Rngs):
        if variant not in VARIANTS:
            raise ValueError(f"Unknown VSRN variant={variant!r}; valid: {', '.join(VARIANTS)} "
                             "('f30k' is the authors' f30k_precomp, 'coco' every other dataset).")
        inter_dim = embed_dim if inter_dim is None else inter_dim
        _check_dims("VSRNImageEncoder", in_dim=in_dim, embed_dim=embed_dim, inter_dim=inter_dim)
        self.fc = xavier_linear(in_dim, embed_dim, rngs=rngs)
        self.gcn = nnx.List([RsGCN(embed_dim, inter_dim, rngs=rngs)
                             for _ in range(NUM_GCN_BLOCKS)])
        self.rnn = nnx.RNN(torch_gru_cell(embed_dim, embed_dim, rngs=rngs), return_carry=True,
                           rngs=False)
        self.bn = TorchBatchNorm(embed_dim) if variant == "f30k" else None
        self.in_dim = in_dim
        self.embed_dim = embed_dim
        self.variant = variant

    def __call__(self, regions: jax.Array) -> tuple[jax.Array, jax.Array]:
        regions = jnp.asarray(regions)
        if regions.ndim != 3 or regions.shape[-1] != self.in_dim:
            raise ValueError(f"VSRNImageEncoder expects region features [B, N, {self.in_dim}]; "
                             f"got shape {regions.shape}.")
        v = self.fc(regions)  # [B, N, E]
        if self.variant == "coco":
            v = _over_regions(v)
        for block in self.gcn:
            v = block(v)
        h = _over_regions(v)  # [B, N, E]
        g, _ = self.rnn(h, initial_carry=jnp.zeros((v.shape[0], self.embed_dim), v.dtype))
        if self.bn is not None:
            g = self.bn(g)
        return g / jnp.linalg.norm(g, axis=-1, keepdims=True), h


class CaptionGenerator(nnx.Module):
    """VSRN's caption branch (the authors' ``S2VTAttModel``): regenerate the caption from the
    refined regions ``H``, teacher-forced.

    ``regions [B, N, in_dim], tokens [B, T] -> log_probs [B, T, vocab_size]``, where
    ``log_probs[:, t]`` predicts ``tokens[:, t + 1]`` having read ``tokens[:, :t + 1]``:

    - encoder: ``x_n = dropout(vid2hid(regions_n))``, a GRU over the N regions from zeros: its
      outputs ``enc [B, N, hidden]`` and final state ``h``;
    - decoder, for t = 0 .. T-1 from that ``h``: additive attention
      ``e_n = attention_score . tanh(attention [enc_n; h])``, ``alpha = softmax_n(e)``,
      ``context = sum_n alpha_n enc_n``; ``h <- GRU(h, dropout([embedding(tokens_t);
      context]))``; ``log_probs_t = log_softmax(out(h))``.

    Both dropouts (rate ``dropout``, 0.2) follow ``model.train()`` / ``model.eval()``. The
    authors never switch this branch to eval mode, so their dropout is always on; the branch
    only feeds the training loss (it is not used for retrieval), which runs in train mode
    either way, so the two agree wherever the branch is used.

    ``caption_targets`` makes ``tokens``, the targets and the mask from a batch's captions;
    ``itm_jax.losses.caption_generation`` is the training term.

    Args:
      vocab_size: word ids of the decoder (VSRN uses the retrieval vocabulary).
      in_dim: region size (VSRN's E, 2048).
      hidden: GRU size of encoder and decoder (512).
      word_dim: decoder word embedding size (300).
      dropout: drop probability of both dropouts.
      rngs: parameter RNG and the ``dropout`` stream.

    Parameters (PyTorch ``caption_model.*``): ``vid2hid`` (``encoder.vid2hid``, Xavier-normal
    weight), ``encoder_rnn.cell`` (``encoder.rnn``), ``embedding.embedding [V, word_dim]``
    (``decoder.embedding``, N(0, 1)), ``attention`` ``[2 hidden, hidden]`` (``decoder.attention
    .linear1``; rows ``:hidden`` act on ``enc_n``, the rest on ``h``), ``attention_score``
    ``[hidden, 1]``, no bias (``decoder.attention.linear2``), ``decoder_cell``
    (``decoder.rnn``, input ``[word; context]``), ``out [hidden, V]`` (``decoder.out``,
    Xavier-normal weight). GRUs: see ``torch_gru_cell``.
    """

    def __init__(self, vocab_size: int, in_dim: int = 2048, *, hidden: int = 512,
                 word_dim: int = 300, dropout: float = 0.2, rngs: nnx.Rngs):
        _check_dims("CaptionGenerator", vocab_size=vocab_size, in_dim=in_dim, hidden=hidden,
                    word_dim=word_dim)
        _check_dropout("CaptionGenerator", dropout)
        xavier_normal = nnx.initializers.xavier_normal()
        self.vid2hid = torch_linear(in_dim, hidden, kernel_init=xavier_normal, rngs=rngs)
        self.encoder_rnn = nnx.RNN(torch_gru_cell(hidden, hidden, rngs=rngs), return_carry=True,
                                   rngs=False)
        self.embedding = nnx.Embed(vocab_size, word_dim,
                                   embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.attention = torch_linear(2 * hidden, hidden, rngs=rngs)
        self.attention_score = torch_linear(hidden, 1, use_bias=False, rngs=rngs)
        self.decoder_cell = torch_gru_cell(word_dim + hidden, hidden, rngs=rngs)
        self.out = torch_linear(hidden, vocab_size, kernel_init=xavier_normal, rngs=rngs)
        stream = _rng_stream(rngs, "dropout", "CaptionGenerator")
        self.encoder_dropout = nnx.Dropout(dropout, rngs=stream)
        self.decoder_dropout = nnx.Dropout(dropout, rngs=stream)
        self.in_dim = in_dim
        self.hidden = hidden
        self.word_dim = word_dim

    def __call__(self, regions: jax.Array, tokens: jax.Array) -> jax.Array:
        regions, tokens = jnp.asarray(regions), jnp.asarray(tokens)
        if regions.ndim != 3 or regions.shape[-1] != self.in_dim:
            raise ValueError(f"CaptionGenerator expects regions [B, N, {self.in_dim}]; got "
                             f"shape {regions.shape}.")
        if (tokens.ndim != 2 or tokens.shape[0] != regions.shape[0]
                or not jnp.issubdtype(tokens.dtype, jnp.integer)):
            raise ValueError(f"CaptionGenerator expects tokens as integer [B, T] word ids with "
                             f"B={regions.shape[0]}; got {tokens.dtype} of shape {tokens.shape}.")
        b, steps = tokens.shape
        x = self.encoder_dropout(self.vid2hid(regions))  # [B, N, hidden]
        h, enc = self.encoder_rnn(x, initial_carry=jnp.zeros((b, self.hidden), x.dtype))
        # attention [enc_n; h] = enc_n W_e + h W_h + b: the encoder half is the same at every
        # step, so it is computed once.
        kernel = self.attention.kernel[...]  # [2 hidden, hidden]
        enc_part = enc @ kernel[: self.hidden] + self.attention.bias[...]  # [B, N, hidden]
        words = jnp.swapaxes(self.embedding(tokens), 0, 1)  # [T, B, word_dim]
        # One dropout mask per step, drawn up front (1 / (1 - rate) where kept, 1 in eval).
        keep = self.decoder_dropout(jnp.ones((steps, b, self.word_dim + self.hidden), x.dtype))

        def step(h, inputs):
            word, keep_t = inputs  # [B, word_dim], [B, word_dim + hidden]
            energy = jnp.tanh(enc_part + (h @ kernel[self.hidden:])[:, None])  # [B, N, hidden]
            alpha = jax.nn.softmax(self.attention_score(energy)[..., 0], axis=-1)  # [B, N]
            context = jnp.einsum("bn,bnh->bh", alpha, enc)  # [B, hidden]
            h, _ = self.decoder_cell(h, jnp.concatenate([word, context], axis=-1) * keep_t)
            return h, h

        _, states = jax.lax.scan(step, h, (words, keep))  # [T, B, hidden]
        return jax.nn.log_softmax(self.out(jnp.swapaxes(states, 0, 1)), axis=-1)


def caption_targets(tokens: jax.Array, lengths: jax.Array, *,
                    max_len: int = 60) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Teacher-forcing inputs, targets and mask of VSRN's caption term from a batch's captions.

    ``tokens [B, L]`` are ``<start> w... <end>`` then padding (``lengths [B]`` counts
    ``<start>`` and ``<end>``). Returns ``(inputs, targets, mask)``, each ``[B, T]`` with
    ``T = min(max_len - 1, L)`` decoded steps (the authors decode ``max_len - 1`` = 59 steps;
    steps past every caption's mask add nothing, so fewer are decoded when L is shorter):
    ``inputs[:, t] = tokens[:, t]`` (0 past the caption), ``targets[:, t] = tokens[:, t + 1]``
    (0 past the caption), ``mask[:, t] = 1`` for ``t < lengths``: every word, ``<end>`` and the
    first pad after it (predicting 0 after ``<end>``), as the authors' labels ``[:, 1:]`` and
    masks ``[:, 1:]``. ``mask`` is float32.
    """
    tokens, lengths = _check_inputs(tokens, lengths, "caption_targets")
    if max_len < 2:
        raise ValueError(f"caption_targets needs max_len >= 2 (max_len - 1 decoded steps); got "
                         f"{max_len}.")
    seq = tokens.shape[1]
    steps = min(max_len - 1, seq)
    padded = jnp.where(_valid_mask(lengths, seq), tokens, 0)
    padded = jnp.pad(padded, ((0, 0), (0, 1)))  # [B, L + 1]: the pad after a full caption
    mask = _valid_mask(lengths, steps).astype(jnp.float32)
    return padded[:, :steps], padded[:, 1: steps + 1], mask
