"""The packed GRU (itm_jax.models.text._packed_gru, the single-CPU-device path of
GRUTextEncoder) against the plain nnx.RNN scan: outputs and gradients of every parameter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from itm_jax.models import text
from itm_jax.models.text import GRUTextEncoder

V, WORD, HID = 50, 8, 12

# Tiny models: compiling dominates, so XLA's optimisation passes are skipped (conftest).
pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")


def run(model, tokens, lengths, w, *, packed, monkeypatch):
    """Output and parameter gradients of ``sum(model(tokens, lengths) * w)`` on one path."""
    monkeypatch.setattr(text, "_packed_gru_available", lambda hidden: packed)

    def loss(m):  # a new function per call: the path is chosen when tracing
        out = m(tokens, lengths)
        return jnp.sum(out * w), out

    (_, out), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    return out, grads


@pytest.mark.parametrize(
    "lengths, seq, num_layers",
    [
        ([7, 3, 1, 5, 2], 7, 1),  # one row block, a length-1 caption, one at L
        ([4] * 6, 4, 1),  # every caption as long as L
        ([1], 1, 1),  # a batch of one caption of one token (L padded to a whole chunk)
        ([3], 5, 2),  # a batch of one, two layers
        (np.random.default_rng(0).integers(1, 10, 37), 9, 2),  # three blocks, the last partial
        (np.random.default_rng(1).integers(1, 12, 40), 13, 1),  # L past the longest caption
        (np.random.default_rng(2).integers(1, 8, 200), 8, 1),  # > 16 blocks: 16-row blocks
    ],
)
def test_packed_gru_matches_scan(lengths, seq, num_layers, monkeypatch):
    rng = np.random.default_rng(len(lengths))
    lengths = np.asarray(lengths, np.int32)
    tokens = rng.integers(1, V, (len(lengths), seq)).astype(np.int32)  # garbage after lengths
    w = jnp.asarray(rng.standard_normal((len(lengths), HID)).astype(np.float32))
    model = GRUTextEncoder(V, WORD, HID, num_layers=num_layers, normalize=False,
                           rngs=nnx.Rngs(3))
    ref_out, ref_grads = run(model, tokens, lengths, w, packed=False, monkeypatch=monkeypatch)
    out, grads = run(model, tokens, lengths, w, packed=True, monkeypatch=monkeypatch)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    flat_ref = dict(nnx.to_flat_state(ref_grads))
    flat = dict(nnx.to_flat_state(grads))
    assert flat.keys() == flat_ref.keys()
    for path, ref in flat_ref.items():
        ref, got = np.asarray(ref[...]), np.asarray(flat[path][...])
        scale = np.abs(ref).max() + 1e-12
        np.testing.assert_allclose(got / scale, ref / scale, atol=1e-5, err_msg=str(path))


def test_packed_gru_ignores_padding(monkeypatch):
    """Ids after each caption's length (even past the vocabulary) and extra padding columns
    change neither the output nor the embedding gradient."""
    lengths = np.array([5, 1, 3, 2], np.int32)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, V, (4, 5)).astype(np.int32)
    tokens[np.arange(5)[None] >= lengths[:, None]] = 0
    garbage = np.concatenate([tokens, np.zeros((4, 3), np.int32)], axis=1)
    garbage[np.arange(8)[None] >= lengths[:, None]] = V + 7
    w = jnp.asarray(rng.standard_normal((4, HID)).astype(np.float32))
    model = GRUTextEncoder(V, WORD, HID, rngs=nnx.Rngs(0))
    out, grads = run(model, tokens, lengths, w, packed=True, monkeypatch=monkeypatch)
    out_g, grads_g = run(model, garbage, lengths, w, packed=True, monkeypatch=monkeypatch)
    np.testing.assert_allclose(out_g, out, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads_g.embed.embedding[...], grads.embed.embedding[...],
                               rtol=1e-6, atol=1e-7)


def test_row_blocks_cap_the_branch_count():
    assert [text._gru_row_block(b) for b in (5, 128, 129, 200, 500)] == [8, 8, 16, 16, 32]
    assert text._gru_row_counts(200) == list(range(0, 200, 16)) + [200]
    n = jnp.array([0, 1, 16, 17, 199, 200])
    np.testing.assert_array_equal(text._gru_branch(n, 200), [0, 1, 1, 2, 13, 13])


def test_packed_gru_is_the_single_cpu_device_path_of_large_grus():
    single_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    assert text._packed_gru_available(1024) == text._packed_gru_available(512) == single_cpu
    assert not text._packed_gru_available(256)
