"""Plain-NumPy float64 loop references for `itm_jax.losses` and `itm_jax.similarity`.

Every function here is written directly from the contract `docs/losses.md` (its sections cited
as `docs: <section>`) with explicit Python loops over anchors / pairs, so that it shares
no code and no vectorisation trick with the JAX implementation under test. Inputs are converted
to float64 NumPy arrays; outputs are Python floats (or float64 arrays for the helpers).

Conventions (docs: Conventions): `scores[i, j] = s(image_i, caption_j)`, images are rows;
`positives=None` means the diagonal; negatives of an anchor are the non-positive entries of its
row (column). For max/min-based losses the anchor's positive score is the diagonal entry S_kk of
its batch pair k; other positives are only excluded from the negatives (docs: Conventions).
"""

from __future__ import annotations

import math

import numpy as np

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _positives(positives, shape):
    """`None` -> diagonal of a square matrix; else a bool array of `shape` (docs: Conventions)."""
    if positives is None:
        assert shape[0] == shape[1], "diagonal positives need square scores"
        return np.eye(shape[0], dtype=bool)
    p = np.asarray(positives).astype(bool)
    assert p.shape == tuple(shape), (p.shape, shape)
    return p


def logsumexp(values) -> float:
    """Max-shifted log(sum(exp(v))) over a 1-D sequence (loop form, finite for any tau)."""
    vals = [float(v) for v in values]
    mx = max(vals)
    total = 0.0
    for v in vals:
        total += math.exp(v - mx)
    return mx + math.log(total)


def l2n(v, eps=1e-12):
    """`n(v) = v * rsqrt(max(||v||^2, eps))` for one vector (docs: CMPM)."""
    v = _f64(v)
    sq = 0.0
    for a in v:
        sq += float(a) * float(a)
    return v / math.sqrt(max(sq, eps))


def relu(x: float) -> float:
    return x if x > 0.0 else 0.0


def positives_from_ids(image_ids_rows, image_ids_cols):
    """bool [Bi, Bt], True where the image ids are equal (docs: Conventions); exact int equality."""
    rows = [int(v) for v in np.asarray(image_ids_rows).ravel()]
    cols = [int(v) for v in np.asarray(image_ids_cols).ravel()]
    out = np.zeros((len(rows), len(cols)), dtype=bool)
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            out[i, j] = a == b
    return out


# --------------------------------------------------------------------------------------------
# VSE family (docs: VSE)
# --------------------------------------------------------------------------------------------


def vse_hinges(scores, margin=0.2, positives=None):
    """Return (a, b) [B, B] with positives masked to 0 (docs: VSE).

    a[i, j] = [m + S_ij - S_ii]_+  (image i anchor, caption j negative)
    b[i, j] = [m + S_ij - S_jj]_+  (caption j anchor, image i negative)
    """
    s = _f64(scores)
    n = s.shape[0]
    pos = _positives(positives, s.shape)
    a = np.zeros((n, n))
    b = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if pos[i, j]:
                continue
            a[i, j] = relu(margin + s[i, j] - s[i, i])
            b[i, j] = relu(margin + s[i, j] - s[j, j])
    return a, b


def sum_of_hinges(scores, margin=0.2, positives=None, reduction="sum"):
    """SH / VSE0, docs: VSE, `sum_ij a_ij + sum_ij b_ij`.

    reduction="mean": each direction divided by its number of anchors (sum a / Bi + sum b / Bt).
    """
    a, b = vse_hinges(scores, margin, positives)
    n = a.shape[0]
    sa = 0.0
    sb = 0.0
    for i in range(n):
        for j in range(n):
            sa += a[i, j]
            sb += b[i, j]
    if reduction == "sum":
        return sa + sb
    assert reduction == "mean"
    return sa / n + sb / n


