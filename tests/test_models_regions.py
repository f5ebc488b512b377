"""Region-model encoders (`itm_jax.models.regions`, `itm_jax.models.vsrn`) against the float64
NumPy references of `numpy_refs_models_enc`, fed the same weights in the authors' PyTorch layout
(the `load_*` helpers below are the checkpoint mapping): forward passes, PyTorch's BatchNorm
(train statistics, running updates, eval), VSRN's identity-at-init, GRU gate order, padding,
the caption term, jit, gradients and a sharded batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import numpy_refs_models_enc as ref
from itm_jax.losses.caption import caption_generation as caption_loss
from itm_jax.models.regions import BiGRUWordEncoder, RegionProjection
from itm_jax.models.text import torch_gru_cell
from itm_jax.models.vsrn import (
    CaptionGenerator,
    TorchBatchNorm,
    VSRNImageEncoder,
    caption_targets,
)
from itm_jax.similarity import l2n

# Tiny models: compiling dominates, so XLA's optimisation passes are skipped (conftest).
pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")

V, WORD, HID = 30, 5, 6  # word encoder
FEAT, DIM = 7, 8  # region projection
B, N, DIN, E, INTER = 3, 5, 7, 8, 6  # VSRN; INTER != E catches a transposed block
CV, CHID, CWORD = 11, 6, 5  # caption branch
LENGTHS = (5, 1, 3, 2)


def _f32(x):
    return jnp.asarray(np.asarray(x, np.float32))


# ------------------------------------------------------------ PyTorch-layout weights and loaders


def rand_linear(rng, sd, prefix, out, inp, *, bias=True, conv=False, scale=None):
    scale = 1.0 / np.sqrt(inp) if scale is None else scale
    w = rng.uniform(-scale, scale, (out, inp))
    sd[f"{prefix}weight"] = w[:, :, None] if conv else w
    if bias:
        sd[f"{prefix}bias"] = rng.uniform(-scale, scale, out)


def rand_gru(rng, sd, prefix, inp, hid, suffix=""):
    s = 1.0 / np.sqrt(hid)
    sd[f"{prefix}weight_ih_l0{suffix}"] = rng.uniform(-s, s, (3 * hid, inp))
    sd[f"{prefix}weight_hh_l0{suffix}"] = rng.uniform(-s, s, (3 * hid, hid))
    sd[f"{prefix}bias_ih_l0{suffix}"] = rng.uniform(-s, s, 3 * hid)
    sd[f"{prefix}bias_hh_l0{suffix}"] = rng.uniform(-s, s, 3 * hid)


def rand_bn(rng, sd, prefix, c):
    sd[f"{prefix}weight"] = rng.uniform(0.5, 1.5, c)
    sd[f"{prefix}bias"] = rng.uniform(-0.5, 0.5, c)
    sd[f"{prefix}running_mean"] = rng.uniform(-0.2, 0.2, c)
    sd[f"{prefix}running_var"] = rng.uniform(0.5, 1.5, c)


def set_linear(lin, sd, prefix):
    w = np.asarray(sd[f"{prefix}weight"])
    lin.kernel[...] = _f32((w[:, :, 0] if w.ndim == 3 else w).T)
    if lin.bias is not None:
        lin.bias[...] = _f32(sd[f"{prefix}bias"])


def set_gru(cell, sd, prefix, suffix=""):
    cell.dense_i.kernel[...] = _f32(sd[f"{prefix}weight_ih_l0{suffix}"].T)
    cell.dense_i.bias[...] = _f32(sd[f"{prefix}bias_ih_l0{suffix}"])
    cell.dense_h.kernel[...] = _f32(sd[f"{prefix}weight_hh_l0{suffix}"].T)
    cell.dense_h.bias[...] = _f32(sd[f"{prefix}bias_hh_l0{suffix}"])


def set_bn(bn, sd, prefix):
    bn.scale[...] = _f32(sd[f"{prefix}weight"])
    bn.bias[...] = _f32(sd[f"{prefix}bias"])
    bn.mean[...] = _f32(sd[f"{prefix}running_mean"])
    bn.var[...] = _f32(sd[f"{prefix}running_var"])


def words_state(seed):
    rng = np.random.default_rng(seed)
    sd = {"embed.weight": rng.uniform(-1, 1, (V, WORD))}
    rand_gru(rng, sd, "rnn.", WORD, HID)
    rand_gru(rng, sd, "rnn.", WORD, HID, "_reverse")
    return sd


def load_words(model, sd):
    model.embed.embedding[...] = _f32(sd["embed.weight"])
    set_gru(model.forward_rnn.cell, sd, "rnn.")
    set_gru(model.backward_rnn.cell, sd, "rnn.", "_reverse")


def vsrn_state(seed, variant):
    rng = np.random.default_rng(seed)
    sd = {}
    rand_linear(rng, sd, "fc.", E, DIN)
    for k in range(1, 5):
        p = f"Rs_GCN_{k}."
        for name in ("g", "theta", "phi"):
            rand_linear(rng, sd, f"{p}{name}.", INTER, E, conv=True, scale=0.8)
        rand_linear(rng, sd, f"{p}W.0.", E, INTER, conv=True, scale=0.8)
        rand_bn(rng, sd, f"{p}W.1.", E)
    rand_gru(rng, sd, "img_rnn.", E, E)
    if variant == "f30k":
        rand_bn(rng, sd, "bn.", E)
    return sd


def load_vsrn(model, sd):
    set_linear(model.fc, sd, "fc.")
    for k, block in enumerate(model.gcn, start=1):
        p = f"Rs_GCN_{k}."
        for name in ("g", "theta", "phi"):
            set_linear(getattr(block, name), sd, f"{p}{name}.")
        set_linear(block.w, sd, f"{p}W.0.")
        set_bn(block.bn, sd, f"{p}W.1.")
    set_gru(model.rnn.cell, sd, "img_rnn.")
    if model.bn is not None:
        set_bn(model.bn, sd, "bn.")


def caption_state(seed):
    rng = np.random.default_rng(seed)
    sd = {"decoder.embedding.weight": rng.normal(size=(CV, CWORD))}
    rand_linear(rng, sd, "encoder.vid2hid.", CHID, E)
    rand_gru(rng, sd, "encoder.rnn.", CHID, CHID)
    rand_linear(rng, sd, "decoder.attention.linear1.", CHID, 2 * CHID, scale=1.0)
    rand_linear(rng, sd, "decoder.attention.linear2.", 1, CHID, bias=False, scale=1.0)
    rand_gru(rng, sd, "decoder.rnn.", CWORD + CHID, CHID)
    rand_linear(rng, sd, "decoder.out.", CV, CHID)
    return sd


def load_caption(model, sd):
    set_linear(model.vid2hid, sd, "encoder.vid2hid.")
    set_gru(model.encoder_rnn.cell, sd, "encoder.rnn.")
    model.embedding.embedding[...] = _f32(sd["decoder.embedding.weight"])
    set_linear(model.attention, sd, "decoder.attention.linear1.")
    set_linear(model.attention_score, sd, "decoder.attention.linear2.")
    set_gru(model.decoder_cell, sd, "decoder.rnn.")
    set_linear(model.out, sd, "decoder.out.")


def word_batch(lengths=LENGTHS, seq=5, seed=0):
    """Tokens with valid ids in 1..V-6 and ids >= V-5 only as padding garbage."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, np.int32)
    tokens = rng.integers(1, V - 5, (len(lengths), seq)).astype(np.int32)
    pad = np.arange(seq)[None] >= lengths[:, None]
    tokens[pad] = rng.integers(V - 5, V, pad.sum())
    return tokens, lengths


