"""The packed GRU (itm_jax.ops.packed_gru) and GRUTextEncoder's choice of it (gru_impl): packed
against the plain nnx.RNN scan (outputs and gradients of every parameter, on one device and
sharded), the "auto" rule, the printed choice and bad values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import itm_jax.ops.packed_gru as pg
from itm_jax.errors import ConfigError
from itm_jax.models import text
from itm_jax.models.dual_encoder import build_dual_encoder
from itm_jax.models.text import GRUTextEncoder

V, WORD, HID = 50, 8, 12

# Tiny models: compiling dominates, so XLA's optimisation passes are skipped (conftest).
pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")


def encoder(gru_impl, num_layers=1, torch_cell=False):
    return GRUTextEncoder(V, WORD, HID, num_layers=num_layers, normalize=False,
                          gru_impl=gru_impl, torch_cell=torch_cell, rngs=nnx.Rngs(3))


@nnx.jit
def value_and_grads(model, tokens, lengths, w):
    """Output and parameter gradients of ``sum(model(tokens, lengths) * w)``."""

    def loss(m):
        out = m(tokens, lengths)
        return jnp.sum(out * w), out

    (_, out), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return out, grads


def assert_same(out, grads, ref_out, ref_grads):
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    flat_ref = dict(nnx.to_flat_state(ref_grads))
    flat = dict(nnx.to_flat_state(grads))
    assert flat.keys() == flat_ref.keys()
    for path, ref in flat_ref.items():
        ref, got = np.asarray(ref[...]), np.asarray(flat[path][...])
        scale = np.abs(ref).max() + 1e-12
        np.testing.assert_allclose(got / scale, ref / scale, atol=1e-5, err_msg=str(path))


def batch(lengths, seq, seed):
    """Tokens with garbage after each length, the lengths, and output weights ``w [B, HID]``."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, np.int32)
    tokens = rng.integers(1, V, (len(lengths), seq)).astype(np.int32)
    w = rng.standard_normal((len(lengths), HID)).astype(np.float32)
    return tokens, lengths, w


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
def test_packed_gru_matches_scan(lengths, seq, num_layers):
    check_packed_against_scan(lengths, seq, num_layers, torch_cell=False)


@pytest.mark.parametrize("lengths, seq, num_layers", [
    ([7, 3, 1, 5, 2], 7, 1),
    (np.random.default_rng(0).integers(1, 10, 37), 9, 2),
])
def test_packed_gru_matches_scan_with_pytorch_cells(lengths, seq, num_layers):
    """PyTorch's cell (VSRN's caption encoder): the recurrent biases and their gradients."""
    check_packed_against_scan(lengths, seq, num_layers, torch_cell=True)


def check_packed_against_scan(lengths, seq, num_layers, *, torch_cell):
    tokens, lengths, w = batch(lengths, seq, len(lengths))
    scan, packed = (encoder(impl, num_layers, torch_cell) for impl in ("scan", "packed"))
    assert (scan.packed, packed.packed) == (False, True)
    assert (scan.layers[0].cell.dense_h.bias is not None) == torch_cell
    for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(scan)),
                                 nnx.to_flat_state(nnx.state(packed)), strict=True):
        np.testing.assert_array_equal(a[...], b[...], err_msg=str(path))  # the same weights
    assert_same(*value_and_grads(packed, tokens, lengths, w),
                *value_and_grads(scan, tokens, lengths, w))


def test_packed_gru_runs_sharded():
    """Over a 4-device ``data`` mesh (as the trainer shards batches) the packed GRU is still the
    scan's function, so ``gru_impl="packed"`` needs no single-device check."""
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                         axis_types=(jax.sharding.AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    tokens, lengths, w = (jax.device_put(v, rows) for v in batch([7, 3, 1, 5, 2, 6, 4, 2], 7, 5))
    assert_same(*value_and_grads(encoder("packed"), tokens, lengths, w),
                *value_and_grads(encoder("scan"), tokens, lengths, w))


def test_packed_gru_ignores_padding():
    """Ids after each caption's length (even past the vocabulary) and extra padding columns
    change neither the output nor the embedding gradient."""
    lengths = np.array([5, 1, 3, 2], np.int32)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, V, (4, 5)).astype(np.int32)
    tokens[np.arange(5)[None] >= lengths[:, None]] = 0
    garbage = np.concatenate([tokens, np.zeros((4, 3), np.int32)], axis=1)
    garbage[np.arange(8)[None] >= lengths[:, None]] = V + 7
    w = jnp.asarray(rng.standard_normal((4, HID)).astype(np.float32))
    model = encoder("packed")
    out, grads = value_and_grads(model, tokens, lengths, w)
    out_g, grads_g = value_and_grads(model, garbage, lengths, w)
    np.testing.assert_allclose(out_g, out, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads_g.embed.embedding[...], grads.embed.embedding[...],
                               rtol=1e-6, atol=1e-7)


