"""Caption encoders: GRU (VSE++, ConVSE), Bi-LSTM (IMC, CMPM) and the dual-path text CNN.

Every encoder is called as ``encoder(tokens, lengths)``:
  ``tokens [B, L]`` integer word ids, 0 = ``<pad>``; a caption is ``<start> w... <end>`` then
  padding. ``lengths [B]`` integer, the number of non-pad tokens, ``1 <= lengths <= L``.

Mask awareness: the output for caption b depends only on ``tokens[b, :lengths[b]]``. The ids at
padded positions (even ids outside the vocabulary) and the amount of padding (``L``) never
change it; ids at padded positions are replaced by 0 before the embedding lookup, so they get
no gradient either. The recurrent encoders read the state at the last valid step and exclude
padded steps from pooling; the text CNN, which sees a fixed window, is documented in
``TextCNN``.

Lengths are checked when they are concrete; under ``jax.jit`` they are traced and cannot be, so
an out-of-range length there silently reads the wrong step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from itm_jax.errors import ConfigError
from itm_jax.ops.packed_gru import MIN_HIDDEN, packed_gru, packed_gru_pays
from itm_jax.similarity import check_lengths, l2_normalize

POOLINGS = ("last_mean", "max")
GRU_IMPLS = ("auto", "scan", "packed")


def _check_inputs(tokens, lengths, name: str) -> tuple[jax.Array, jax.Array]:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"{name} expects tokens as an integer [B, L] array of word ids; got "
            f"{tokens.dtype} of shape {tokens.shape}."
        )
    lengths = check_lengths(name, "lengths", lengths, tokens.shape,
                            fix="Count the non-pad tokens of each caption (<start> and <end> "
                                "included) and pad tokens to the longest caption.")
    return tokens, lengths


def _valid_mask(lengths: jax.Array, seq: int) -> jax.Array:
    """``[B, L]`` bool, True at the first ``lengths[b]`` positions."""
    return jnp.arange(seq)[None, :] < lengths[:, None]


def _check_dims(name: str, **dims: int) -> None:
    bad = {
        k: v
        for k, v in dims.items()
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1
    }
    if bad:
        raise ValueError(f"{name} dimensions must be positive integers; got {bad}.")


def _check_dropout(name: str, rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} dropout is a drop probability in [0, 1); got {rate}.")


def _embedding(
    vocab_size: int,
    word_dim: int,
    pretrained,
    name: str,
    rngs: nnx.Rngs,
    init: Callable | None = None,
) -> nnx.Embed:
    """``nnx.Embed [vocab_size, word_dim]`` from a ``pretrained`` table, else from ``init``.

    ``init=None`` keeps Flax's default embedding initialisation.
    """
    kwargs = {} if init is None else {"embedding_init": init}
    if pretrained is not None:
        table = np.asarray(pretrained)
        if table.shape != (vocab_size, word_dim):
            raise ValueError(
                f"{name} pretrained embeddings must be [vocab_size, word_dim] = "
                f"({vocab_size}, {word_dim}); got {table.shape}. Build the matrix over the "
                "encoder's vocabulary, one row per word id."
            )
        if not np.issubdtype(table.dtype, np.floating):
            raise ValueError(f"{name} pretrained embeddings must be floats; got {table.dtype}.")
        if not np.isfinite(table).all():
            raise ValueError(
                f"{name} pretrained embeddings contain NaN or inf. Fill the rows of words "
                "missing from the word vectors (e.g. uniformly in [-0.1, 0.1]) first."
            )

        def from_table(key, shape, dtype=jnp.float32):
            del key, shape
            return jnp.asarray(table, dtype)

        kwargs["embedding_init"] = from_table
    return nnx.Embed(vocab_size, word_dim, rngs=rngs, **kwargs)


def _symmetric_uniform(bound: float) -> Callable:
    """``U(-bound, bound)`` initialiser (PyTorch's ``weight.data.uniform_(-bound, bound)``)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_gru_cell(in_features: int, hidden: int, *, rngs: nnx.Rngs) -> nnx.GRUCell:
    """PyTorch's ``nn.GRU`` cell (one layer, one direction) as an ``nnx.GRUCell``.

    ``cell(h [B, hidden], x [B, in_features]) -> (h', h')`` with
    ``r = sigma(W_ir x + b_ir + W_hr h + b_hr)``, ``z = sigma(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.

    Flax's cell has no recurrent bias; ``b_hn`` sits inside ``r * (.)`` and cannot be folded
    into ``b_in``, so ``dense_h`` is replaced by a linear layer with a bias. Parameters (the
    gate blocks in PyTorch's order ``[r | z | n]`` along the output axis):
    ``dense_i.kernel [in, 3H] = weight_ih.T``, ``dense_i.bias [3H] = bias_ih``,
    ``dense_h.kernel [H, 3H] = weight_hh.T``, ``dense_h.bias [3H] = bias_hh``. All start
    ``U(-1/sqrt(H), 1/sqrt(H))`` as PyTorch's.
    """
    init = _symmetric_uniform(1.0 / math.sqrt(hidden))
    cell = nnx.GRUCell(in_features, hidden, kernel_init=init, recurrent_kernel_init=init,
                       bias_init=init, rngs=rngs)
    cell.dense_h = nnx.Linear(hidden, 3 * hidden, kernel_init=init, bias_init=init, rngs=rngs)
    return cell


def _flax_gru_cell(in_features: int, hidden: int, *, rngs: nnx.Rngs) -> nnx.GRUCell:
    return nnx.GRUCell(in_features, hidden, rngs=rngs)


def _rng_stream(rngs: nnx.Rngs, stream: str, name: str) -> nnx.RngStream:
    try:
        return rngs[stream].fork()
    except KeyError:
        raise ValueError(
            f"{name} draws from the rng stream {stream!r}; give nnx.Rngs a {stream!r} or a "
            f"'default' stream, e.g. nnx.Rngs(0) or nnx.Rngs(params=0, {stream}=1)."
        ) from None


def _at(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x[b, index[b]]`` for ``x [B, L, H]`` and ``index [B]``: ``[B, H]``."""
    return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]


def _gru_runs_packed(gru_impl: str, hidden: int) -> bool:
    """Resolves ``gru_impl`` (one of ``GRU_IMPLS``) for a GRU of ``hidden`` units on this
    process's devices and prints the choice, with why, on process 0."""
    if gru_impl not in GRU_IMPLS:
        raise ConfigError(f"Unknown model.gru_impl={gru_impl!r} (GRUTextEncoder's gru_impl); "
                          f"valid: {', '.join(GRU_IMPLS)}.")
    packed = packed_gru_pays(hidden) if gru_impl == "auto" else gru_impl == "packed"
    n = jax.device_count()
    why = f"{hidden} units on {n} {jax.default_backend().upper()} device{'s' * (n > 1)}"
    if gru_impl == "auto" and not packed:
        why += f"; packed from {MIN_HIDDEN} units on one CPU device"
    if packed and n > 1:
        why += "; every device runs the whole batch's GRU"
    if jax.process_index() == 0:
        print(f"text encoder: {'packed' if packed else 'scan'} GRU "
              f"(model.gru_impl={gru_impl}: {why})")
    return packed


class GRUTextEncoder(nnx.Module):
    """VSE++ / ConVSE caption encoder: embedding -> GRU -> state at the last valid token -> L2.

    Faghri et al., "VSE++", BMVC 2018 (authors' ``model.py`` ``EncoderText``), reused unchanged by
    ConVSE (convse paper Sec. IV-A.2: 300-d word embeddings, a GRU, 1024-d caption embeddings)
    and AOQ. ``tokens [B, L], lengths [B] -> [B, embed_dim]``: the uni-directional GRU state
    after reading ``tokens[b, :lengths[b]]`` (the output at index ``lengths - 1``, as the
    authors' ``gather`` on the packed sequence), L2-normalised.

    ``gru_impl`` picks how the GRU runs; both are the same function to float32 rounding:
    ``"scan"``, the batch shares one ``lax.scan`` of length L (padded steps come after every
    caption's last valid step, so they never reach the state that is read); ``"packed"``,
    ``itm_jax.ops.packed_gru`` (captions sorted by length, each chunk of steps computing only the
    8-row blocks of captions that still have a token there, with a hand-written backward pass,
    so padding costs almost nothing, as PyTorch's ``pack_padded_sequence``; reverse-mode
    differentiable only: ``jax.jvp`` is not defined); ``"auto"``, packed where
    ``packed_gru_pays`` (512 units or more on a single CPU device), else the scan. The choice
    is made and printed (process 0) when the encoder is built.

    ``torch_cell`` picks the cell: Flax's ``GRUCell`` (default) has no recurrent bias ``b_hn``
    inside ``r * (W_hn h + b_hn)`` and starts its kernels lecun-normal / orthogonal; with
    ``torch_cell=True`` every layer is PyTorch's ``nn.GRU`` cell (``torch_gru_cell``: recurrent
    biases, ``U(-1/sqrt(H), 1/sqrt(H))`` init), the authors' encoder exactly, so that their
    checkpoints convert (VSRN's text side, ``itm_jax.models.pretrained.load_authors_weights``).

    ConVSE normalises after its projection head (``ConVSEHead``), not before: build this encoder
    with ``normalize=False`` there and L2-normalise the head's output.

    Args:
      vocab_size: number of word ids (id 0 is ``<pad>``).
      word_dim: word embedding size (300 in VSE++ and ConVSE).
      embed_dim: GRU hidden size = output size (1024).
      num_layers: stacked GRU layers (VSE++ uses 1).
      normalize: L2-normalise the output.
      pretrained: optional ``[vocab_size, word_dim]`` table (e.g. word2vec) to start the
        embedding from; otherwise ``U(-0.1, 0.1)`` as VSE++'s ``init_weights``.
      gru_impl: one of ``GRU_IMPLS``: ``"auto"``, ``"scan"`` or ``"packed"`` (see above).
      torch_cell: PyTorch's GRU cell in every layer (see above).
      rngs: parameter RNG.

    Parameters: ``embed.embedding [V, word_dim]`` (PyTorch ``embed.weight``), ``layers[k].cell``
    (``rnn.*_l{k}``; with ``torch_cell``, as ``torch_gru_cell`` maps them).
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int = 300,
        embed_dim: int = 1024,
        *,
        num_layers: int = 1,
        normalize: bool = True,
        pretrained=None,
        gru_impl: str = "auto",
        torch_cell: bool = False,
        rngs: nnx.Rngs,
    ):
        _check_dims(
            "GRUTextEncoder",
            vocab_size=vocab_size,
            word_dim=word_dim,
            embed_dim=embed_dim,
            num_layers=num_layers,
        )
        self.embed = _embedding(
            vocab_size,
            word_dim,
            pretrained,
            "GRUTextEncoder",
            rngs,
            _symmetric_uniform(0.1),
        )
        self.layers = nnx.List(
            [
                nnx.RNN((torch_gru_cell if torch_cell else _flax_gru_cell)(d, embed_dim,
                                                                          rngs=rngs),
                        rngs=False)
                for d in [word_dim] + [embed_dim] * (num_layers - 1)
            ]
        )
        self.embed_dim = embed_dim
        self.out_dim = embed_dim
        self.normalize = normalize
        self.packed = _gru_runs_packed(gru_impl, embed_dim)

    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        tokens, lengths = _check_inputs(tokens, lengths, "GRUTextEncoder")
        b, seq = tokens.shape
        x = self.embed(jnp.where(_valid_mask(lengths, seq), tokens, 0))  # [B, L, word_dim]
        if self.packed:
            cells = [rnn.cell for rnn in self.layers]
            weights = [(c.dense_i.kernel[...], c.dense_i.bias[...], c.dense_h.kernel[...],
                        None if c.dense_h.bias is None else c.dense_h.bias[...])
                       for c in cells]
            out = packed_gru(x, lengths, weights)  # [B, embed_dim]
        else:
            h0 = jnp.zeros((b, self.embed_dim), x.dtype)
            for rnn in self.layers:
                x = rnn(x, initial_carry=h0, seq_lengths=lengths)  # [B, L, embed_dim]
            out = _at(x, lengths - 1)  # [B, embed_dim]; a GRU's output is its state
        return l2_normalize(out) if self.normalize else out


class BiLSTMTextEncoder(nnx.Module):
    """Bi-LSTM caption encoder of IMC (``pooling="last_mean"``) and CMPM (``pooling="max"``).

    ``tokens [B, L], lengths [B] -> [B, out_dim]``. A forward LSTM reads
    ``tokens[b, :lengths[b]]``; a backward LSTM reads the same valid tokens reversed (its input
    is the valid part flipped, padding kept after it, as ``nnx.RNN(reverse=True, seq_lengths=)``
    does), and its outputs are put back in sentence order, so its output at position t has read
    tokens ``lengths-1 .. t``.

    - ``"last_mean"`` (IMC paper Sec. 2 and Fig. 1, authors' ``EncoderText`` with
      ``use_bidirectional_rnn``): each direction read at its last valid step (forward at
      ``lengths - 1``, backward at position 0, i.e. after the whole caption) and the two
      averaged: ``out_dim = hidden``. Normalised by default. The authors' code averages the two
      directions' outputs per step and reads position ``lengths - 1``, where the backward
      direction has seen only the last token (``<end>``); we read each direction's final
      state, which is what the paper describes.
    - ``"max"`` (CMPM paper Sec. 3.1, authors' ``bidirectional_lstm``): the two directions'
      outputs concatenated per step and max-pooled over the valid steps only:
      ``out_dim = 2 * hidden`` (CMPM: 512 units per direction). Not normalised by default (the
      features go through ``ProjectionHead1x1`` into the losses). The authors'
      ``tf.nn.bidirectional_dynamic_rnn`` emits zeros at padded steps and its max runs over
      them, so a caption shorter than the batch's longest gets ``max(., 0)``; padded steps here
      never enter the max.

    Presets: IMC ``BiLSTMTextEncoder(V, 300, 1024, pooling="last_mean", dropout=0.5)`` (GloVe
    as ``pretrained``; the code's dropout is 0.4); CMPM ``BiLSTMTextEncoder(V, 512, 512,
    pooling="max", dropout=0.3)``. The CMPM code also drops LSTM outputs, learns the initial
    states and uses TF's forget-gate bias of 1; here states start at zero and the Flax
    ``OptimizedLSTMCell`` initialisation is used.

    Args:
      vocab_size: number of word ids (id 0 is ``<pad>``).
      word_dim: word embedding size.
      hidden: LSTM units per direction.
      pooling: ``"last_mean"`` or ``"max"``.
      normalize: L2-normalise the output; ``None`` means True for ``"last_mean"`` and False
        for ``"max"``, as the respective papers.
      dropout: drop probability on the word embeddings fed to both LSTMs (training mode).
      pretrained: optional ``[vocab_size, word_dim]`` table; otherwise Xavier-uniform, as both
        authors' codes.
      rngs: parameter RNG, and the ``dropout`` stream when ``dropout > 0``.
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int = 300,
        hidden: int = 1024,
        *,
        pooling: str = "last_mean",
        normalize: bool | None = None,
        dropout: float = 0.0,
        pretrained=None,
        rngs: nnx.Rngs,
    ):
        _check_dims("BiLSTMTextEncoder", vocab_size=vocab_size, word_dim=word_dim, hidden=hidden)
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling={pooling!r}; valid: {', '.join(POOLINGS)}.")
        _check_dropout("BiLSTMTextEncoder", dropout)
        self.embed = _embedding(
            vocab_size,
            word_dim,
            pretrained,
            "BiLSTMTextEncoder",
            rngs,
            nnx.initializers.xavier_uniform(),
        )
        self.forward_rnn = nnx.RNN(nnx.OptimizedLSTMCell(word_dim, hidden, rngs=rngs), rngs=False)
        self.backward_rnn = nnx.RNN(
            nnx.OptimizedLSTMCell(word_dim, hidden, rngs=rngs),
            reverse=True,
            keep_order=True,
            rngs=False,
        )
        # Forked after every parameter, so that turning dropout on keeps the initial weights.
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.hidden = hidden
        self.pooling = pooling
        self.normalize = pooling == "last_mean" if normalize is None else normalize
        self.out_dim = hidden if pooling == "last_mean" else 2 * hidden

    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        tokens, lengths = _check_inputs(tokens, lengths, "BiLSTMTextEncoder")
        b, seq = tokens.shape
        valid = _valid_mask(lengths, seq)
        x = self.embed(jnp.where(valid, tokens, 0))  # [B, L, word_dim]
        if self.dropout is not None:
            x = self.dropout(x)
        zeros = jnp.zeros((b, self.hidden), x.dtype)
        fwd = self.forward_rnn(x, initial_carry=(zeros, zeros), seq_lengths=lengths)  # [B, L, H]
        bwd = self.backward_rnn(x, initial_carry=(zeros, zeros), seq_lengths=lengths)  # [B, L, H]
        if self.pooling == "last_mean":
            out = 0.5 * (_at(fwd, lengths - 1) + bwd[:, 0])  # [B, H]
        else:
            steps = jnp.concatenate([fwd, bwd], axis=-1)  # [B, L, 2H]
            out = jnp.max(jnp.where(valid[..., None], steps, -jnp.inf), axis=1)  # [B, 2H]
        return l2_normalize(out) if self.normalize else out


class TextBlock(NamedTuple):
    """One bottleneck residual block of the text CNN (dual-path paper Fig. 3, 1x2 filters).

    1x1 conv to ``bottleneck`` channels, 1x2 conv (stride ``stride`` along the sentence), 1x1
    conv to ``features`` channels, each followed by BatchNorm (ReLU after the first two); a
    shortcut (1x1 conv + BatchNorm with the same stride when the shape changes, identity
    otherwise) is added and the sum goes through a ReLU.
    """

    features: int
    bottleneck: int
    stride: int = 1


# The authors' released text branch (layumi/Image-Text-Embedding, resnet52_new_hope_word2_pool.m):
# 3, 4, 6 and 1 bottleneck blocks with 256, 512, 1024 and 2048 output channels, 32 -> 16 -> 8
# positions. The paper text says the block count is "consistent with ResNet-50" (3, 4, 6, 3);
# the code's last stage has one block, and its first block of each later stage is as wide as
# its output.
PAPER_BLOCKS: tuple[TextBlock, ...] = (
    TextBlock(256, 128),
    *[TextBlock(256, 64)] * 2,
    TextBlock(512, 512, stride=2),
    *[TextBlock(512, 128)] * 3,
    TextBlock(1024, 1024, stride=2),
    *[TextBlock(1024, 256)] * 5,
    TextBlock(2048, 2048),
)

# A two-block stack for tests and CPU smoke runs (32 -> 16 positions).
SMALL_BLOCKS: tuple[TextBlock, ...] = (TextBlock(128, 32), TextBlock(256, 64, stride=2))


class _Bottleneck(nnx.Module):
    """``TextBlock`` as a module: ``[B, S, in_features] -> [B, ceil(S / stride), features]``."""

    def __init__(self, in_features: int, block: TextBlock, *, rngs: nnx.Rngs):
        def conv(cin, cout, kernel, stride=1, padding="VALID"):
            return nnx.Conv(
                cin,
                cout,
                kernel_size=(kernel,),
                strides=(stride,),
                padding=padding,
                use_bias=False,
                rngs=rngs,
            )

        self.reduce = conv(in_features, block.bottleneck, 1)
        self.reduce_bn = nnx.BatchNorm(block.bottleneck, rngs=rngs)
        # MatConvNet pad [0 0 1 0]: one zero column on the left, so position t pairs words
        # t-1 and t and the length is kept (halved at stride 2).
        self.pair = conv(block.bottleneck, block.bottleneck, 2, block.stride, ((1, 0),))
        self.pair_bn = nnx.BatchNorm(block.bottleneck, rngs=rngs)
        self.expand = conv(block.bottleneck, block.features, 1)
        self.expand_bn = nnx.BatchNorm(block.features, rngs=rngs)
        if in_features != block.features or block.stride != 1:
            self.shortcut = conv(in_features, block.features, 1, block.stride)
            self.shortcut_bn = nnx.BatchNorm(block.features, rngs=rngs)
        else:
            self.shortcut = None
            self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.reduce_bn(self.reduce(x)))
        h = nnx.relu(self.pair_bn(self.pair(h)))
        h = self.expand_bn(self.expand(h))
        if self.shortcut is not None:
            x = self.shortcut_bn(self.shortcut(x))
        return nnx.relu(h + x)


def position_shift(
    tokens: jax.Array, lengths: jax.Array, *, seq_len: int, key: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Place each caption in a fixed window of ``seq_len`` tokens (dual-path paper Sec. III-B).

    A caption longer than the window keeps its first ``seq_len`` tokens (the paper "clip[s] the
    final several words"). With ``key=None`` the caption is left-aligned (positions
    ``0 .. n-1``, padding after). With a key, *position shift*: each caption starts at an offset
    drawn uniformly from ``{0, ..., seq_len - n}``, so zeros pad both ends; this is the
    authors' ``location = randi(33 - len)`` for ``seq_len = 32``.

    Args:
      tokens: ``[B, L]`` integer word ids. lengths: ``[B]`` valid tokens per caption.
      seq_len: window length S (32 for Flickr30K and COCO, 56 for CUHK-PEDES).
      key: PRNG key for the offsets, or ``None`` for left alignment.

    Returns:
      ``(window [B, S], valid [B, S])``: the ids in the window (0 at padding) and the bool
      mask of caption positions.
    """
    _check_dims("position_shift", seq_len=seq_len)
    tokens, lengths = _check_inputs(tokens, lengths, "position_shift")
    b, seq = tokens.shape
    n = jnp.minimum(lengths, seq_len)  # [B]
    if key is None:
        offset = jnp.zeros_like(n)
    else:
        offset = jax.random.randint(key, (b,), 0, seq_len - n + 1, dtype=n.dtype)
    src = jnp.arange(seq_len)[None, :] - offset[:, None]  # [B, S] caption index at each slot
    valid = (src >= 0) & (src < n[:, None])
    window = jnp.take_along_axis(tokens, jnp.clip(src, 0, seq - 1), axis=1)
    return jnp.where(valid, window, 0), valid


class TextCNN(nnx.Module):
    """Deep text CNN of the dual-path network (dual-path paper Sec. III-B, Fig. 2 bottom).

    ``tokens [B, L], lengths [B] -> [B, out_dim]``. Each caption is placed in a fixed window of
    ``seq_len`` words (``position_shift``: a random offset in training, left-aligned in eval
    mode), looked up in a word embedding (the paper's first ``1 x 1 x d x 300`` convolution on
    one-hot words, i.e. a lookup table) and batch-normalised, giving a ``1 x seq_len`` "image"
    with ``word_dim`` channels (a 1-D sequence here, so a paper ``1 x k`` filter is a length-k
    1-D convolution). Residual bottleneck blocks with 1x2 filters (``blocks``) follow, then the
    average over all window positions, then optionally the authors' fully connected layer
    (``head_dim``: Linear without bias -> BatchNorm -> ReLU) and dropout.

    What "padded positions never change the output" means for a fixed-window CNN: the output is
    a function of the valid tokens and of their offset in the window only. Padding slots hold
    a zero embedding whatever id the input has there (the paper pads the one-hot code with
    zero columns), every slot (padding included) is convolved and averaged, exactly as the
    authors' network, and the input's own padding length ``L`` does not matter because the
    window is rebuilt from the valid tokens. In training mode the outputs of one batch also
    share BatchNorm statistics, as in any BatchNorm network.

    The output is the raw feature fed to ``SharedClassifier``; L2-normalise it for the ranking
    loss. The 1x1 lookup of the authors' code has a bias, which the BatchNorm after it cancels;
    it is omitted here.

    ``TextCNN.paper(vocab_size, rngs=...)`` builds the authors' network; the constructor's
    default ``blocks`` is the small ``SMALL_BLOCKS`` stack for tests and CPU runs.

    Modes: ``model.train()`` / ``model.eval()`` (or ``nnx.view(model, deterministic=...)``)
    switch the position shift, dropout and BatchNorm together; a new model is in training mode.

    Args:
      vocab_size: number of word ids (id 0 is ``<pad>``).
      word_dim: word embedding size (300, word2vec).
      seq_len: window length (32 for Flickr30K / COCO, 56 for CUHK-PEDES).
      blocks: the residual stack, a sequence of ``TextBlock``.
      head_dim: output size of the fully connected layer after pooling; ``None`` returns the
        pooled ``blocks[-1].features`` feature.
      dropout: drop probability on the output (training mode; the paper uses 0.75).
      pretrained: optional ``[vocab_size, word_dim]`` table (the paper's word2vec
        initialisation, Table V); otherwise Flax's default embedding initialisation.
      rngs: parameter RNG, the ``shift`` stream for the offsets and the ``dropout`` stream when
        ``dropout > 0`` (``nnx.Rngs(0)`` provides all through its default stream).
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int = 300,
        *,
        seq_len: int = 32,
        blocks: Sequence[TextBlock] = SMALL_BLOCKS,
        head_dim: int | None = None,
        dropout: float = 0.0,
        pretrained=None,
        rngs: nnx.Rngs,
    ):
        _check_dims("TextCNN", vocab_size=vocab_size, word_dim=word_dim, seq_len=seq_len)
        blocks = tuple(TextBlock(*blk) for blk in blocks)
        if not blocks:
            raise ValueError("TextCNN needs at least one TextBlock in blocks; see PAPER_BLOCKS.")
        for i, blk in enumerate(blocks):
            _check_dims(f"TextCNN block {i}", **blk._asdict())
        if head_dim is not None:
            _check_dims("TextCNN", head_dim=head_dim)
        _check_dropout("TextCNN", dropout)
        self.embed = _embedding(vocab_size, word_dim, pretrained, "TextCNN", rngs)
        self.embed_bn = nnx.BatchNorm(word_dim, rngs=rngs)
        widths = [word_dim] + [blk.features for blk in blocks]
        self.blocks = nnx.List(
            [_Bottleneck(cin, blk, rngs=rngs) for cin, blk in zip(widths[:-1], blocks, strict=True)]
        )
        if head_dim is None:
            self.head, self.head_bn = None, None
        else:
            self.head = nnx.Linear(widths[-1], head_dim, use_bias=False, rngs=rngs)
            self.head_bn = nnx.BatchNorm(head_dim, rngs=rngs)
        # Streams are forked after every parameter (and dropout's last), so that turning
        # dropout on changes neither the initial weights nor the offsets.
        self.shift_rngs = _rng_stream(rngs, "shift", "TextCNN")
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.seq_len = seq_len
        self.out_dim = widths[-1] if head_dim is None else head_dim
        self.deterministic = False

    @classmethod
    def paper(
        cls,
        vocab_size: int,
        *,
        seq_len: int = 32,
        dropout: float = 0.75,
        pretrained=None,
        rngs: nnx.Rngs,
    ) -> TextCNN:
        """The authors' text CNN: 300-d words, ``PAPER_BLOCKS``, a 2048-d head and dropout.

        From ``resnet52_new_hope_word2_pool.m`` in layumi/Image-Text-Embedding (Flickr30K,
        dropout 0.75 as the paper says); their COCO network ``coco_word2_pool.m`` is the same
        stack with ``dropout=0.5``. Use ``seq_len=56`` for CUHK-PEDES. Output ``[B, 2048]``.
        """
        return cls(
            vocab_size,
            300,
            seq_len=seq_len,
            blocks=PAPER_BLOCKS,
            head_dim=2048,
            dropout=dropout,
            pretrained=pretrained,
            rngs=rngs,
        )

    def set_view(self, deterministic: bool | None = None):
        """``nnx.view`` hook: ``deterministic=True`` turns the position shift off."""
        if deterministic is not None:
            self.deterministic = deterministic

    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        tokens, lengths = _check_inputs(tokens, lengths, "TextCNN")
        key = None if self.deterministic else self.shift_rngs()
        window, valid = position_shift(tokens, lengths, seq_len=self.seq_len, key=key)
        x = self.embed(window) * valid[..., None]  # [B, S, word_dim], zero at padding slots
        x = self.embed_bn(x)
        for block in self.blocks:
            x = block(x)  # [B, S', C]
        x = jnp.mean(x, axis=1)  # [B, C]
        if self.head is not None:
            x = nnx.relu(self.head_bn(self.head(x)))
        if self.dropout is not None:
            x = self.dropout(x)
        return x