@nnx.jit
def call(model, *args):
    return model(*args)


# ------------------------------------------------------------------------------- l2n and GRU


def test_l2n_adds_eps_to_the_norm_and_is_zero_safe():
    x = np.array([[3e-8, 4e-8], [3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(l2n(jnp.asarray(x)), ref.l2n(x), rtol=1e-6)
    assert abs(float(l2n(jnp.asarray(x))[0, 0]) - 0.5) < 1e-6  # 3e-8 / (5e-8 + 1e-8), not 0.6
    g = jax.grad(lambda v: jnp.sum(l2n(v) * jnp.arange(6.0).reshape(3, 2)))(jnp.asarray(x))
    assert np.isfinite(np.asarray(g)).all()


def test_torch_gru_cell_gate_order_and_recurrent_bias():
    rng = np.random.default_rng(0)
    sd = {}
    rand_gru(rng, sd, "", 4, 3)
    cell = torch_gru_cell(4, 3, rngs=nnx.Rngs(0))
    set_gru(cell, sd, "")
    xs, h = rng.normal(size=(4, 4)), rng.normal(size=3)
    got = jnp.asarray(h, jnp.float32)[None]
    for x in xs:
        h = ref.gru_step(x, h, sd, "")
        got, out = cell(got, jnp.asarray(x, jnp.float32)[None])
        np.testing.assert_array_equal(got, out)
        np.testing.assert_allclose(got[0], h, rtol=1e-5, atol=1e-6)


def test_torch_gru_cell_init_is_pytorch_uniform():
    cell = torch_gru_cell(20, 16, rngs=nnx.Rngs(0))
    for v in (cell.dense_i.kernel, cell.dense_i.bias, cell.dense_h.kernel, cell.dense_h.bias):
        v = np.asarray(v[...])
        assert np.abs(v).max() <= 0.25 and v.std() > 0.1  # U(-1/4, 1/4): std 0.144


# ------------------------------------------------------------------------------ SCAN / BFAN


@pytest.mark.parametrize("normalize", [True, False])
def test_region_projection_matches_reference(normalize):
    rng = np.random.default_rng(1)
    sd = {}
    rand_linear(rng, sd, "fc.", DIM, FEAT)
    model = RegionProjection(FEAT, DIM, normalize=normalize, rngs=nnx.Rngs(0))
    set_linear(model.fc, sd, "fc.")
    x = rng.normal(size=(3, 4, FEAT))
    out = call(model, _f32(x))
    assert out.shape == (3, 4, DIM)
    np.testing.assert_allclose(out, ref.region_projection(x, sd, normalize), rtol=1e-5,
                               atol=1e-6)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)


def test_region_projection_init_and_bad_input():
    model = RegionProjection(FEAT, DIM, rngs=nnx.Rngs(0))
    w = np.asarray(model.fc.kernel[...])
    assert np.abs(w).max() <= np.sqrt(6 / (FEAT + DIM)) and (model.fc.bias[...] == 0).all()
    with pytest.raises(ValueError, match=r"region features \[B, R, 7\]"):
        model(jnp.zeros((3, FEAT)))


@pytest.mark.parametrize("lengths, seq", [(LENGTHS, 5), ((1, 1), 1), ((1, 3), 4)])
@pytest.mark.parametrize("normalize", [True, False])
def test_word_encoder_matches_reference(lengths, seq, normalize):
    sd = words_state(2)
    model = BiGRUWordEncoder(V, WORD, HID, normalize=normalize, rngs=nnx.Rngs(0))
    load_words(model, sd)
    tokens, lengths = word_batch(lengths, seq)
    out, out_lengths = call(model, tokens, lengths)
    assert out.shape == (len(lengths), seq, HID)
    np.testing.assert_array_equal(out_lengths, lengths)
    expected = ref.bigru_words(tokens, lengths, sd, normalize)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    valid = np.arange(seq)[None] < lengths[:, None]
    assert (np.asarray(out)[~valid] == 0).all()
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(out)[valid], axis=-1), 1.0,
                                   rtol=1e-5)