def max_of_hinges_terms(scores, margin=0.2, positives=None):
    """Per-anchor hardest hinges (row_terms[i] = max_j a_ij, col_terms[j] = max_i b_ij).

    An anchor without negatives contributes 0 (positives are masked to 0, docs: VSE).
    """
    a, b = vse_hinges(scores, margin, positives)
    n = a.shape[0]
    rows = [0.0] * n
    cols = [0.0] * n
    for i in range(n):
        for j in range(n):
            rows[i] = max(rows[i], a[i, j])
            cols[j] = max(cols[j], b[i, j])
    return rows, cols


def max_of_hinges(scores, margin=0.2, positives=None, reduction="sum"):
    """MH / VSE++, docs: VSE, `sum_i max_j a_ij + sum_j max_i b_ij`.

    reduction="mean": mean_i max_j a_ij + mean_j max_i b_ij.
    """
    rows, cols = max_of_hinges_terms(scores, margin, positives)
    n = len(rows)
    if reduction == "sum":
        return sum(rows) + sum(cols)
    assert reduction == "mean"
    return sum(rows) / n + sum(cols) / n


def hardest_negatives(scores, positives=None):
    """(row_max[k], col_max[k]) = max_{j neg} S_kj and max_{i neg} S_ik (None if no negative)."""
    s = _f64(scores)
    n = s.shape[0]
    pos = _positives(positives, s.shape)
    row_max = [None] * n
    col_max = [None] * n
    for k in range(n):
        for j in range(n):
            if not pos[k, j] and (row_max[k] is None or s[k, j] > row_max[k]):
                row_max[k] = float(s[k, j])
        for i in range(n):
            if not pos[i, k] and (col_max[k] is None or s[i, k] > col_max[k]):
                col_max[k] = float(s[i, k])
    return row_max, col_max


# --------------------------------------------------------------------------------------------
# Dual-path ranking loss (docs: Instance loss and dual-path ranking)
# --------------------------------------------------------------------------------------------


def dual_path_ranking(scores, margin=1.0, positives=None, reduction="mean"):
    """Spec L89-L90: per batch pair k
    `[margin - (S_kk - max_{j neg} S_kj)]_+ + [margin - (S_kk - max_{i neg} S_ik)]_+`;
    "sum" sums over k, "mean" divides that sum by B. No negative -> the term is 0.
    """
    s = _f64(scores)
    n = s.shape[0]
    row_max, col_max = hardest_negatives(s, positives)
    total = 0.0
    for k in range(n):
        if row_max[k] is not None:
            total += relu(margin - (s[k, k] - row_max[k]))
        if col_max[k] is not None:
            total += relu(margin - (s[k, k] - col_max[k]))
    if reduction == "sum":
        return total
    assert reduction == "mean"
    return total / n


# --------------------------------------------------------------------------------------------
# IMC (docs: IMC)
# --------------------------------------------------------------------------------------------


def pairwise_distances(x, delta):
    """[B, B] plain distances between rows (docs: IMC; rows as given, no normalising).

    l1: sum |x_n - x_m|; l2: Euclidean; msd: sum of squared differences; cosine: 1 - x_n . x_m.
    """
    x = _f64(x)
    n, d = x.shape
    out = np.zeros((n, n))
    for p in range(n):
        for q in range(n):
            if delta == "cosine":
                dot = 0.0
                for k in range(d):
                    dot += x[p, k] * x[q, k]
                out[p, q] = 1.0 - dot
                continue
            acc = 0.0
            for k in range(d):
                diff = x[p, k] - x[q, k]
                if delta == "l1":
                    acc += abs(diff)
                else:
                    acc += diff * diff
            if delta == "l1" or delta == "msd":
                out[p, q] = acc
            elif delta == "l2":
                out[p, q] = math.sqrt(acc)
            else:
                raise ValueError(delta)
    return out


def imc_reference_thresholds(x, delta, mu_down=0.05, mu_up=0.5, rounding=round):
    """(R, lo, hi) of the reference variant for delta in {l1, l2, msd} (docs: IMC).

    `rounding` defaults to Python's round-half-to-even; tests pass a half-up rounding only to
    show that a case discriminates between the two.
    """
    dist = pairwise_distances(x, delta)
    n = dist.shape[0]
    r_mat = np.zeros((n, n))
    for p in range(n):
        sq = 0.0
        for q in range(n):
            sq += dist[p, q] * dist[p, q]
        norm = max(math.sqrt(sq), 1e-12)
        for q in range(n):
            r_mat[p, q] = dist[p, q] / norm
    row0 = sorted(float(v) for v in r_mat[0])
    lo = row0[rounding(mu_down * n)]
    hi = row0[rounding(mu_up * n)]
    return r_mat, lo, hi


