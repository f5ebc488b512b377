"""Caption encoders: mask awareness, step-by-step references, position shift, jit, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from itm_jax.models.text import (
    PAPER_BLOCKS,
    BiLSTMTextEncoder,
    GRUTextEncoder,
    TextBlock,
    TextCNN,
    position_shift,
)

V, WORD, HID = 40, 8, 6
WORDS = 20  # valid positions use ids 1..WORDS-1; ids >= WORDS appear only as padding garbage
LENGTHS = (7, 3, 1, 5)
SEQ = 7

ENCODERS = {
    "gru_scan": lambda rngs: GRUTextEncoder(V, WORD, HID, gru_impl="scan", rngs=rngs),
    "gru_packed": lambda rngs: GRUTextEncoder(V, WORD, HID, gru_impl="packed", rngs=rngs),
    "bilstm_last": lambda rngs: BiLSTMTextEncoder(V, WORD, HID, rngs=rngs),
    "bilstm_max": lambda rngs: BiLSTMTextEncoder(V, WORD, HID, pooling="max", rngs=rngs),
    "textcnn": lambda rngs: TextCNN(
        V, WORD, seq_len=8, blocks=[(12, 4, 2)], head_dim=10, rngs=rngs
    ),
}


# Tiny models: compiling dominates, so XLA's optimisation passes are skipped (conftest).
pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")


@nnx.jit
def encode(model, tokens, lengths):
    """One compiled call per architecture and shape, shared by every test (eager NNX dispatches
    op by op, and an eager RNN retraces its scan on every call)."""
    return model(tokens, lengths)


@nnx.jit
def projection_grad(model, tokens, lengths, w):
    return nnx.grad(lambda m: jnp.sum(m(tokens, lengths) * w))(model)


@nnx.jit
def cell_step(cell, carry, x):
    return cell(carry, x)


def make_batch(lengths=LENGTHS, seq=SEQ, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, np.int32)
    tokens = rng.integers(1, WORDS, size=(len(lengths), seq)).astype(np.int32)
    tokens[np.arange(seq)[None, :] >= lengths[:, None]] = 0
    return jnp.asarray(tokens), jnp.asarray(lengths)


def with_garbage(tokens, lengths, extra=0, seed=1):
    """The same captions with `extra` more columns and random ids (some outside the vocabulary)
    at every padded position."""
    rng = np.random.default_rng(seed)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    b, seq = tokens.shape
    out = rng.integers(WORDS, V + 10, size=(b, seq + extra)).astype(np.int32)
    valid = np.arange(seq + extra)[None, :] < lengths[:, None]
    padded = np.pad(tokens, ((0, 0), (0, extra)))
    return jnp.asarray(np.where(valid, padded, out)), jnp.asarray(lengths)


def run_cell(cell, xs):
    """Outputs of `cell` over the rows of `xs [n, D]`, one Python step at a time from zeros."""
    h = jnp.zeros((1, cell.hidden_features))
    carry = (h, h) if isinstance(cell, nnx.OptimizedLSTMCell) else h
    outs = []
    for x in xs:
        carry, y = cell_step(cell, carry, x[None])
        outs.append(y[0])
    return jnp.stack(outs)  # [n, H]


# ---------------------------------------------------------------- shared encoder contract


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_shapes_and_out_dim(name):
    model = ENCODERS[name](nnx.Rngs(0))
    tokens, lengths = make_batch()
    out = encode(model, tokens, lengths)
    assert out.shape == (len(LENGTHS), model.out_dim)
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_padding_never_changes_the_output(name):
    model = ENCODERS[name](nnx.Rngs(0))
    model.eval()
    tokens, lengths = make_batch()
    ref = encode(model, tokens, lengths)
    for extra in (0, 5):  # garbage ids at the padded positions, then also longer padding
        out = encode(model, *with_garbage(tokens, lengths, extra=extra))
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_jax_jit_over_split_state_matches_nnx_jit(name):
    model = ENCODERS[name](nnx.Rngs(0))
    model.eval()
    tokens, lengths = make_batch()
    graphdef, state = nnx.split(model)

    @jax.jit
    def split_encode(state, tokens, lengths):
        return nnx.merge(graphdef, state)(tokens, lengths)

    np.testing.assert_allclose(
        split_encode(state, tokens, lengths), encode(model, tokens, lengths), rtol=1e-5, atol=1e-6
    )
    other, other_lengths = make_batch(lengths=(2, 7, 4, 6), seed=3)
    np.testing.assert_allclose(
        split_encode(state, other, other_lengths),
        encode(model, other, other_lengths),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_gradients_reach_every_parameter_and_skip_padding_ids(name):
    model = ENCODERS[name](nnx.Rngs(0))
    model.eval()  # the same graph as training for the RNNs; the text CNN compiles faster
    tokens, lengths = with_garbage(*make_batch())
    w = jax.random.normal(jax.random.key(7), (len(LENGTHS), model.out_dim))
    grads = projection_grad(model, tokens, lengths, w)
    for path, g in nnx.to_flat_state(grads):
        g = np.asarray(g[...])
        assert np.isfinite(g).all(), path
        if path[-1] != "embedding":
            assert np.abs(g).max() > 0, path
    emb = np.asarray(grads["embed"]["embedding"][...])
    used = np.unique(np.asarray(tokens)[np.arange(SEQ)[None] < np.asarray(lengths)[:, None]])
    assert (np.abs(emb[used]).max(axis=1) > 0).all()
    unused = np.setdiff1d(np.arange(V), used)
    assert (emb[unused] == 0).all()


@pytest.mark.parametrize(
    "tokens, lengths, match",
    [
        (np.zeros((2, 4), np.float32), [1, 2], "integer"),
        (np.zeros((2, 4, 1), np.int32), [1, 2], "integer"),
        (np.zeros((2, 4), np.int32), [1, 2, 3], r"lengths as an integer \[2\] array"),
        (np.zeros((2, 4), np.int32), [0, 2], "1 <= lengths"),
        (np.zeros((2, 4), np.int32), [1, 5], "1 <= lengths"),
    ],
)
@pytest.mark.parametrize("name", ["gru_scan", "gru_packed", "bilstm_max", "textcnn"])
def test_bad_inputs_raise(name, tokens, lengths, match):
    model = ENCODERS[name](nnx.Rngs(0))
    with pytest.raises(ValueError, match=match):
        model(jnp.asarray(tokens), jnp.asarray(lengths, jnp.int32))


# ---------------------------------------------------------------- GRU


@pytest.mark.parametrize("gru_impl", ["scan", "packed"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_gru_reads_the_state_at_the_last_valid_token(num_layers, gru_impl):
    model = GRUTextEncoder(V, WORD, HID, num_layers=num_layers, normalize=False,
                           gru_impl=gru_impl, rngs=nnx.Rngs(1))
    tokens, lengths = make_batch()
    out = encode(model, *with_garbage(tokens, lengths))
    table = model.embed.embedding[...]
    for b, n in enumerate(LENGTHS):
        x = table[tokens[b, :n]]
        for rnn in model.layers:
            x = run_cell(rnn.cell, x)
        np.testing.assert_allclose(out[b], x[-1], rtol=1e-5, atol=1e-6)


def test_gru_normalizes_by_default():
    tokens, lengths = make_batch()
    out = encode(GRUTextEncoder(V, WORD, HID, rngs=nnx.Rngs(0)), tokens, lengths)
    np.testing.assert_allclose(jnp.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    raw = encode(GRUTextEncoder(V, WORD, HID, normalize=False, rngs=nnx.Rngs(0)), tokens, lengths)
    np.testing.assert_allclose(out, raw / jnp.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5)


def test_gru_embedding_init_and_pretrained_table():
    table = np.asarray(GRUTextEncoder(V, WORD, HID, rngs=nnx.Rngs(0)).embed.embedding[...])
    assert np.abs(table).max() <= 0.1 and table.std() > 0.04  # U(-0.1, 0.1): std 0.058
    pretrained = np.random.default_rng(0).normal(size=(V, WORD)).astype(np.float32)
    model = GRUTextEncoder(V, WORD, HID, pretrained=pretrained, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(model.embed.embedding[...], pretrained)
    with pytest.raises(ValueError, match=r"\[vocab_size, word_dim\]"):
        GRUTextEncoder(V, WORD, HID, pretrained=pretrained[:, :-1], rngs=nnx.Rngs(0))
    pretrained[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GRUTextEncoder(V, WORD, HID, pretrained=pretrained, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------- Bi-LSTM


def _bilstm_reference(model, tokens, lengths):
    """Per caption: forward outputs f_t over tokens[:n], backward outputs b_t (having read
    tokens n-1 .. t) from a loop over the reversed valid tokens only."""
    table = model.embed.embedding[...]
    for b, n in enumerate(np.asarray(lengths)):
        x = table[tokens[b, :n]]
        f = run_cell(model.forward_rnn.cell, x)
        bwd = run_cell(model.backward_rnn.cell, x[::-1])[::-1]
        yield f, bwd


def test_bilstm_last_mean_averages_each_directions_final_state():
    model = BiLSTMTextEncoder(V, WORD, HID, normalize=False, rngs=nnx.Rngs(2))
    tokens, lengths = make_batch()
    out = encode(model, *with_garbage(tokens, lengths, extra=5))
    for b, (f, bwd) in enumerate(_bilstm_reference(model, tokens, lengths)):
        # the backward direction's final state sits at position 0, after the whole caption
        np.testing.assert_allclose(out[b], 0.5 * (f[-1] + bwd[0]), rtol=1e-5, atol=1e-6)


def test_bilstm_max_pools_over_valid_steps_only():
    model = BiLSTMTextEncoder(V, WORD, HID, pooling="max", rngs=nnx.Rngs(3))
    # Padding ids whose embeddings saturate every gate: if padded steps entered the max, their
    # outputs (close to +-1) would win it.
    model.embed.embedding[...] = model.embed.embedding[...].at[WORDS:].set(50.0)
    tokens, lengths = make_batch()
    out = encode(model, *with_garbage(tokens, lengths, extra=5))
    for b, (f, bwd) in enumerate(_bilstm_reference(model, tokens, lengths)):
        ref = jnp.max(jnp.concatenate([f, bwd], axis=1), axis=0)
        np.testing.assert_allclose(out[b], ref, rtol=1e-5, atol=1e-6)


def test_bilstm_defaults_and_out_dim():
    last = BiLSTMTextEncoder(V, WORD, HID, rngs=nnx.Rngs(0))
    pooled = BiLSTMTextEncoder(V, WORD, HID, pooling="max", rngs=nnx.Rngs(0))
    assert (last.out_dim, last.normalize) == (HID, True)
    assert (pooled.out_dim, pooled.normalize) == (2 * HID, False)
    tokens, lengths = make_batch()
    norms = jnp.linalg.norm(encode(last, tokens, lengths), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        BiLSTMTextEncoder(V, WORD, HID, pooling="mean", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout"):
        BiLSTMTextEncoder(V, WORD, HID, dropout=1.0, rngs=nnx.Rngs(0))


def test_bilstm_dropout_only_in_training():
    model = BiLSTMTextEncoder(V, WORD, HID, pooling="max", dropout=0.5, rngs=nnx.Rngs(0))
    tokens, lengths = make_batch()
    first, second = encode(model, tokens, lengths), encode(model, tokens, lengths)
    assert not np.allclose(first, second)
    model.eval()
    np.testing.assert_array_equal(encode(model, tokens, lengths), encode(model, tokens, lengths))
    same = BiLSTMTextEncoder(V, WORD, HID, pooling="max", rngs=nnx.Rngs(0))  # no dropout
    same.eval()
    np.testing.assert_allclose(
        encode(model, tokens, lengths), encode(same, tokens, lengths), rtol=1e-6
    )


# ---------------------------------------------------------------- text CNN


def test_position_shift_left_aligns_and_clips_without_a_key():
    tokens, lengths = make_batch()
    window, valid = position_shift(tokens, lengths, seq_len=5)
    for b, n in enumerate(LENGTHS):
        m = min(n, 5)
        np.testing.assert_array_equal(window[b, :m], tokens[b, :m])
        assert (window[b, m:] == 0).all()
        np.testing.assert_array_equal(valid[b], np.arange(5) < m)


def test_position_shift_offsets_are_uniform_over_the_free_space():
    tokens, lengths = make_batch()
    seq_len = 9
    keys = jax.random.split(jax.random.key(0), 300)
    draw = jax.jit(jax.vmap(lambda k: position_shift(tokens, lengths, seq_len=seq_len, key=k)))
    windows, valids = draw(keys)
    windows, valids = np.asarray(windows), np.asarray(valids)  # [K, B, S]
    slots = np.arange(seq_len)
    for b, n in enumerate(LENGTHS):
        offsets = valids[:, b].argmax(axis=1)  # [K]
        counts = np.bincount(offsets, minlength=seq_len)
        assert (counts[: seq_len - n + 1] > 0).all() and (counts[seq_len - n + 1 :] == 0).all()
        assert counts[: seq_len - n + 1].min() > 0.4 * counts[: seq_len - n + 1].mean()
        expected = (slots >= offsets[:, None]) & (slots < offsets[:, None] + n)
        np.testing.assert_array_equal(valids[:, b], expected)
        src = np.clip(slots - offsets[:, None], 0, SEQ - 1)  # [K, S]
        np.testing.assert_array_equal(
            windows[:, b], np.where(expected, np.asarray(tokens)[b][src], 0)
        )
    again = position_shift(tokens, lengths, seq_len=seq_len, key=keys[5])
    np.testing.assert_array_equal(again[0], windows[5])


def test_textcnn_shift_is_drawn_from_the_shift_stream_in_training_only():
    tokens, lengths = make_batch()
    a, b = ENCODERS["textcnn"](nnx.Rngs(5)), ENCODERS["textcnn"](nnx.Rngs(5))
    first = encode(a, tokens, lengths)
    np.testing.assert_array_equal(first, encode(b, tokens, lengths))  # same stream, same offsets
    assert not np.allclose(first, encode(a, tokens, lengths))  # the stream advanced
    a.eval()
    count = int(a.shift_rngs.count[...])
    np.testing.assert_array_equal(encode(a, tokens, lengths), encode(a, tokens, lengths))
    assert int(a.shift_rngs.count[...]) == count
    with pytest.raises(ValueError, match="'shift'"):
        ENCODERS["textcnn"](nnx.Rngs(params=0))


def test_textcnn_training_output_is_the_shifted_caption_seen_without_shift():
    model = ENCODERS["textcnn"](nnx.Rngs(4))
    # A zero <pad> row makes leading pad ids look like the shift's zero padding.
    model.embed.embedding[...] = model.embed.embedding[...].at[0].set(0.0)
    tokens, lengths = make_batch()
    key = nnx.clone(model).shift_rngs()  # the key the model draws next
    window, valid = position_shift(tokens, lengths, seq_len=model.seq_len, key=key)
    assert np.asarray(valid.argmax(axis=1)).any()  # some caption is actually shifted
    ends = valid.argmax(axis=1) + lengths
    shifted = encode(model, tokens, lengths)
    unshifted = nnx.view(model, deterministic=True)  # BatchNorm stays in training mode
    np.testing.assert_allclose(encode(unshifted, window, ends), shifted, rtol=1e-5, atol=1e-5)


def test_textcnn_padding_never_changes_the_output_in_training_mode():
    tokens, lengths = make_batch()
    clean = encode(ENCODERS["textcnn"](nnx.Rngs(5)), tokens, lengths)
    noisy = encode(ENCODERS["textcnn"](nnx.Rngs(5)), *with_garbage(tokens, lengths))
    np.testing.assert_allclose(noisy, clean, rtol=1e-6, atol=1e-6)


def test_textcnn_pretrained_head_and_dropout():
    pretrained = np.random.default_rng(0).normal(size=(V, WORD)).astype(np.float32)
    model = TextCNN(
        V, WORD, seq_len=8, blocks=[(12, 4)], dropout=0.5, pretrained=pretrained, rngs=nnx.Rngs(0)
    )
    np.testing.assert_array_equal(model.embed.embedding[...], pretrained)
    assert model.head is None and model.out_dim == 12
    tokens, lengths = make_batch(lengths=(8, 8, 8, 8), seq=8)  # full windows: no shift
    assert not np.allclose(encode(model, tokens, lengths), encode(model, tokens, lengths))
    model.eval()
    np.testing.assert_array_equal(encode(model, tokens, lengths), encode(model, tokens, lengths))


def test_textcnn_paper_configuration():
    assert len(PAPER_BLOCKS) == 14 and PAPER_BLOCKS[-1].features == 2048
    assert np.prod([blk.stride for blk in PAPER_BLOCKS]) == 4  # 32 words -> 8 positions
    model = nnx.eval_shape(lambda: TextCNN.paper(V, rngs=nnx.Rngs(0)))
    assert (model.seq_len, model.out_dim, model.dropout.rate) == (32, 2048, 0.75)
    coco = nnx.eval_shape(lambda: TextCNN.paper(V, dropout=0.5, seq_len=56, rngs=nnx.Rngs(0)))
    assert (coco.seq_len, coco.dropout.rate) == (56, 0.5)
    assert model.embed.embedding.shape == (V, 300) and model.head.kernel.shape == (2048, 2048)
    assert model.head.bias is None


def test_textcnn_block_strides_and_shortcuts():
    model = TextCNN(
        V, WORD, seq_len=9, blocks=[TextBlock(WORD, 4), TextBlock(12, 4, 2)], rngs=nnx.Rngs(0)
    )
    first, second = model.blocks
    assert first.shortcut is None  # same width, stride 1: identity shortcut
    assert second.shortcut.kernel.shape == (1, WORD, 12)
    assert second.pair.kernel.shape == (2, 4, 4)
    out = nnx.eval_shape(lambda blk, x: blk(x), second, jnp.ones((2, 9, WORD)))
    assert out.shape == (2, 5, 12)  # ceil(9 / 2) on both paths


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"blocks": []}, "at least one"),
        ({"blocks": [(12, 0)]}, "positive"),
        ({"seq_len": 0}, "positive"),
        ({"dropout": -0.1}, "dropout"),
        ({"head_dim": 0}, "positive"),
    ],
)
def test_textcnn_bad_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TextCNN(V, WORD, rngs=nnx.Rngs(0), **kwargs)