def test_word_encoder_one_word_caption_is_both_directions_from_zero():
    sd = words_state(3)
    model = BiGRUWordEncoder(V, WORD, HID, rngs=nnx.Rngs(0))
    load_words(model, sd)
    out, _ = call(model, np.array([[7, 9, 9]], np.int32), np.array([1], np.int32))
    x, h0 = sd["embed.weight"][7], np.zeros(HID)
    both = (ref.gru_step(x, h0, sd, "rnn.") + ref.gru_step(x, h0, sd, "rnn.", "_reverse")) / 2
    np.testing.assert_allclose(out[0, 0], both / np.linalg.norm(both), rtol=1e-5, atol=1e-6)


@nnx.jit
def words_value_and_grad(model, tokens, lengths, w):
    def loss(m):
        out, _ = m(tokens, lengths)
        return jnp.sum(out * w[:, : out.shape[1]]), out

    (_, out), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return out, grads


def test_word_encoder_padding_changes_nothing():
    """Padded ids (garbage, and the pad embedding x100 noise) and extra padding columns change
    no valid word's vector, and the embedding rows read only at padding get zero gradient."""
    sd = words_state(4)
    model = BiGRUWordEncoder(V, WORD, HID, rngs=nnx.Rngs(0))
    load_words(model, sd)
    tokens, lengths = word_batch()
    clean = np.where(np.arange(5)[None] < lengths[:, None], tokens, 0)
    w = np.random.default_rng(5).normal(size=(len(LENGTHS), 9, HID)).astype(np.float32)
    out, grads = words_value_and_grad(model, clean, lengths, w)

    noisy = nnx.clone(model)
    noise = np.random.default_rng(6).normal(size=WORD) * 100
    noisy.embed.embedding[...] = noisy.embed.embedding[...].at[0].set(_f32(noise))
    garbage = np.concatenate([tokens, np.full((len(LENGTHS), 4), V - 1, np.int32)], axis=1)
    out_g, grads_g = words_value_and_grad(noisy, garbage, lengths, w)

    np.testing.assert_allclose(out_g[:, :5], out, rtol=1e-6, atol=1e-7)
    assert (np.asarray(out_g[:, 5:]) == 0).all()
    emb_g = np.asarray(grads_g.embed.embedding[...])
    used = np.unique(tokens[np.arange(5)[None] < lengths[:, None]])
    assert 0 not in used and (np.abs(emb_g[used]).max(axis=1) > 0).all()
    assert (emb_g[np.setdiff1d(np.arange(V), used)] == 0).all()  # row 0 and the garbage ids
    np.testing.assert_allclose(emb_g, grads.embed.embedding[...], rtol=1e-5, atol=1e-7)