def imc_term(x, delta="l1", mu_down=0.05, mu_up=0.5, variant="reference", rounding=round):
    """IMC(X) without lam.

    variant="reference" (docs: IMC):
      cosine: C = X X^T - I, keep mu_up < C < 1 - mu_down, IMC = sum(M * C) / B (the
      similarity, diagonal included as written: it is |x_n|^2 - 1, i.e. ~0 for unit rows);
      l1/l2/msd: R = D / max(||D_n.||, 1e-12), lo/hi from sorted R[0] at round(mu*B)
      (half-to-even), M = lo < R < hi strictly, IMC = sum(M * R) / B.
    variant="paper" (docs: IMC): sum over ordered pairs n != m of
      delta(v_n, v_m) * 1[mu_down < delta < mu_up], cosine distance = 1 - v_n . v_m.
    """
    x = _f64(x)
    n, d = x.shape
    total = 0.0
    if variant == "paper":
        dist = pairwise_distances(x, delta)
        for p in range(n):
            for q in range(n):
                if p != q and mu_down < dist[p, q] < mu_up:
                    total += dist[p, q]
        return total
    assert variant == "reference"
    if delta == "cosine":
        for p in range(n):
            for q in range(n):
                c = 0.0
                for k in range(d):
                    c += x[p, k] * x[q, k]
                if p == q:
                    c -= 1.0
                if mu_up < c < 1.0 - mu_down:
                    total += c
        return total / n
    r_mat, lo, hi = imc_reference_thresholds(x, delta, mu_down, mu_up, rounding)
    for p in range(n):
        for q in range(n):
            if lo < r_mat[p, q] < hi:
                total += r_mat[p, q]
    return total / n


def imc_mask_count(x, delta="l1", mu_down=0.05, mu_up=0.5, variant="reference"):
    """Number of (ordered) entries kept by the IMC mask; tests use it to show non-triviality."""
    x = _f64(x)
    n = x.shape[0]
    count = 0
    if variant == "paper":
        dist = pairwise_distances(x, delta)
        for p in range(n):
            for q in range(n):
                count += int(p != q and mu_down < dist[p, q] < mu_up)
        return count
    if delta == "cosine":
        c = x @ x.T - np.eye(n)
        for p in range(n):
            for q in range(n):
                count += int(mu_up < c[p, q] < 1.0 - mu_down)
        return count
    r_mat, lo, hi = imc_reference_thresholds(x, delta, mu_down, mu_up)
    for p in range(n):
        for q in range(n):
            count += int(lo < r_mat[p, q] < hi)
    return count


def imc(scores, img_emb, txt_emb, margin=0.2, lam=1.0, delta="l1", mu_down=0.05, mu_up=0.5,
        variant="reference", positives=None):
    """Docs: IMC. `max_of_hinges(scores, margin, positives) + lam*IMC(txt) +
    lam*IMC(img)`; lam applied once in both variants."""
    mh = max_of_hinges(scores, margin, positives, "sum")
    return (mh + lam * imc_term(txt_emb, delta, mu_down, mu_up, variant)
            + lam * imc_term(img_emb, delta, mu_down, mu_up, variant))


# --------------------------------------------------------------------------------------------
# CMPM / CMPC (docs: CMPM)
# --------------------------------------------------------------------------------------------


