"""Packed GRU: stacked ``GRUCell`` layers (Flax's or PyTorch's) over captions sorted by length,
computing only the captions that still hold a token at each step, as PyTorch's
``pack_padded_sequence``.

``packed_gru(x [B, L, D], lengths [B], weights) -> [B, H]`` is the function of the plain masked
``lax.scan`` (``GRUTextEncoder`` with ``gru_impl="scan"``) to float32 rounding, differentiable in
reverse mode (``jax.grad``; forward-mode ``jax.jvp`` is not defined: the VJP is hand-written).
``packed_gru_pays(hidden)`` is where ``gru_impl="auto"`` picks it: large GRUs on one CPU device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# A GRU layer over the captions sorted by length (longest first), with a hand-written VJP. Time
# runs in chunks of a few steps; a chunk computes only the captions that still hold a token at
# its first step, rounded up to a block of _ROW_BLOCK rows (a lax.switch over the block
# counts, static shapes in every branch, the chunk's steps unrolled inside): the work of
# PyTorch's pack_padded_sequence, about half of scanning every caption to L on COCO / Flickr30K
# caption lengths. Backward, the input and weight gradients of a chunk are one matmul each over
# its steps, so no [L, B, 3H] array is ever stored (one matmul after the scan, over every chunk's
# columns packed into one buffer, measured 6% slower on the benchmark's train step, in-process
# A/B: the buffers are updated in place only outside the switch, so each chunk writes them
# padded to B, which costs more than the larger K gains). Everything is feature-major: a state is
# ``[H, B]``, a sequence ``[L, F, B]``, every product a plain ``W @ h`` with the batch as the
# minor axis, which XLA:CPU runs faster than ``h @ W`` on a few rows, and a block of rows is a
# column slice that needs no transpose.
_ROW_BLOCK = 8
_MAX_BLOCKS = 16  # larger batches (evaluation) get larger blocks: fewer branches to compile
_TIME_CHUNK = 2  # steps per chunk forward: a row block that fits the steps closely
_GRAD_CHUNK = 4  # backward (a multiple of it): larger weight-gradient matmuls


# Smaller GRUs keep the plain scan, whose compile is short: at 256 units (configs/default.py's
# whole train step, batch 128, 128-d words, one core as a demo lane) a packed step took 0.077 s
# against the scan's 0.120 s but compiled in 25 s instead of 3, so packing pays past about 500
# steps (a demo run of 1872 steps would gain about a minute; the demo's table was measured with
# the scan, and packing changes float rounding); at 1024 units it is about 5x faster.
MIN_HIDDEN = 512


def packed_gru_pays(hidden: int) -> bool:
    """Whether a GRU of ``hidden`` units runs faster packed here: from ``MIN_HIDDEN`` units on a
    single CPU device.

    Sharded over several devices the packed GRU still computes the same function, but the
    length sort gathers the batch and every device runs the whole GRU (on 4 simulated CPU
    devices its matmuls see all B rows), so data parallelism keeps the scan, as do accelerators,
    where packing is unmeasured.
    """
    return (jax.default_backend() == "cpu" and jax.device_count() == 1
            and hidden >= MIN_HIDDEN)


def _row_block(b: int) -> int:
    """Rows per block: ``_ROW_BLOCK``, or a multiple of it that keeps at most
    ``_MAX_BLOCKS`` blocks."""
    return _ROW_BLOCK * max(1, -(-b // (_ROW_BLOCK * _MAX_BLOCKS)))


def _row_counts(b: int) -> list[int]:
    """Row counts a chunk may compute: 0, one block, two blocks, ..., all ``b`` rows."""
    return list(range(0, b, _row_block(b))) + [b]


def _branch(n: jax.Array, b: int) -> jax.Array:
    """Index into ``_row_counts(b)`` of the smallest count >= ``n`` active rows."""
    block = _row_block(b)
    return jnp.minimum((n + block - 1) // block, len(_row_counts(b)) - 1)


def _pad_axis(x: jax.Array, size: int, axis: int) -> jax.Array:
    """``x`` zero-padded at the end of ``axis`` to ``size``."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad) if size > x.shape[axis] else x


def _dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a b^T`` for ``a [M, K]`` and ``b [N, K]``: ``[M, N]``."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())))


def _chunks(x: jax.Array | None, size: int) -> jax.Array | None:
    """``[L, ...] -> [L / size, size, ...]`` (free: a sequence is time-major)."""
    return None if x is None else x.reshape((-1, size) + x.shape[1:])