def test_word_encoder_bad_input():
    model = BiGRUWordEncoder(V, WORD, HID, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="1 <= lengths"):
        model(np.zeros((2, 3), np.int32), np.array([0, 2], np.int32))
    with pytest.raises(ValueError, match="integer"):
        model(np.zeros((2, 3), np.float32), np.array([1, 2], np.int32))


# ------------------------------------------------------------------------------- BatchNorm


@pytest.mark.parametrize("shape", [(4, 6, 5), (4, 5)])
def test_torch_batch_norm_train_step_and_eval(shape):
    """Train: batch statistics over every axis but the channels (batch x regions for [B, N, C]),
    biased variance to normalise, unbiased in the running update (momentum 0.1). Eval: the
    running statistics, unchanged."""
    rng = np.random.default_rng(7)
    c = shape[-1]
    sd = {}
    rand_bn(rng, sd, "", c)
    bn = TorchBatchNorm(c)
    set_bn(bn, sd, "")
    x = rng.normal(1.0, 2.0, shape)
    channel_first = np.moveaxis(x, -1, 1)  # the reference's [B, C(, N)] layout

    out = call(bn, _f32(x))
    expected, stats = ref.batch_norm(channel_first, sd, "", train=True)
    np.testing.assert_allclose(out, np.moveaxis(expected, 1, -1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], stats["running_mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.var[...], stats["running_var"], rtol=1e-5, atol=1e-6)
    m = np.prod(shape[:-1])
    unbiased = np.var(x.reshape(m, c), axis=0, ddof=1)
    np.testing.assert_allclose(bn.var[...], 0.9 * sd["running_var"] + 0.1 * unbiased, rtol=1e-5)

    bn.eval()
    sd_after = {**sd, "running_mean": stats["running_mean"], "running_var": stats["running_var"]}
    expected_eval, _ = ref.batch_norm(channel_first, sd_after, "", train=False)
    np.testing.assert_allclose(call(bn, _f32(x)), np.moveaxis(expected_eval, 1, -1), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(bn.var[...], stats["running_var"], rtol=1e-6)


def test_torch_batch_norm_needs_two_values_in_train_mode():
    bn = TorchBatchNorm(3)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(jnp.ones((1, 3)))
    bn.eval()
    assert bn(jnp.ones((1, 3))).shape == (1, 3)


# ------------------------------------------------------------------------------------ VSRN


@pytest.mark.parametrize("variant", ["coco", "f30k"])
@pytest.mark.parametrize("train", [True, False])
def test_vsrn_encoder_matches_reference(variant, train):
    sd = vsrn_state(8, variant)
    model = VSRNImageEncoder(DIN, E, variant=variant, inter_dim=INTER, rngs=nnx.Rngs(0))
    load_vsrn(model, sd)
    if not train:
        model.eval()
    x = np.random.default_rng(9).normal(size=(B, N, DIN))
    emb, h = call(model, _f32(x))
    ref_emb, ref_h, stats = ref.vsrn_image_encoder(x, sd, variant, train)
    assert emb.shape == (B, E) and h.shape == (B, N, E)
    np.testing.assert_allclose(h, ref_h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(emb, ref_emb, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), 1.0, rtol=1e-5)  # over regions
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    bns = [(f"Rs_GCN_{k}.W.1.", blk.bn) for k, blk in enumerate(model.gcn, start=1)]
    bns += [("bn.", model.bn)] if variant == "f30k" else []
    for prefix, bn in bns:  # updated after one train step, untouched in eval
        np.testing.assert_allclose(bn.mean[...], stats[f"{prefix}running_mean"], rtol=1e-4,
                                   atol=1e-6, err_msg=prefix)
        np.testing.assert_allclose(bn.var[...], stats[f"{prefix}running_var"], rtol=1e-4,
                                   atol=1e-6, err_msg=prefix)
        moved = not np.allclose(stats[f"{prefix}running_var"], sd[f"{prefix}running_var"])
        assert moved == train, prefix


def test_vsrn_variants_differ_where_the_spec_says():
    model = VSRNImageEncoder(DIN, E, variant="f30k", inter_dim=INTER, rngs=nnx.Rngs(0))
    assert isinstance(model.bn, TorchBatchNorm)
    assert VSRNImageEncoder(DIN, E, rngs=nnx.Rngs(0)).bn is None
    with pytest.raises(ValueError, match="variant='f30k_precomp'.*valid: coco, f30k"):
        VSRNImageEncoder(DIN, E, variant="f30k_precomp", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"region features \[B, N, 7\]"):
        model(jnp.zeros((B, DIN)))


@pytest.mark.parametrize("train", [True, False])
def test_vsrn_gcn_blocks_are_the_identity_at_init(train):
    model = VSRNImageEncoder(DIN, E, rngs=nnx.Rngs(0))
    assert len(model.gcn) == 4
    if not train:
        model.eval()
    v = jax.random.normal(jax.random.key(0), (B, N, E)) * 3
    for block in model.gcn:
        assert (block.bn.scale[...] == 0).all() and (block.bn.bias[...] == 0).all()
        np.testing.assert_array_equal(call(block, v), v)
    # And with trained (non-zero) BN weights a block is not the identity.
    block = model.gcn[0]
    block.bn.scale[...] = jnp.ones(E)
    assert np.abs(np.asarray(call(block, v) - v)).max() > 0.1


def test_vsrn_encoder_gru_reads_regions_in_order():
    model = VSRNImageEncoder(DIN, E, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (B, N, DIN))
    emb, h = call(model, x)
    emb_rev, h_rev = call(model, x[:, ::-1])
    np.testing.assert_allclose(h_rev, h[:, ::-1], rtol=1e-5, atol=1e-6)  # per region
    assert np.abs(np.asarray(emb_rev - emb)).max() > 1e-3  # the GRU state is order-dependent


def test_vsrn_encoder_sharded_batch_matches_one_device():
    """BatchNorm statistics over a batch sharded on a 4-device ``data`` mesh are the whole
    batch's (outputs and running stats as unsharded)."""
    sd = vsrn_state(10, "f30k")
    x = _f32(np.random.default_rng(11).normal(size=(8, N, DIN)))
    one, sharded = (VSRNImageEncoder(DIN, E, variant="f30k", inter_dim=INTER, rngs=nnx.Rngs(0))
                    for _ in range(2))
    load_vsrn(one, sd)
    load_vsrn(sharded, sd)
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                         axis_types=(jax.sharding.AxisType.Auto,))
    emb, h = call(one, x)
    emb_s, h_s = call(sharded, jax.device_put(x, NamedSharding(mesh, P("data"))))
    np.testing.assert_allclose(emb_s, emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_s, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sharded.bn.var[...], one.bn.var[...], rtol=1e-5)
    np.testing.assert_allclose(sharded.gcn[3].bn.var[...], one.gcn[3].bn.var[...], rtol=1e-5)


# --------------------------------------------------------------------------- caption branch


def test_caption_generator_matches_reference():
    sd = caption_state(12)
    model = CaptionGenerator(CV, E, hidden=CHID, word_dim=CWORD, rngs=nnx.Rngs(0))
    load_caption(model, sd)
    model.eval()
    rng = np.random.default_rng(13)
    regions = rng.normal(size=(2, N, E))
    tokens = rng.integers(0, CV, (2, 4)).astype(np.int32)
    out = call(model, _f32(regions), tokens)
    assert out.shape == (2, 4, CV)
    np.testing.assert_allclose(out, ref.caption_generator(regions, tokens, sd), rtol=1e-5,
                               atol=1e-5)


def test_caption_generator_dropout_follows_train_and_eval():
    regions = jax.random.normal(jax.random.key(2), (2, N, E))
    tokens = jnp.array([[1, 4, 5], [1, 6, 2]], jnp.int32)
    model = CaptionGenerator(CV, E, hidden=CHID, word_dim=CWORD, rngs=nnx.Rngs(0))
    model.eval()
    det = call(model, regions, tokens)
    np.testing.assert_array_equal(call(model, regions, tokens), det)
    model.train()
    a, b = call(model, regions, tokens), call(model, regions, tokens)
    assert np.abs(np.asarray(a - det)).max() > 1e-3 and np.abs(np.asarray(a - b)).max() > 1e-3
    no_dropout = CaptionGenerator(CV, E, hidden=CHID, word_dim=CWORD, dropout=0.0,
                                  rngs=nnx.Rngs(0))
    np.testing.assert_allclose(call(no_dropout, regions, tokens), det, rtol=1e-6, atol=1e-6)


def test_caption_generator_bad_input():
    model = CaptionGenerator(CV, E, hidden=CHID, word_dim=CWORD, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"regions \[B, N, 8\]"):
        model(jnp.zeros((2, N, 3)), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        model(jnp.zeros((2, N, E)), jnp.zeros((3, 3), jnp.int32))
    with pytest.raises(ValueError, match="dropout"):
        CaptionGenerator(CV, E, dropout=1.0, rngs=nnx.Rngs(0))


def test_caption_targets_follow_the_labels_and_masks_convention():
    tokens = np.array([[1, 5, 6, 2, 0, 9], [1, 7, 2, 8, 8, 8], [1, 3, 4, 5, 6, 2]], np.int32)
    lengths = np.array([4, 3, 6], np.int32)
    inputs, targets, mask = caption_targets(tokens, lengths)
    np.testing.assert_array_equal(inputs, [[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0],
                                           [1, 3, 4, 5, 6, 2]])
    np.testing.assert_array_equal(targets, [[5, 6, 2, 0, 0, 0], [7, 2, 0, 0, 0, 0],
                                            [3, 4, 5, 6, 2, 0]])
    # Every word, <end>, and the first pad after <end> (a full-length caption's is added).
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1] * 6])
    assert mask.dtype == jnp.float32
    short = caption_targets(tokens, lengths, max_len=4)  # max_len - 1 = 3 decoded steps
    for full, cut in zip((inputs, targets, mask), short, strict=True):
        np.testing.assert_array_equal(cut, np.asarray(full)[:, :3])
    with pytest.raises(ValueError, match="max_len >= 2"):
        caption_targets(tokens, lengths, max_len=1)
    with pytest.raises(ValueError, match="1 <= lengths <= 6 "):
        caption_targets(tokens, lengths + 1)