def test_row_blocks_cap_the_branch_count():
    assert [pg._row_block(b) for b in (5, 128, 129, 200, 500)] == [8, 8, 16, 16, 32]
    assert pg._row_counts(200) == list(range(0, 200, 16)) + [200]
    n = jnp.array([0, 1, 16, 17, 199, 200])
    np.testing.assert_array_equal(pg._branch(n, 200), [0, 1, 1, 2, 13, 13])


@pytest.mark.parametrize("backend, devices, hidden, pays", [
    ("cpu", 1, 512, True), ("cpu", 1, 1024, True), ("cpu", 1, 511, False),
    ("cpu", 2, 1024, False), ("gpu", 1, 1024, False), ("tpu", 1, 1024, False),
])
def test_packing_pays_for_large_grus_on_one_cpu_device(backend, devices, hidden, pays,
                                                       monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "device_count", lambda: devices)
    assert pg.packed_gru_pays(hidden) == pays


@pytest.mark.parametrize("gru_impl, pays, packed", [
    ("scan", True, False), ("packed", False, True), ("auto", True, True), ("auto", False, False),
])
def test_gru_impl_picks_the_implementation_once(gru_impl, pays, packed, monkeypatch, capsys):
    calls = []

    def counted(*args):
        calls.append(1)
        return pg.packed_gru(*args)

    monkeypatch.setattr(text, "packed_gru_pays", lambda hidden: pays)
    monkeypatch.setattr(text, "packed_gru", counted)
    model = encoder(gru_impl)
    tokens, lengths, _ = batch([3, 1, 2], 3, 0)
    for _ in range(2):  # two traces (train and eval), one line
        nnx.eval_shape(lambda m: m(tokens, lengths), model)
    assert len(calls) == 2 * packed
    kind = "packed" if packed else "scan"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"text encoder: {kind} GRU (model.gru_impl={gru_impl}: {HID} units")


@pytest.mark.parametrize("gru_impl, devices, line", [
    ("auto", 1, "packed GRU (model.gru_impl=auto: 512 units on 1 CPU device)"),
    ("auto", 4, "scan GRU (model.gru_impl=auto: 512 units on 4 CPU devices; packed from 512 "
                "units on one CPU device)"),
    ("scan", 1, "scan GRU (model.gru_impl=scan: 512 units on 1 CPU device)"),
    ("packed", 4, "packed GRU (model.gru_impl=packed: 512 units on 4 CPU devices; every device "
                  "runs the whole batch's GRU)"),
])
def test_the_printed_line_says_why(gru_impl, devices, line, monkeypatch, capsys):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(jax, "device_count", lambda: devices)
    GRUTextEncoder(V, WORD, 512, gru_impl=gru_impl, rngs=nnx.Rngs(0))
    assert capsys.readouterr().out == f"text encoder: {line}\n"


def test_only_process_zero_prints(monkeypatch, capsys):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    encoder("packed")
    assert capsys.readouterr().out == ""


def test_unknown_gru_impl_fails_when_built():
    msg = r"model.gru_impl='fast'.*valid: auto, scan, packed"
    with pytest.raises(ConfigError, match=msg):
        encoder("fast")
    cfg = {"image": "precomp", "text": "gru", "embed_dim": HID, "word_dim": WORD,
           "gru_impl": "fast"}
    with pytest.raises(ConfigError, match=msg):
        build_dual_encoder(cfg, vocab_size=V, image_dim=4, rngs=nnx.Rngs(0))


def test_build_dual_encoder_passes_gru_impl():
    cfg = {"image": "precomp", "text": "gru", "embed_dim": HID, "word_dim": WORD}
    for gru_impl, packed in (("scan", False), ("packed", True)):
        model = build_dual_encoder({**cfg, "gru_impl": gru_impl}, vocab_size=V, image_dim=4,
                                   rngs=nnx.Rngs(0))
        assert model.text_encoder.packed == packed
    with pytest.raises(ConfigError, match=r"model.text='bilstm_mean' has no GRU"):
        build_dual_encoder({**cfg, "text": "bilstm_mean", "gru_impl": "packed"}, vocab_size=V,
                           image_dim=4, rngs=nnx.Rngs(0))