def _forward(x, n_active, w_i, b_i, w_h, b_h, *, save: bool):
    """A ``GRUCell`` (Flax's; PyTorch's when the recurrent bias ``b_h [3H]`` is not None) over
    ``x [L, D, B]`` (time-major, feature-major) whose columns are
    sorted by length, descending; ``n_active [L]`` counts the captions that hold a token at each
    step.

    Returns the final states ``[H, B]`` (column b frozen after its last valid step) and the
    states after every step ``[L, H, B]``, plus, with ``save``, the gates ``r, z, n`` and
    ``W_hn h + b_hn`` of every step for the backward pass. Columns outside a chunk's row block are
    zero there.
    """
    seq, d, b = x.shape
    hd = w_h.shape[0]
    w_it, w_ht = w_i.T, w_h.T  # [3H, D], [3H, H]

    def branch(rows):  # one chunk of the first `rows` columns
        def f(h, x_c, n_c):
            if rows == 0:
                return h, (jnp.zeros((_TIME_CHUNK, hd, b), h.dtype),) * (5 if save else 1)
            h_a = h[:, :rows]
            outs = []
            for s in range(_TIME_CHUNK):
                xp = w_it @ x_c[s, :, :rows] + b_i[:, None]  # [3H, rows]
                hp = w_ht @ h_a if b_h is None else w_ht @ h_a + b_h[:, None]
                r = jax.nn.sigmoid(xp[:hd] + hp[:hd])
                z = jax.nn.sigmoid(xp[hd : 2 * hd] + hp[hd : 2 * hd])
                hn = hp[2 * hd :]
                n = jnp.tanh(xp[2 * hd :] + r * hn)
                active = jnp.arange(rows) < n_c[s]
                h_a = jnp.where(active, (1.0 - z) * n + z * h_a, h_a)
                outs.append((h_a, r, z, n, hn) if save else (h_a,))
            h = jax.lax.dynamic_update_slice(h, h_a, (0, 0)) if rows < b else h_a
            return h, tuple(_pad_axis(jnp.stack(v), b, 2) for v in zip(*outs))

        return f

    branches = [branch(rows) for rows in _row_counts(b)]

    def chunk(h, inputs):
        x_c, n_c = inputs
        return jax.lax.switch(_branch(n_c[0], b), branches, h, x_c, n_c)  # n_c[0]: most

    inputs = (_chunks(x, _TIME_CHUNK), _chunks(n_active, _TIME_CHUNK))
    h, saved = jax.lax.scan(chunk, jnp.zeros((hd, b), x.dtype), inputs)
    return h, tuple(v.reshape(seq, hd, b) for v in saved)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _layer(x, n_active, w_i, b_i, w_h, b_h, sequence: bool):
    """Packed GRU layer: ``x [L, D, B]`` (see ``_forward``; L a multiple of
    ``_GRAD_CHUNK``) -> the states after every step ``[L, H, B]`` if ``sequence`` (valid at
    each caption's valid steps), else the last ``[H, B]`` (each caption's state after its last
    valid step)."""
    h, (hs,) = _forward(x, n_active, w_i, b_i, w_h, b_h, save=False)
    return hs if sequence else h


def _layer_fwd(x, n_active, w_i, b_i, w_h, b_h, sequence):
    h, saved = _forward(x, n_active, w_i, b_i, w_h, b_h, save=True)
    return (saved[0] if sequence else h), (x, n_active, w_i, w_h, b_h, saved)