def test_caption_loss_hand_computed_and_divided_by_the_batch():
    probs = np.array([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]],
                      [[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]]])
    targets = np.array([[0, 2], [1, 0]], np.int32)
    mask = np.array([[1.0, 1.0], [1.0, 0.0]], np.float32)
    log_probs = _f32(np.log(probs))
    expected = -(np.log(0.5) + np.log(0.7) + np.log(0.3)) / 2  # 3 tokens, B = 2
    loss = jax.jit(caption_loss)(log_probs, targets, mask)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(loss, ref.caption_loss(np.log(probs), targets, mask), rtol=1e-6)
    # A third caption with nothing to predict adds no token but divides by B = 3.
    padded = caption_loss(jnp.concatenate([log_probs, log_probs[:1]]),
                          np.concatenate([targets, targets[:1]]),
                          np.concatenate([mask, np.zeros((1, 2), np.float32)]))
    np.testing.assert_allclose(padded, expected * 2 / 3, rtol=1e-6)
    grad = np.asarray(jax.grad(caption_loss)(log_probs, targets, mask))
    expected_grad = np.zeros_like(probs)
    for b in range(2):
        for t in range(2):
            expected_grad[b, t, targets[b, t]] = -mask[b, t] / 2
    np.testing.assert_array_equal(grad, expected_grad.astype(np.float32))
    with pytest.raises(ValueError, match="caption_targets"):
        caption_loss(log_probs, targets[:, :1], mask)