def cmpm(x, z, labels, eps=1e-8):
    """Spec L64-L70: y_ij = [labels_i == labels_j] (exact integers), q_ij = y_ij / sum_k y_ik,
    p_i = softmax_j(x_i . n(z_j)), L_i = sum_j p_ij log(eps + p_ij / (q_ij + eps)),
    L_i2t = mean_i L_i; t2i the same with softmax_j(z_i . n(x_j)) and the same q; sum."""
    x = _f64(x)
    z = _f64(z)
    labs = [int(v) for v in np.asarray(labels).ravel()]
    n = len(labs)
    q = np.zeros((n, n))
    for i in range(n):
        count = 0
        for k in range(n):
            count += int(labs[i] == labs[k])
        for j in range(n):
            q[i, j] = (1.0 if labs[i] == labs[j] else 0.0) / count

    def direction(a, b):
        nb = [l2n(b[j]) for j in range(n)]
        total = 0.0
        for i in range(n):
            logits = [float(a[i] @ nb[j]) for j in range(n)]
            lse = logsumexp(logits)
            row = 0.0
            for j in range(n):
                p = math.exp(logits[j] - lse)
                if p == 0.0:
                    continue  # p * log(eps + 0) = 0
                row += p * math.log(eps + p / (q[i, j] + eps))
            total += row
        return total / n

    return direction(x, z) + direction(z, x)


def cmpc(x, z, labels, weight):
    """Spec L73-L77: W_n = columns of weight normalised; x_hat_i = (x_i . n(z_i)) n(z_i),
    z_hat_i = (z_i . n(x_i)) n(x_i); CE(x_hat @ W_n, labels) + CE(z_hat @ W_n, labels), each a
    mean over the batch; no bias, no label smoothing."""
    x = _f64(x)
    z = _f64(z)
    w = _f64(weight).copy()
    d, c = w.shape
    for col in range(c):
        w[:, col] = l2n(w[:, col])
    labs = [int(v) for v in np.asarray(labels).ravel()]
    n = len(labs)
    ce_x = 0.0
    ce_z = 0.0
    for i in range(n):
        nz = l2n(z[i])
        nx = l2n(x[i])
        x_hat = float(x[i] @ nz) * nz
        z_hat = float(z[i] @ nx) * nx
        for vec, which in ((x_hat, "x"), (z_hat, "z")):
            logits = [float(vec @ w[:, col]) for col in range(c)]
            ce = logsumexp(logits) - logits[labs[i]]
            if which == "x":
                ce_x += ce
            else:
                ce_z += ce
    return ce_x / n + ce_z / n


# --------------------------------------------------------------------------------------------
# Instance loss (docs: Instance loss and dual-path ranking)
# --------------------------------------------------------------------------------------------


def instance_loss(img_logits, txt_logits, labels, reduction="mean"):
    """Spec L85-L88: softmax cross-entropy L_visual + L_textual; "mean" averages each over the
    batch, "sum" sums over the batch."""
    li = _f64(img_logits)
    lt = _f64(txt_logits)
    labs = [int(v) for v in np.asarray(labels).ravel()]
    n = len(labs)
    total = 0.0
    for logits in (li, lt):
        for i in range(n):
            total += logsumexp(logits[i]) - logits[i, labs[i]]
    if reduction == "sum":
        return total
    assert reduction == "mean"
    return total / n


def weighted_instance_loss(img_logits, txt_logits, labels, image_weight=1.0, text_weight=1.0,
                           reduction="mean"):
    """Dual-path paper Eq. 9's instance terms `l2 * L_visual + l3 * L_textual` (docs:
    Instance loss and dual-path ranking, the stage weights rank:image:text), each term the
    softmax cross-entropy of Eq. 5-8 summed (or averaged) over the batch. Returns
    `(loss, visual, textual)`, the terms unweighted."""
    labs = [int(v) for v in np.asarray(labels).ravel()]
    terms = []
    for logits in (_f64(img_logits), _f64(txt_logits)):
        term = 0.0
        for i, c in enumerate(labs):
            term += logsumexp(logits[i]) - logits[i, c]  # -log softmax(logits[i])[c]
        terms.append(term / len(labs) if reduction == "mean" else term)
    visual, textual = terms
    return image_weight * visual + text_weight * textual, visual, textual


# --------------------------------------------------------------------------------------------
# ConVSE family (docs: ConVSE)
# --------------------------------------------------------------------------------------------