def _layer_bwd(sequence, residuals, ct):
    x, n_active, w_i, w_h, b_h, (hs, r, z, n, hn) = residuals
    seq, d, b = x.shape
    hd = w_h.shape[0]
    c = _GRAD_CHUNK
    h_prev = jnp.concatenate([jnp.zeros_like(hs[:1]), hs[:-1]])  # [L, H, B]

    def branch(rows):  # one chunk back through the first `rows` columns
        def f(carry, x_c, hp_c, r_c, z_c, n_c, hn_c, count, d_c):
            dh, (d_wi, d_bi, d_wh, d_bh) = carry
            if rows == 0:
                return carry, jnp.zeros_like(x_c)
            x_c, hp_c, r_c, z_c, n_c, hn_c = (
                v[..., :rows] for v in (x_c, hp_c, r_c, z_c, n_c, hn_c))
            dh_a = dh[:, :rows]
            g_x, g_h = [None] * c, [None] * c
            for s in reversed(range(c)):
                if d_c is not None:
                    dh_a = dh_a + d_c[s, :, :rows]
                active = jnp.arange(rows) < count[s]
                dt = jnp.where(active, dh_a, 0.0)  # d h_t of the captions that step at t
                rs, zs, ns, hns = r_c[s], z_c[s], n_c[s], hn_c[s]
                dn = dt * (1.0 - zs) * (1.0 - ns * ns)  # d (x W_in + b_in + r * W_hn h)
                dz = dt * (hp_c[s] - ns) * zs * (1.0 - zs)  # d (x W_iz + b_iz + W_hz h)
                dr = dn * hns * rs * (1.0 - rs)  # d (x W_ir + b_ir + W_hr h)
                g_x[s] = jnp.concatenate([dr, dz, dn])  # d (x W_i + b_i)^T  [3H, rows]
                g_h[s] = jnp.concatenate([dr, dz, dn * rs])  # d (h W_h)^T
                dh_a = jnp.where(active, dt * zs + w_h @ g_h[s], dh_a)
            # The chunk's steps side by side: [F, C * rows], one matmul per gradient.
            g_x = jnp.stack(g_x, axis=1).reshape(3 * hd, c * rows)
            g_h = jnp.stack(g_h, axis=1).reshape(3 * hd, c * rows)
            side = lambda v: jnp.swapaxes(v, 0, 1).reshape(v.shape[1], c * rows)  # noqa: E731
            acc = (d_wi + _dot_nt(side(x_c), g_x), d_bi + g_x.sum(axis=1),
                   d_wh + _dot_nt(side(hp_c), g_h), d_bh + g_h.sum(axis=1))
            d_x = jnp.swapaxes((w_i @ g_x).reshape(d, c, rows), 0, 1)  # [C, D, rows]
            dh = jax.lax.dynamic_update_slice(dh, dh_a, (0, 0)) if rows < b else dh_a
            return (dh, acc), _pad_axis(d_x, b, 2)

        return f

    branches = [branch(rows) for rows in _row_counts(b)]

    def chunk(carry, inputs):
        count = inputs[6]
        return jax.lax.switch(_branch(count[0], b), branches, carry, *inputs)

    d_seq, dh0 = (ct, jnp.zeros((hd, b), ct.dtype)) if sequence else (None, ct)
    bias0 = jnp.zeros((3 * hd,), w_i.dtype)
    acc0 = (jnp.zeros_like(w_i), bias0, jnp.zeros_like(w_h), bias0)
    inputs = tuple(_chunks(v, c) for v in (x, h_prev, r, z, n, hn, n_active, d_seq))
    (_, (d_wi, d_bi, d_wh, d_bh)), d_x = jax.lax.scan(chunk, (dh0, acc0), inputs, reverse=True)
    return d_x.reshape(x.shape), None, d_wi, d_bi, d_wh, None if b_h is None else d_bh


_layer.defvjp(_layer_fwd, _layer_bwd)


def packed_gru(x: jax.Array, lengths: jax.Array, weights) -> jax.Array:
    """Stacked GRU layers ``[(W_i [D, 3H], b_i [3H], W_h [H, 3H], b_h [3H] | None), ...]``
    (``GRUCell`` kernels, gates r, z, n; ``b_h`` the recurrent bias of PyTorch's cell, None for
    Flax's) over ``x [B, L, D]``: the last layer's state after ``lengths[b]`` steps, ``[B, H]``."""
    dtype = jnp.result_type(x, *(w for layer in weights for w in layer if w is not None))
    order = jnp.argsort(-lengths, stable=True)  # the longest caption first
    x = jnp.transpose(x[order].astype(dtype), (1, 2, 0))  # [L, D, B]
    # Whole chunks of steps; the added steps have no active row and cost nothing.
    x = _pad_axis(x, -(-x.shape[0] // _GRAD_CHUNK) * _GRAD_CHUNK, 0)
    n_active = jnp.sum(lengths[None, :] > jnp.arange(x.shape[0])[:, None], axis=1)  # [L]
    for i, layer in enumerate(weights):
        w_i, b_i, w_h, b_h = (None if w is None else w.astype(dtype) for w in layer)
        x = _layer(x, n_active, w_i, b_i, w_h, b_h, i < len(weights) - 1)
    return x.T[jnp.argsort(order)]