class _VSRN(nnx.Module):
    """The encoder and caption branch, as the training objective holds them."""

    def __init__(self, variant, rngs):
        self.enc = VSRNImageEncoder(DIN, E, variant=variant, inter_dim=INTER, rngs=rngs)
        self.cap = CaptionGenerator(CV, E, hidden=CHID, word_dim=CWORD, rngs=rngs)


@nnx.jit
def caption_grads(model, x, tokens, lengths):
    def loss(m):
        _, h = m.enc(x)
        inputs, targets, mask = caption_targets(tokens, lengths)
        return caption_loss(m.cap(h, inputs), targets, mask)

    return nnx.grad(loss)(model)


@pytest.mark.parametrize("variant", ["coco", "f30k"])
def test_caption_loss_reaches_fc_and_the_gcn_blocks_not_the_image_gru(variant):
    model = _VSRN(variant, nnx.Rngs(0))
    load_vsrn(model.enc, vsrn_state(14, variant))
    x = jax.random.normal(jax.random.key(3), (B, N, DIN))
    tokens = jnp.array([[1, 4, 5, 2], [1, 6, 2, 0], [1, 2, 0, 0]], jnp.int32)
    grads = caption_grads(model, x, tokens, jnp.array([4, 3, 2], jnp.int32))
    flat = {".".join(map(str, p)): np.asarray(g[...]) for p, g in nnx.to_flat_state(grads.enc)}
    for path, g in flat.items():
        assert np.isfinite(g).all(), path
        if path.startswith(("rnn.", "bn.")):
            assert (g == 0).all(), path
        elif path.endswith("w.bias"):  # right before a train-mode BN: its true gradient is 0
            assert np.abs(g).max() < 1e-5, path
        else:
            assert np.abs(g).max() > 1e-6, path
    assert any(p.startswith("gcn.3.theta") for p in flat)