def contrastive_sum_negatives(scores, tau=0.1, positives=None):
    """Docs: ConVSE, multi-positive form: for each row with >= 1 positive,
    mean over its positives of -log softmax_j(S_ij / tau) (denominator = the whole row);
    averaged over those rows; the same over columns; the two summed."""
    s = _f64(scores) / tau
    bi, bt = s.shape
    pos = _positives(positives, s.shape)
    row_terms = []
    for i in range(bi):
        lse = logsumexp(s[i, :])
        vals = [lse - s[i, j] for j in range(bt) if pos[i, j]]
        if vals:
            row_terms.append(sum(vals) / len(vals))
    col_terms = []
    for j in range(bt):
        lse = logsumexp(s[:, j])
        vals = [lse - s[i, j] for i in range(bi) if pos[i, j]]
        if vals:
            col_terms.append(sum(vals) / len(vals))
    out = 0.0
    if row_terms:
        out += sum(row_terms) / len(row_terms)
    if col_terms:
        out += sum(col_terms) / len(col_terms)
    return out


def contrastive_max_negative(scores, tau=0.1, margin=0.2, positives=None):
    """Spec L103-L105: mean_i [(max_{j neg} S_ij + margin - S_ii)/tau]_+ +
    mean_j [(max_{i neg} S_ij + margin - S_jj)/tau]_+ (no negative -> 0)."""
    s = _f64(scores)
    n = s.shape[0]
    row_max, col_max = hardest_negatives(s, positives)
    rows = 0.0
    cols = 0.0
    for k in range(n):
        if row_max[k] is not None:
            rows += relu((row_max[k] + margin - s[k, k]) / tau)
        if col_max[k] is not None:
            cols += relu((col_max[k] + margin - s[k, k]) / tau)
    return rows / n + cols / n


def multimodal_nce(img_emb, txt_emb, tau=0.1):
    """Spec L106-L109: NT-Xent over z = [img; txt] (2B rows); anchor a, partner (a + B) mod 2B:
    -log(exp(z_a.z_p/tau) / sum_{k != a} exp(z_a.z_k/tau)), mean over the 2B anchors."""
    z = np.concatenate([_f64(img_emb), _f64(txt_emb)], axis=0)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for a in range(n2):
        p = (a + n) % n2
        logits = [float(z[a] @ z[k]) / tau for k in range(n2) if k != a]
        total += logsumexp(logits) - float(z[a] @ z[p]) / tau
    return total / n2


# --------------------------------------------------------------------------------------------
# AOQ (docs: AOQ)
# --------------------------------------------------------------------------------------------


def aoq_weights(scores, s_i_toff, s_ioff_t, alpha=0.3, beta=1.5, positives=None):
    """Spec L124-L125: w_i = beta - (s_i_toff - on_i)/alpha, w_t = beta - (s_ioff_t - on_t)/alpha.
    None where the anchor has no negative (its hinge is 0 then)."""
    row_max, col_max = hardest_negatives(scores, positives)
    n = len(row_max)
    w_i = [None if row_max[k] is None else beta - (float(s_i_toff[k]) - row_max[k]) / alpha
           for k in range(n)]
    w_t = [None if col_max[k] is None else beta - (float(s_ioff_t[k]) - col_max[k]) / alpha
           for k in range(n)]
    return w_i, w_t


