"""Plain-NumPy float64 references for the region-model encoders (`itm_jax.models.regions`,
`itm_jax.models.vsrn`).

Written from the model contract (SCAN/BFAN encoders; VSRN's `EncoderImagePrecompAttn`, `Rs_GCN`
and caption branch), in the authors' PyTorch layouts: weights are `state_dict`-style dicts
(`fc.weight [out, in]`, 1x1 convs `[out, in, 1]`, GRUs `weight_ih_l0 [3H, in]` with the gate
blocks in the order [r; z; n]) and VSRN's graph blocks run channel-first on `[B, C, N]`. The
loops are per example, per region and per step, sharing no code and no layout with the JAX
modules under test.
"""

from __future__ import annotations

import numpy as np

NORM_EPS = 1e-8


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def l2n(x, axis=-1):
    """`x / (sqrt(sum x^2) + 1e-8)`: the eps is added to the norm."""
    x = _f64(x)
    return x / (np.sqrt(np.sum(x * x, axis=axis, keepdims=True)) + NORM_EPS)


def linear(x, weight, bias=None):
    """PyTorch `nn.Linear`: `x @ weight.T + bias` over the last axis."""
    y = _f64(x) @ _f64(weight).T
    return y if bias is None else y + _f64(bias)


def gru_step(x, h, sd, prefix, suffix=""):
    """One step of PyTorch's GRU with weights `sd[prefix + 'weight_ih_l0' + suffix]` etc.

    r = sigma(W_ir x + b_ir + W_hr h + b_hr), z = sigma(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
    """
    w_ih, w_hh, b_ih, b_hh = (_f64(sd[f"{prefix}{name}_l0{suffix}"])
                              for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    hid = h.shape[0]
    r_rows, z_rows, n_rows = slice(0, hid), slice(hid, 2 * hid), slice(2 * hid, 3 * hid)
    r = _sigmoid(w_ih[r_rows] @ x + b_ih[r_rows] + w_hh[r_rows] @ h + b_hh[r_rows])
    z = _sigmoid(w_ih[z_rows] @ x + b_ih[z_rows] + w_hh[z_rows] @ h + b_hh[z_rows])
    n = np.tanh(w_ih[n_rows] @ x + b_ih[n_rows] + r * (w_hh[n_rows] @ h + b_hh[n_rows]))
    return (1.0 - z) * n + z * h


def gru(xs, sd, prefix, suffix="", h0=None):
    """PyTorch GRU over the rows of `xs [T, in]` from `h0` (zeros): `(outputs [T, H], h_T)`."""
    hid = _f64(sd[f"{prefix}weight_hh_l0{suffix}"]).shape[1]
    h = np.zeros(hid) if h0 is None else _f64(h0)
    outs = []
    for x in _f64(xs):
        h = gru_step(x, h, sd, prefix, suffix)
        outs.append(h)
    return np.stack(outs), h


# ------------------------------------------------------------------------ SCAN / BFAN


def region_projection(features, sd, normalize=True):
    """`fc(region)` for every region, L2-normalised per region: `[B, R, F] -> [B, R, D]`."""
    features = _f64(features)
    b, r, _ = features.shape
    out = np.zeros((b, r, _f64(sd["fc.weight"]).shape[0]))
    for i in range(b):
        for j in range(r):
            v = linear(features[i, j], sd["fc.weight"], sd["fc.bias"])
            out[i, j] = l2n(v) if normalize else v
    return out


def bigru_words(tokens, lengths, sd, normalize=True):
    """SCAN's bi-GRU word features `[B, L, D]`, zero at padded positions.

    Per caption: the valid words' embeddings, a forward GRU over them and a backward GRU over
    them reversed (its outputs put back in word order), averaged per word, then `l2n` per word.
    """
    tokens = np.asarray(tokens)
    table = _f64(sd["embed.weight"])
    hid = _f64(sd["rnn.weight_hh_l0"]).shape[1]
    b, seq = tokens.shape
    out = np.zeros((b, seq, hid))
    for i in range(b):
        n = int(lengths[i])
        x = table[tokens[i, :n]]
        fwd, _ = gru(x, sd, "rnn.")
        bwd, _ = gru(x[::-1], sd, "rnn.", "_reverse")
        words = (fwd + bwd[::-1]) / 2
        out[i, :n] = l2n(words) if normalize else words
    return out


# ------------------------------------------------------------------------ VSRN


def conv1x1(v, weight, bias):
    """`(K * V)[b, o, n] = sum_i K[o, i, 0] V[b, i, n] + c[o]` on channel-first `[B, C, N]`."""
    v, k, c = _f64(v), _f64(weight)[:, :, 0], _f64(bias)
    bsz, _, n = v.shape
    out = np.zeros((bsz, k.shape[0], n))
    for b in range(bsz):
        for j in range(n):
            out[b, :, j] = k @ v[b, :, j] + c
    return out


def batch_norm(z, sd, prefix, train, momentum=0.1, eps=1e-5):
    """BatchNorm1d on `[B, C]` or `[B, C, N]` (channel axis 1).

    Train: batch mean and biased variance over the M = B (x N) values of each channel; the
    running stats then move by `momentum` towards the mean and the *unbiased* variance. Eval:
    the running stats. Returns `(out, {prefix + 'running_mean': .., prefix + 'running_var': ..})`
    (the stats unchanged in eval).
    """
    z = _f64(z)
    gamma, beta = _f64(sd[f"{prefix}weight"]), _f64(sd[f"{prefix}bias"])
    rm, rv = _f64(sd[f"{prefix}running_mean"]).copy(), _f64(sd[f"{prefix}running_var"]).copy()
    out = np.zeros_like(z)
    for c in range(z.shape[1]):
        vals = z[:, c].ravel()
        if train:
            m = vals.size
            mu = vals.sum() / m
            var = ((vals - mu) ** 2).sum() / m
            rm[c] = (1 - momentum) * rm[c] + momentum * mu
            rv[c] = (1 - momentum) * rv[c] + momentum * var * m / (m - 1)
        else:
            mu, var = rm[c], rv[c]
        out[:, c] = (z[:, c] - mu) / np.sqrt(var + eps) * gamma[c] + beta[c]
    return out, {f"{prefix}running_mean": rm, f"{prefix}running_var": rv}


def rs_gcn(v, sd, prefix, train):
    """One `Rs_GCN` block on channel-first `v [B, C, N]`: `(v + BN(W0 * Y), bn stats)`."""
    v = _f64(v)
    g = conv1x1(v, sd[f"{prefix}g.weight"], sd[f"{prefix}g.bias"])
    theta = conv1x1(v, sd[f"{prefix}theta.weight"], sd[f"{prefix}theta.bias"])
    phi = conv1x1(v, sd[f"{prefix}phi.weight"], sd[f"{prefix}phi.bias"])
    bsz, inter, n = g.shape
    y = np.zeros((bsz, inter, n))
    for b in range(bsz):
        a = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                a[i, j] = np.sum(theta[b, :, i] * phi[b, :, j]) / n
        for c in range(inter):
            for i in range(n):
                y[b, c, i] = np.sum(a[i, :] * g[b, c, :])
    z = conv1x1(y, sd[f"{prefix}W.0.weight"], sd[f"{prefix}W.0.bias"])
    bn, stats = batch_norm(z, sd, f"{prefix}W.1.", train)
    return v + bn, stats


def _norm_over_regions(x):
    """`x[b, n, e] / sqrt(sum_n' x[b, n', e]^2)` on `[B, N, E]`, no eps."""
    x = _f64(x)
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        for e in range(x.shape[2]):
            out[b, :, e] = x[b, :, e] / np.sqrt(np.sum(x[b, :, e] ** 2))
    return out


def vsrn_image_encoder(regions, sd, variant, train):
    """`EncoderImagePrecompAttn`: `(emb [B, E], H [B, N, E], updated bn stats)`.

    `variant` "f30k" is the authors' `f30k_precomp` (no post-fc normalisation, BN on the GRU
    state); anything else ("coco") normalises after `fc` and has no final BN.
    """
    regions = _f64(regions)
    f = linear(regions, sd["fc.weight"], sd["fc.bias"])  # [B, N, E]
    if variant != "f30k":
        f = _norm_over_regions(f)
    v = f.transpose(0, 2, 1)  # [B, E, N]
    stats = {}
    for k in range(1, 5):
        v, s = rs_gcn(v, sd, f"Rs_GCN_{k}.", train)
        stats.update(s)
    h = _norm_over_regions(v.transpose(0, 2, 1))  # [B, N, E]
    g = np.stack([gru(h[b], sd, "img_rnn.")[1] for b in range(h.shape[0])])  # [B, E]
    if variant == "f30k":
        g, s = batch_norm(g, sd, "bn.", train)
        stats.update(s)
    emb = np.stack([row / np.sqrt(np.sum(row**2)) for row in g])
    return emb, h, stats


def _log_softmax(x):
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))