# ---------------------------------------------------------------------------- jit and grad


def _words_loss(m):
    tokens, lengths = word_batch()
    out, _ = m(tokens, lengths)
    return jnp.sum(out * jnp.sin(jnp.arange(out.size).reshape(out.shape)))


def _regions_loss(m):
    out = m(jnp.cos(jnp.arange(2 * 3 * FEAT, dtype=jnp.float32).reshape(2, 3, FEAT)))
    return jnp.sum(out * jnp.sin(jnp.arange(out.size).reshape(out.shape)))


def _vsrn_loss(m):
    emb, h = m(jnp.cos(jnp.arange(B * N * DIN, dtype=jnp.float32).reshape(B, N, DIN)))
    return (jnp.sum(emb * jnp.sin(jnp.arange(emb.size).reshape(emb.shape)))
            + jnp.sum(h * jnp.cos(jnp.arange(h.size).reshape(h.shape))))


def _caption_loss(m):
    regions = jnp.cos(jnp.arange(2 * N * E, dtype=jnp.float32).reshape(2, N, E))
    tokens = jnp.array([[1, 4, 5, 2], [1, 6, 2, 0]], jnp.int32)
    inputs, targets, mask = caption_targets(tokens, jnp.array([4, 3]))
    return caption_loss(m(regions, inputs), targets, mask)