def aoq_loss(scores, s_i_toff=None, s_ioff_t=None, s_ioff_toff=None, s_itilde_ttilde=None,
             variant="adaptive", margin_online=0.2, margin_offline=0.0, alpha=0.3, beta=1.5,
             positives=None, weights=None):
    """Spec L115-L131, summed over batch pairs k with P_k = S_kk:
      h_i = [g1 + on_i - P]_+, h_t = [g1 + on_t - P]_+ (0 without negatives);
      online: h_i + h_t; offtri: + [g2 + s_i_toff - P]_+ + [g2 + s_ioff_t - P]_+;
      offquin: offtri + [g2 + s_ioff_toff - P]_+ + [g2 + s_itilde_ttilde - P]_+;
      adaptive: offquin with h_i, h_t replaced by w_i*h_i, w_t*h_t.
    `weights=(w_i, w_t)` overrides the adaptive weights with constants (to build the
    detached-weights gradient by finite differences)."""
    s = _f64(scores)
    n = s.shape[0]
    g1 = margin_online
    g2 = margin_offline
    row_max, col_max = hardest_negatives(s, positives)
    if variant == "adaptive":
        if weights is None:
            w_i, w_t = aoq_weights(s, s_i_toff, s_ioff_t, alpha, beta, positives)
        else:
            w_i, w_t = weights
    total = 0.0
    for k in range(n):
        p = s[k, k]
        h_i = 0.0 if row_max[k] is None else relu(g1 + row_max[k] - p)
        h_t = 0.0 if col_max[k] is None else relu(g1 + col_max[k] - p)
        if variant == "adaptive":
            if h_i != 0.0:
                h_i = w_i[k] * h_i
            if h_t != 0.0:
                h_t = w_t[k] * h_t
        total += h_i + h_t
        if variant == "online":
            continue
        total += relu(g2 + float(s_i_toff[k]) - p) + relu(g2 + float(s_ioff_t[k]) - p)
        if variant == "offtri":
            continue
        assert variant in ("offquin", "adaptive")
        total += relu(g2 + float(s_ioff_toff[k]) - p) + relu(g2 + float(s_itilde_ttilde[k]) - p)
    return total


# --------------------------------------------------------------------------------------------
# similarity helpers (itm_jax.similarity; docs: IMC, CMPM)
# --------------------------------------------------------------------------------------------


def l2_normalize_rows(x, eps=1e-12):
    """x * rsqrt(max(sum x^2, eps)) row by row."""
    x = _f64(x)
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        out[i] = l2n(x[i], eps)
    return out


def cosine_scores(img, txt):
    """l2_normalize(img) @ l2_normalize(txt).T with loops."""
    a = l2_normalize_rows(img)
    b = l2_normalize_rows(txt)
    out = np.zeros((a.shape[0], b.shape[0]))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            acc = 0.0
            for k in range(a.shape[1]):
                acc += a[i, k] * b[j, k]
            out[i, j] = acc
    return out


def numerical_grad(fn, x, h=1e-6):
    """Central finite differences of a scalar NumPy function at a float64 array `x`."""
    x = _f64(x).copy()
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        orig = x[idx]
        x[idx] = orig + h
        fp = fn(x)
        x[idx] = orig - h
        fm = fn(x)
        x[idx] = orig
        g[idx] = (fp - fm) / (2 * h)
    return g


# --------------------------------------------------------------------------------------------
# test input generators (NumPy float64; tests convert them to JAX arrays themselves)
# --------------------------------------------------------------------------------------------


def rand_scores(rng, bi, bt=None, diag_boost=0.3):
    """Uniform[-1, 1) scores with the diagonal raised a little so that some hinges are active
    and some are not (a loss that ignores the margin or flips a sign then shows)."""
    bt = bi if bt is None else bt
    s = rng.uniform(-1.0, 1.0, size=(bi, bt))
    for k in range(min(bi, bt)):
        s[k, k] = min(1.0, s[k, k] + diag_boost)
    return s


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_unit_rows(rng, n, d, spread=0.8):
    """Unit rows around a common direction: pairwise cosines spread over roughly (0.2, 0.97),
    so the IMC cosine masks (0.5 < cos < 0.95) keep some pairs and drop others."""
    base = rng.normal(size=d)
    base /= np.linalg.norm(base)
    x = base + spread * rng.normal(size=(n, d)) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noisy_copy(rng, x, noise=0.5):
    """Unit rows close to the rows of `x` (captions matching their images): the diagonal of
    x @ result.T is high (~0.9) and off-diagonal scores are low, as in a trained model."""
    n, d = x.shape
    y = x + noise * rng.normal(size=(n, d)) / np.sqrt(d)
    return y / np.linalg.norm(y, axis=1, keepdims=True)