def caption_generator(regions, tokens, sd):
    """VSRN's caption branch without dropout: `log_probs [B, T, V]`, step t reading `tokens[:, t]`.

    Encoder: `vid2hid` per region, then a GRU over the regions from zeros. Decoder from the
    encoder's final state: `e_n = w2 . tanh(W1 [enc_n; h] + b1)`, `alpha = softmax(e)`,
    `context = sum_n alpha_n enc_n`, `h = GRU([emb(token); context], h)`,
    `log_softmax(out(h))`.
    """
    regions, tokens = _f64(regions), np.asarray(tokens)
    bsz, n, _ = regions.shape
    table = _f64(sd["decoder.embedding.weight"])
    w1 = _f64(sd["decoder.attention.linear1.weight"])
    b1 = _f64(sd["decoder.attention.linear1.bias"])
    w2 = _f64(sd["decoder.attention.linear2.weight"])[0]
    out = np.zeros((bsz, tokens.shape[1], table.shape[0]))
    for b in range(bsz):
        x = linear(regions[b], sd["encoder.vid2hid.weight"], sd["encoder.vid2hid.bias"])
        enc, h = gru(x, sd, "encoder.rnn.")
        for t in range(tokens.shape[1]):
            e = np.array([w2 @ np.tanh(w1 @ np.concatenate([enc[j], h]) + b1) for j in range(n)])
            alpha = np.exp(e - e.max())
            alpha /= alpha.sum()
            context = sum(alpha[j] * enc[j] for j in range(n))
            h = gru_step(np.concatenate([table[tokens[b, t]], context]), h, sd, "decoder.rnn.")
            out[b, t] = _log_softmax(linear(h, sd["decoder.out.weight"], sd["decoder.out.bias"]))
    return out


def caption_loss(log_probs, targets, mask):
    """`LanguageModelCriterion`: `sum_{b,t} -log p[b, t, target] * mask / B`."""
    log_probs = _f64(log_probs)
    total = 0.0
    for b in range(log_probs.shape[0]):
        for t in range(log_probs.shape[1]):
            total -= log_probs[b, t, int(targets[b][t])] * float(mask[b][t])
    return total / log_probs.shape[0]