def _vsrn(variant, train):
    def make():
        model = VSRNImageEncoder(DIN, E, variant=variant, inter_dim=INTER, rngs=nnx.Rngs(0))
        load_vsrn(model, vsrn_state(15, variant))
        if not train:
            model.eval()
        return model

    return make


def _caption():
    model = CaptionGenerator(CV, E, hidden=CHID, word_dim=CWORD, rngs=nnx.Rngs(0))
    model.eval()
    return model


GRAD_CASES = {
    "regions": (lambda: RegionProjection(FEAT, DIM, rngs=nnx.Rngs(0)), _regions_loss),
    "words": (lambda: BiGRUWordEncoder(V, WORD, HID, rngs=nnx.Rngs(0)), _words_loss),
    "vsrn_coco_train": (_vsrn("coco", True), _vsrn_loss),
    "vsrn_f30k_train": (_vsrn("f30k", True), _vsrn_loss),
    "vsrn_f30k_eval": (_vsrn("f30k", False), _vsrn_loss),
    "caption": (_caption, _caption_loss),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_jit_matches_eager_and_grad_matches_finite_differences(name):
    make, loss_fn = GRAD_CASES[name]
    model = make()
    eager = loss_fn(nnx.clone(model))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def f(p, r):  # a fresh copy per call: train-mode statistic updates are dropped
        return loss_fn(nnx.merge(graphdef, p, r))

    np.testing.assert_allclose(f(params, rest), eager, rtol=1e-5, atol=1e-6)
    grads = jax.jit(jax.grad(f))(params, rest)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    direction = treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads),
                                                  jax.tree.leaves(direction), strict=True))
    eps = 1e-3
    step = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, direction)  # noqa: E731
    numeric = (f(step(1.0), rest) - f(step(-1.0), rest)) / (2 * eps)
    assert abs(float(analytic)) > 1e-2
    np.testing.assert_allclose(numeric, analytic, rtol=2e-2)
