"""Plain NumPy float64 references for the attention scores of `itm_jax.similarity`.

Written from the SCAN and BFAN definitions, one (image, caption) pair at a time, the way the
authors' code runs: padding is sliced off (never masked), the attended vectors are formed
explicitly and every normalisation is a direct formula. No code is shared with the library.
"""

import numpy as np

EPS = 1e-8


def l2n(x, axis):
    """``x / (sqrt(sum x^2) + 1e-8)`` along ``axis``: the eps is added to the norm."""
    return x / (np.sqrt(np.sum(x * x, axis=axis, keepdims=True)) + EPS)


def lrelu(x):
    return np.where(x > 0, x, 0.1 * x)


def softmax(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def cos_rows(a, b):
    """Cosine of matching rows of ``a, b [n, D]``: ``a.b / max(|a| |b|, 1e-8)``."""
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, EPS)


def scan_attend(query, context, raw_feature_norm, lambda_softmax):
    """SCAN's ``func_attention``: ``query [q, D]``, ``context [s, D]`` -> attended ``[q, D]``."""
    attn = context @ query.T  # [s, q]
    if raw_feature_norm == "softmax":
        attn = softmax(attn, axis=1)
    elif raw_feature_norm == "l2norm":
        attn = l2n(attn, axis=1)
    elif raw_feature_norm == "clipped_l2norm":
        attn = l2n(lrelu(attn), axis=1)
    elif raw_feature_norm == "clipped":
        attn = lrelu(attn)
    else:
        assert raw_feature_norm == "no_norm"
    alpha = softmax(lambda_softmax * attn.T, axis=1)  # [q, s]
    return alpha @ context


def pool(r, agg, lambda_lse):
    if agg == "logsumexp":
        return np.log(np.sum(np.exp(lambda_lse * r))) / lambda_lse
    return {"max": np.max, "sum": np.sum, "mean": np.mean}[agg](r)


def scan_scores(images, captions, cap_lens, *, direction="t2i", raw_feature_norm="clipped_l2norm",
                agg="mean", lambda_softmax=9.0, lambda_lse=6.0, region_lens=None):
    images, captions = np.asarray(images, np.float64), np.asarray(captions, np.float64)
    ni, nc = images.shape[0], captions.shape[0]
    region_lens = [images.shape[1]] * ni if region_lens is None else region_lens
    out = np.zeros((ni, nc))
    for i in range(ni):
        regions = images[i, : region_lens[i]]
        for c in range(nc):
            words = captions[c, : cap_lens[c]]
            query, context = (words, regions) if direction == "t2i" else (regions, words)
            attended = scan_attend(query, context, raw_feature_norm, lambda_softmax)
            out[i, c] = pool(cos_rows(query, attended), agg, lambda_lse)
    return out


def focal_function(a, focal):
    """``F [q, s]`` of BFAN for attention ``a [q, s]`` (each row sums to 1)."""
    q, s = a.shape
    f = np.zeros_like(a)
    for t in range(q):
        for j in range(s):
            if focal == "equal":
                f[t, j] = s * a[t, j] - np.sum(a[t])
            else:
                f[t, j] = sum((a[t, j] - a[t, k]) * np.sqrt(a[t, k]) for k in range(s))
    return f


def selection_margins(a, focal):
    """How far each selection of ``a [q, s]`` is from flipping: ``|a_tj - threshold_t|`` (the
    mean ``1/s`` for equal, ``sum a^1.5 / sum a^0.5`` for prob) for every item but each
    query's largest, which always passes. (``|F|`` itself is tiny for a dominant item whose
    rivals have weight ~0, without that selection being anywhere near a flip.)"""
    if focal == "equal":
        threshold = np.full((a.shape[0], 1), 1.0 / a.shape[1])
    else:
        threshold = np.sum(a**1.5, axis=1, keepdims=True) / np.sum(np.sqrt(a), axis=1,
                                                                    keepdims=True)
    not_top = np.ones_like(a, bool)
    not_top[np.arange(a.shape[0]), np.argmax(a, axis=1)] = False
    return np.abs(a - threshold)[not_top]


def bfan_attend(query, context, focal, lambda_softmax, margins=None):
    """BFAN's focal attention ``FA(Q, C)`` -> ``[q, D]``. ``margins``, a list, collects the
    ``selection_margins`` so tests can tell how close each selection is to flipping."""
    attn = l2n(lrelu(context @ query.T), axis=1)  # [s, q]
    a = softmax(lambda_softmax * attn.T, axis=1)  # [q, s]
    f = focal_function(a, focal)
    if margins is not None:
        margins.extend(selection_margins(a, focal))
    keep = (f > 0).astype(np.float64)
    # The library's rule where nothing passes (all weights equal, e.g. one context item; the
    # authors' code divides 0 by 0 there): every item is kept.
    keep[keep.sum(axis=1) == 0] = 1.0
    kept = keep * a
    return (kept / kept.sum(axis=1, keepdims=True)) @ context


def bfan_scores(images, captions, cap_lens, *, focal="equal", lambda_softmax=20.0,
                region_lens=None, margins=None):
    images, captions = np.asarray(images, np.float64), np.asarray(captions, np.float64)
    ni, nc = images.shape[0], captions.shape[0]
    region_lens = [images.shape[1]] * ni if region_lens is None else region_lens
    out = np.zeros((ni, nc))
    for i in range(ni):
        v = images[i, : region_lens[i]]
        for c in range(nc):
            u = captions[c, : cap_lens[c]]
            t2i = np.mean(cos_rows(u, bfan_attend(u, v, focal, lambda_softmax, margins)))
            i2t = np.mean(cos_rows(v, bfan_attend(v, u, focal, lambda_softmax, margins)))
            out[i, c] = t2i + i2t
    return out


def numerical_grad(f, x, h=1e-6):
    """Central differences of the scalar ``f`` at every element of ``x`` (float64)."""
    x = np.array(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        up = f(x)
        x[idx] = old - h
        down = f(x)
        x[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g
