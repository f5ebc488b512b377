"""Offline hard negatives for AOQ round 2: the mining job's core (Chen, Deng and Luo, "Adaptive
Offline Quintuplet Loss for Image-Text Matching", ECCV 2020, Sec. 3.2; ``shared/spec/losses.md``,
AOQ "Mining").

With round-1 embeddings of every training image ``[N, D]`` and caption ``[M, D]`` and scores
``S = img @ cap.T``:

- ``i2t [N, H_t]`` int32: for each image, the ``H_t`` highest-scoring captions that are not its
  own, hardest first;
- ``t2i [M, H_i]`` int32: for each caption, the ``H_i`` highest-scoring images other than its own;
- ``i2t_scores`` / ``t2i_scores``: the float32 scores of those entries.

"Own" is decided by image id, not index: caption j is a positive of image i iff
``image_ids[cap_to_img[j]] == image_ids[i]``, so duplicate pictures in a split are excluded too.
Scores are exact float32 dot products (the authors score in fp16, which creates ties); equal
scores are listed by ascending index. The authors store H_t=2000 / H_i=400 and sample from the
first 300 / 60; ``h_t`` and ``h_i`` are parameters here.

Algorithm (``backend="jax"``): one jitted program per chunk of image rows, split over the devices
of a ``data`` mesh axis (``shard_map``). Each device walks its rows in blocks of ``block_size``
images (``lax.map``) and computes each ``[block, M]`` float32 score block once, for both
directions:

- i2t: ``lax.top_k`` of the block's rows (positives masked to -inf);
- t2i: the block's columns are cut into groups of 32 images, each keeping its 5 best scores and
  the 6th as a bound (``_column_candidates``); per chunk, each caption's candidates are reduced
  with ``lax.top_k`` and merged into a running ``[M, H_i]`` list (sharded over captions), earlier
  images first. A caption whose final H_i-th score does not beat every bound of its column is
  recomputed exactly (rare; see ``_GROUP``), so the lists are exact.

XLA's ``top_k`` on CPU is a serial heap (~4 ns per score, as much as the matmul that made the
score); the group pass hands it only a sixth of the t2i scores. Memory per device is the score
block, ``O(block_size * M)``, plus a chunk's t2i candidates (at most ``_CHUNK_BYTES``) and the
``[M, H_i]`` lists; the ``[N, M]`` matrix never exists. Processes split the chunks: each mines its
share on its local devices and saves it; process 0 merges the shares into the final files.

Files (``mine``, ``out_dir`` = ``RUN_DIR/mining``): ``i2t.npy``, ``t2i.npy``, ``i2t_scores.npy``,
``t2i_scores.npy`` and ``manifest.json`` (written last: its presence means the job finished).
Every write goes to a temporary file in the same directory and is renamed into place. A killed
job resumes from its saved chunks (``work/``) and writes byte-identical lists.

``backend="faiss"`` (``pip install itm_jax[bench]``) mines the same chunks with ``IndexFlatIP``
searches (k plus the most positives a query can have; positives then dropped), as a cross-check.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from itm_jax.data.source import image_ids as source_image_ids

FORMAT = "itm_jax.mining/1"
MANIFEST = "manifest.json"
FILES = {"i2t": "i2t.npy", "t2i": "t2i.npy", "i2t_scores": "i2t_scores.npy",
         "t2i_scores": "t2i_scores.npy"}
BACKENDS = ("jax", "faiss")

_RERUN = "re-run itm-mine for this dataset (itm-mine --config=... --workdir=RUN_DIR)"


class Mined(NamedTuple):
    """Mined lists: ``i2t`` int32 ``[N, H_t]``, ``t2i`` int32 ``[M, H_i]`` (hardest first) and
    their float32 scores of the same shapes."""

    i2t: np.ndarray
    t2i: np.ndarray
    i2t_scores: np.ndarray
    t2i_scores: np.ndarray


# ----- t2i candidates: groups of images keep their top scores ---------------------------------
# Each caption's column of a score block is cut into groups of _GROUP consecutive images; a group
# keeps its _KEEP largest scores (with their images) and reports the next largest as a bound, so
# every dropped score is <= its group's bound. If a caption's final h_i-th score is above all its
# bounds, its list is exact; otherwise a group held more than _KEEP of its top h_i images, with
# probability ~C(32, 6) (h_i / N)^6 per group (4e-4 per caption at 60 / 5,000, far less on COCO),
# and the caption is recomputed over all images. So a sixth of the scores reach XLA's ``top_k``
# (a serial heap on CPU, ~4 ns per score) after an elementwise pass of ~1-2 ns per score.
_GROUP, _KEEP = 32, 5


def _group_top(x: jax.Array, keep: int):
    """Per ``(p, q)`` of ``x [P, g, Q]``, the ``keep`` largest of ``x[p, :, q]``.

    Returns ``values [keep, P, Q]`` (descending; equal values keep the lower member first),
    ``member [keep, P, Q]`` int32 (position in the group) and ``bound [P, Q]``, the next largest
    value. Insertion of each member into the sorted levels with elementwise compare/select (one
    fused pass over ``x``).
    """
    g = x.shape[1]
    first = x[:, 0, :]
    values = [first] + [jnp.full_like(first, -jnp.inf)] * keep
    member = [jnp.zeros(first.shape, jnp.int32)] * keep
    for t in range(1, g):
        v = x[:, t, :]
        # Strictly greater: a later member equal to a kept value goes below it. Levels from the
        # insertion point down shift by one, keeping their order.
        above = [v > level for level in values]
        values = [jnp.where(above[0], v, values[0])] + [
            jnp.where(above[i], jnp.where(above[i - 1], values[i - 1], v), values[i])
            for i in range(1, keep + 1)]
        member = [jnp.where(above[0], t, member[0])] + [
            jnp.where(above[i], jnp.where(above[i - 1], member[i - 1], t), member[i])
            for i in range(1, keep)]
    return jnp.stack(values[:keep]), jnp.stack(member), values[keep]


def _column_candidates(s: jax.Array, start: jax.Array):
    """Candidates of each column of a score block ``s [B, n]`` (B a multiple of _GROUP):
    ``(values, row [B * _KEEP / _GROUP, n])`` with rows offset by ``start``, and ``bound [n]``,
    the largest dropped score of each column."""
    b, n = s.shape
    values, member, bound = _group_top(s.reshape(b // _GROUP, _GROUP, n), _KEEP)
    rows = start + _GROUP * lax.broadcasted_iota(jnp.int32, member.shape, 1) + member
    return values.reshape(-1, n), rows.reshape(-1, n), bound.max(axis=0)


def _top_k(x: jax.Array, k: int):
    """``lax.top_k``, kept a TopK: XLA rewrites it into a full sort (~50x slower on CPU) when a
    consumer reads the sorted values other than as the first k."""
    values, index = lax.top_k(x, k)
    # One barrier per output: XLA's TopK decomposer expects its users to be tuple elements.
    return lax.optimization_barrier(values), lax.optimization_barrier(index)


# ----- inputs ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Inputs:
    """Validated mining inputs: float32 embeddings, and per image / caption a dense int32 code of
    its image id (equal codes = same picture)."""

    img: np.ndarray  # [N, D]
    cap: np.ndarray  # [M, D]
    img_code: np.ndarray  # [N]
    cap_code: np.ndarray  # [M]
    ids_hash: str


def ids_hash(cap_to_img, image_ids) -> str:
    """sha256 of a split's caption->image map ``[M]`` and image ids ``[N]``: identifies the
    dataset (order included) that the lists index into."""
    h = hashlib.sha256(b"itm_jax.mining.ids/1")
    for name, a in (("cap_to_img", cap_to_img), ("image_ids", image_ids)):
        a = np.asarray(a, np.int64)
        h.update(f"{name}:{a.size}:".encode())
        h.update(np.ascontiguousarray(a, "<i8").tobytes())
    return h.hexdigest()


def _prepare(img_emb, cap_emb, cap_to_img, image_ids, h_t: int, h_i: int) -> _Inputs:
    img = np.ascontiguousarray(img_emb, np.float32)
    cap = np.ascontiguousarray(cap_emb, np.float32)
    if img.ndim != 2 or cap.ndim != 2 or img.shape[1] != cap.shape[1]:
        raise ValueError(f"img_emb [N, D] and cap_emb [M, D] with one D; got {img.shape} and "
                         f"{cap.shape}.")
    n, m = len(img), len(cap)
    cap_to_img = np.asarray(cap_to_img)
    if cap_to_img.shape != (m,) or not np.issubdtype(cap_to_img.dtype, np.integer):
        raise ValueError(f"cap_to_img must be an int array [{m}] (one image index per caption); "
                         f"got {cap_to_img.dtype} {cap_to_img.shape}.")
    if m and (cap_to_img.min() < 0 or cap_to_img.max() >= n):
        raise ValueError(f"cap_to_img holds image indices outside [0, {n}).")
    ids = np.arange(n, dtype=np.int64) if image_ids is None else np.asarray(image_ids, np.int64)
    if ids.shape != (n,):
        raise ValueError(f"image_ids must be [{n}] (one id per image); got {ids.shape}.")
    for name, a in (("img_emb", img), ("cap_emb", cap)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} has non-finite values: the teacher's embeddings are broken.")
    if max(n, m) >= 2**31 - 1:
        raise ValueError(f"{n} images / {m} captions do not fit the int32 lists.")
    _, img_code = np.unique(ids, return_inverse=True)
    img_code = img_code.astype(np.int32)
    cap_code = img_code[cap_to_img]
    # Negatives of an image: captions of other pictures; of a caption: images of other pictures.
    pictures = int(img_code.max(initial=-1)) + 1
    caps_of = np.bincount(cap_code, minlength=pictures)
    imgs_of = np.bincount(img_code, minlength=pictures)
    for h, what, negatives in (("h_t", "image", m - caps_of[img_code]),
                               ("h_i", "caption", n - imgs_of[cap_code])):
        k = h_t if h == "h_t" else h_i
        if k < 1:
            raise ValueError(f"{h}={k} must be >= 1.")
        if len(negatives) and negatives.min() < k:
            j = int(negatives.argmin())
            raise ValueError(f"{h}={k} exceeds the {int(negatives[j])} negatives of {what} {j} "
                             f"in a split of {n} images and {m} captions; lower {h}.")
    return _Inputs(img, cap, img_code, cap_code, ids_hash(cap_to_img, ids))


# ----- backends: one chunk of image rows at a time ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Plan:
    """How the images are cut: ``block`` rows per matmul, ``blocks`` blocks per device per chunk,
    over ``devices`` local devices, so a chunk is ``rows = block * blocks * devices`` images."""

    block: int
    blocks: int
    devices: int

    @property
    def rows(self) -> int:
        return self.block * self.blocks * self.devices


# Bytes per device of one chunk's t2i candidates (values and rows, _KEEP/_GROUP of the scores);
# more blocks per chunk mean fewer merges into the running t2i lists.
_CHUNK_BYTES = 2 << 30


def _make_plan(n: int, m: int, block_size: int, chunk_blocks: int | None, devices: int) -> _Plan:
    if block_size % _GROUP or block_size < _GROUP:
        raise ValueError(f"block_size={block_size} must be a positive multiple of {_GROUP}.")
    per_device = max(1, math.ceil(n / (devices * block_size)))
    # As many blocks, the padding spread over them (whole groups of rows).
    block = _GROUP * math.ceil(n / (devices * per_device) / _GROUP)
    candidates = 8 * block * _pad_captions(m, devices) * _KEEP // _GROUP
    blocks = min(per_device, chunk_blocks or max(1, _CHUNK_BYTES // candidates))
    return _Plan(block, blocks, devices)


def _pad_captions(m: int, devices: int) -> int:
    return -(-m // (8 * devices)) * 8 * devices  # the t2i lists are split over the devices


def _scores(img, caps):
    """``[B, M]`` float32 scores ``img @ caps.T`` (full float32 precision on every backend)."""
    return lax.dot_general(img, caps, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST)


def _negatives(s, img_code, img_pad, cap_code):
    """``s [B, M]`` with -inf for positives (same picture) and padding rows. Left unmaterialised:
    XLA fuses it into the group pass that reads it."""
    return jnp.where((img_code[:, None] != cap_code[None, :]) & ~img_pad[:, None], s, -jnp.inf)


def _merge_rows(state_v, state_i, new_v, new_i, k: int):
    """Top ``k`` of ``[state | new]`` per row (the state holds earlier images)."""
    top, pos = _top_k(jnp.concatenate([state_v, new_v], axis=1), k)
    return top, jnp.take_along_axis(jnp.concatenate([state_i, new_i], axis=1), pos, axis=1)


def _device_blocks(x, code, pad, first, caps, cap_code, *, plan: _Plan, k_t: int, h_i: int,
                   mp: int):
    """One device's rows ``[blocks * block, D]``: the top ``k_t`` captions of each row, positives
    included (``k_t`` = h_t + the most captions a picture has; the caller drops them), and per
    caption (padded to ``mp``) the top ``h_i`` of its candidates and the largest dropped score."""

    def block(args):
        xb, cb, pb, start = args
        s = _scores(xb, caps)  # [block, M]
        return _top_k(s, k_t) + _column_candidates(_negatives(s, cb, pb, cap_code), start)

    d, m = x.shape[1], caps.shape[0]
    starts = first[0] + plan.block * jnp.arange(plan.blocks, dtype=jnp.int32)
    i2t_v, i2t_i, cand_v, cand_i, bound = lax.map(block, (
        x.reshape(plan.blocks, plan.block, d), code.reshape(plan.blocks, plan.block),
        pad.reshape(plan.blocks, plan.block), starts))
    flat = lambda a: a.transpose(2, 0, 1).reshape(m, -1)  # [M, blocks * candidates]
    k = min(h_i, flat(cand_v).shape[1])
    top, pos = _top_k(flat(cand_v), k)
    index = jnp.take_along_axis(flat(cand_i), pos, axis=1)
    to_mp = lambda a, v: jnp.pad(a, ((0, mp - m),) + ((0, h_i - k),) * (a.ndim - 1),
                                 constant_values=v)
    rows = plan.blocks * plan.block
    return (i2t_v.reshape(rows, k_t), i2t_i.reshape(rows, k_t), to_mp(top, -jnp.inf)[None],
            to_mp(index, 0)[None], to_mp(bound.max(axis=0), -jnp.inf)[None])


def _device_merge(part_v, part_i, part_b, state_v, state_i, state_b, *, h_i: int, fresh: bool):
    """A device's slice of captions: the running t2i lists with every device's candidates
    ``[devices, captions, h_i]`` (devices in image order, after the state's earlier images;
    ``fresh``: the state is still empty)."""
    flat = lambda a: a.transpose(1, 0, 2).reshape(a.shape[1], -1)
    bound = part_b.max(axis=0)
    if not fresh:
        top, index = _merge_rows(state_v, state_i, flat(part_v), flat(part_i), h_i)
        return top, index, jnp.maximum(state_b, bound)
    if part_v.shape[0] == 1:
        return part_v[0], part_i[0], bound
    top, pos = _top_k(flat(part_v), h_i)
    return top, jnp.take_along_axis(flat(part_i), pos, axis=1), bound


@functools.partial(jax.jit, static_argnames=("mesh", "plan", "k_t", "h_i", "fresh"),
                   donate_argnums=(6, 7, 8))
def _chunk_step(x, code, pad, first, caps, cap_code, state_v, state_i, state_b, *, mesh: Mesh,
                plan: _Plan, k_t: int, h_i: int, fresh: bool):
    """A chunk ``[rows, D]`` (sharded over ``mesh``'s devices, each walking its blocks): its i2t
    candidates and the t2i state ``[Mp, h_i]`` (sharded over captions) with its columns merged
    (``fresh``: the state holds no image yet)."""
    rows, repl = P("data"), P()
    i2t_v, i2t_i, part_v, part_i, part_b = jax.shard_map(
        functools.partial(_device_blocks, plan=plan, k_t=k_t, h_i=h_i, mp=state_v.shape[0]),
        mesh=mesh, in_specs=(rows,) * 4 + (repl,) * 2, out_specs=(rows,) * 5,
    )(x, code, pad, first, caps, cap_code)
    cols = P(None, "data")
    state = jax.shard_map(functools.partial(_device_merge, h_i=h_i, fresh=fresh), mesh=mesh,
                          in_specs=(cols, cols, cols) + (rows,) * 3, out_specs=(rows,) * 3,
                          )(part_v, part_i, part_b, state_v, state_i, state_b)
    return (i2t_v, i2t_i) + state


class _JaxMiner:
    """``backend="jax"``: ``_chunk_step`` on a ``data`` mesh of ``devices``."""

    def __init__(self, x: _Inputs, plan: _Plan, h_t: int, h_i: int, devices):
        self.x, self.plan, self.h_t, self.h_i = x, plan, h_t, h_i
        self.mesh = Mesh(np.asarray(devices), ("data",))
        self.m, self.mp = len(x.cap), _pad_captions(len(x.cap), len(devices))
        repl = NamedSharding(self.mesh, P())
        self.rows = NamedSharding(self.mesh, P("data"))
        self.caps = jax.device_put(x.cap, repl)
        self.cap_code = jax.device_put(x.cap_code, repl)
        # Rows are mined with their positives, dropped afterwards: a picture has at most
        # `positives` captions.
        self.k_t = h_t + int(np.bincount(x.cap_code).max(initial=0))
        self.set_state(np.full((self.m, h_i), -np.inf, np.float32),
                       np.zeros((self.m, h_i), np.int32), np.full((self.m,), -np.inf, np.float32))

    def step(self, start: int, x: np.ndarray, code: np.ndarray):
        """Mines image rows ``[start, start + len(x))`` (at most a chunk); returns their i2t
        ``(values, index)`` and folds their columns into the running t2i lists."""
        n, rows = len(x), self.plan.rows
        first = start + self.plan.block * self.plan.blocks * np.arange(self.plan.devices)
        args = [jax.device_put(a, self.rows) for a in (
            np.pad(x, ((0, rows - n), (0, 0))), np.pad(code, (0, rows - n), constant_values=-1),
            np.arange(rows) >= n, first.astype(np.int32))]
        i2t_v, i2t_i, *self.state = _chunk_step(
            *args, self.caps, self.cap_code, *self.state, mesh=self.mesh, plan=self.plan,
            k_t=self.k_t, h_i=self.h_i, fresh=self.fresh)
        self.fresh = False
        values, index = np.asarray(i2t_v)[:n], np.asarray(i2t_i)[:n]
        return _first_kept(values, index, self.x.cap_code[index] != code[:, None], self.h_t)

    def get_state(self):
        return tuple(np.asarray(a)[:self.m] for a in self.state)

    def set_state(self, values: np.ndarray, index: np.ndarray, bound: np.ndarray):
        pad = self.mp - self.m
        self.fresh = not np.isfinite(values).any()
        self.state = [jax.device_put(a, self.rows) for a in (
            np.pad(values, ((0, pad), (0, 0)), constant_values=-np.inf),
            np.pad(index, ((0, pad), (0, 0))), np.pad(bound, (0, pad), constant_values=-np.inf))]


def _bucket(n: int) -> int:
    return max(8, 1 << (n - 1).bit_length())  # padded sizes: few distinct shapes to compile


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _exact_columns_fn(img, img_code, img_pad, caps, cap_code, *, k: int, block: int):
    """t2i lists ``[F, k]`` of the captions ``caps [F, D]`` over all images ``img [N, D]``
    (blocks of ``block`` rows, each merged whole with ``top_k``)."""

    def step(state, args):
        xb, cb, pb, start = args
        s = _negatives(_scores(xb, caps), cb, pb, cap_code)
        rows = start + lax.broadcasted_iota(jnp.int32, s.T.shape, 1)
        return _merge_rows(*state, s.T, rows, k), None

    f, blocks = caps.shape[0], img.shape[0] // block
    init = (jnp.full((f, k), -jnp.inf, jnp.float32), jnp.zeros((f, k), jnp.int32))
    return lax.scan(step, init, (img.reshape(blocks, block, -1), img_code.reshape(blocks, block),
                                 img_pad.reshape(blocks, block),
                                 block * jnp.arange(blocks, dtype=jnp.int32)))[0]


def _finish_t2i(x: _Inputs, values: np.ndarray, index: np.ndarray, bound: np.ndarray, k: int,
                block: int):
    """The final t2i lists: captions whose dropped scores reach their k-th kept one (``bound``)
    are recomputed over every image; ties ordered by image index."""
    redo = np.flatnonzero(~(bound < values[:, -1]))
    if len(redo):
        f, n = _bucket(len(redo)), len(x.img)
        n_pad = -(-n // block) * block
        caps = np.pad(x.cap[redo], ((0, f - len(redo)), (0, 0)))
        codes = np.pad(x.cap_code[redo], (0, f - len(redo)), constant_values=-1)
        v, i = _exact_columns_fn(np.pad(x.img, ((0, n_pad - n), (0, 0))),
                                 np.pad(x.img_code, (0, n_pad - n), constant_values=-1),
                                 np.arange(n_pad) >= n, caps, codes, k=k, block=block)
        values, index = values.copy(), index.copy()
        values[redo], index[redo] = np.asarray(v)[:len(redo)], np.asarray(i)[:len(redo)]
    return _canonical(values, index)


def _first_kept(values, index, keep, k: int):
    """Per row, the first ``k`` entries where ``keep`` (rows sorted by value), -inf padded."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, order, axis=1)
    v = np.where(kept, np.take_along_axis(values, order, axis=1), -np.inf).astype(np.float32)
    i = np.where(kept, np.take_along_axis(index, order, axis=1), 0).astype(np.int32)
    pad = ((0, 0), (0, k - v.shape[1]))
    return np.pad(v, pad, constant_values=-np.inf), np.pad(i, pad)


def _canonical(values: np.ndarray, index: np.ndarray):
    """Rows sorted by descending value, equal values by ascending index (the t2i candidates and
    faiss order them otherwise)."""
    ties = np.flatnonzero(np.any(values[:, 1:] == values[:, :-1], axis=1))
    if len(ties):
        values, index = values.copy(), index.copy()
        order = np.lexsort((index[ties], -values[ties]), axis=1)
        values[ties] = np.take_along_axis(values[ties], order, axis=1)
        index[ties] = np.take_along_axis(index[ties], order, axis=1)
    return values, index


def _merge_np(state_v, state_i, new_v, new_i, k: int):
    """``_merge_rows`` in NumPy: a stable sort keeps the earlier (lower) index first on ties."""
    v, i = np.concatenate([state_v, new_v], axis=1), np.concatenate([state_i, new_i], axis=1)
    order = np.argsort(-v, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(v, order, axis=1), np.take_along_axis(i, order, axis=1)


class _FaissMiner:
    """``backend="faiss"``: per chunk, ``IndexFlatIP`` over the captions searched by the chunk's
    images (i2t) and over the chunk's images searched by every caption (t2i); each search asks
    for ``k`` plus the most positives any query can have, and drops the positives."""

    def __init__(self, x: _Inputs, h_t: int, h_i: int):
        try:
            import faiss
        except ImportError:
            raise ValueError("backend='faiss' needs faiss: pip install faiss-cpu "
                             "(or itm_jax[bench]); backend='jax' needs nothing extra.") from None
        self.faiss, self.x, self.h_t, self.h_i = faiss, x, h_t, h_i
        self.caps = faiss.IndexFlatIP(x.cap.shape[1])
        self.caps.add(x.cap)
        pictures = int(x.img_code.max(initial=-1)) + 1
        self.extra_t = int(np.bincount(x.cap_code, minlength=pictures).max(initial=0))
        self.extra_i = int(np.bincount(x.img_code, minlength=pictures).max(initial=0))
        self.state = (np.full((len(x.cap), h_i), -np.inf, np.float32),
                      np.zeros((len(x.cap), h_i), np.int32),
                      np.full((len(x.cap),), -np.inf, np.float32))  # exact: no bound

    def step(self, start: int, img: np.ndarray, code: np.ndarray):
        x = self.x
        values, index = self.caps.search(img, min(self.h_t + self.extra_t, len(x.cap)))
        i2t = _canonical(*_first_kept(values, index, x.cap_code[index] != code[:, None], self.h_t))
        chunk = self.faiss.IndexFlatIP(img.shape[1])
        chunk.add(img)
        values, index = chunk.search(x.cap, min(self.h_i + self.extra_i, len(img)))
        part = _first_kept(values, index + start, code[index] != x.cap_code[:, None], self.h_i)
        self.state = _merge_np(*self.state[:2], *_canonical(*part), self.h_i) + self.state[2:]
        return i2t

    def get_state(self):
        return self.state

    def set_state(self, values: np.ndarray, index: np.ndarray, bound: np.ndarray):
        self.state = (values, index, bound)


# ----- the job ---------------------------------------------------------------------------------
class _Job:
    """Chunks of image rows and the backend that mines them; process ``p`` of ``P`` takes a
    contiguous range of chunks."""

    def __init__(self, x: _Inputs, *, h_t: int, h_i: int, backend: str, block_size: int,
                 chunk_blocks: int | None, devices):
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend={backend!r}; valid: {', '.join(BACKENDS)}.")
        devices = list(devices) if devices is not None else jax.local_devices()
        n = len(x.img)
        self.x, self.h_t, self.h_i, self.backend = x, h_t, h_i, backend
        self.plan = _make_plan(n, len(x.cap), block_size, chunk_blocks,
                               len(devices) if backend == "jax" else 1)
        self.chunks = [(s, min(s + self.plan.rows, n)) for s in range(0, n, self.plan.rows)]
        self.miner = (_JaxMiner(x, self.plan, h_t, h_i, devices) if backend == "jax"
                      else _FaissMiner(x, h_t, h_i))

    def share(self, process: int, processes: int) -> range:
        """Indices of the chunks that ``process`` mines."""
        c = len(self.chunks)
        return range(process * c // processes, (process + 1) * c // processes)

    def fingerprint(self, processes: int) -> str:
        """sha256 of everything the files depend on: a work directory of another job is stale."""
        h = hashlib.sha256(json.dumps(dict(
            format=FORMAT, backend=self.backend, h_t=self.h_t, h_i=self.h_i, processes=processes,
            plan=dataclasses.asdict(self.plan), ids=self.x.ids_hash)).encode())
        for a in (self.x.img, self.x.cap):
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()

    def run(self, chunks, *, done=None, progress: bool = True):
        """Mines ``chunks`` (indices) in order; ``done(c, values, index)`` after each one."""
        total = sum(math.ceil((self.chunks[c][1] - self.chunks[c][0]) / self.plan.block)
                    for c in chunks)
        with _progress_bar(total, progress) as bar:
            for c in chunks:
                start, stop = self.chunks[c]
                values, index = self.miner.step(start, self.x.img[start:stop],
                                                self.x.img_code[start:stop])
                if done is not None:
                    done(c, values, index)
                bar.update(math.ceil((stop - start) / self.plan.block))


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="block", desc="mining", dynamic_ncols=True,
                disable=not enabled or jax.process_index() != 0)


def mine_arrays(img_emb, cap_emb, cap_to_img, *, image_ids=None, h_t: int = 300, h_i: int = 60,
                backend: str = "jax", block_size: int = 512, chunk_blocks: int | None = None,
                devices=None, progress: bool = False) -> Mined:
    """The mined lists of embeddings, in memory (one process; ``mine`` writes resumable files).

    Args:
      img_emb: ``[N, D]`` image embeddings (L2-normalised for cosine scores).
      cap_emb: ``[M, D]`` caption embeddings.
      cap_to_img: int ``[M]``, the image index of each caption.
      image_ids: int ``[N]`` image ids; equal ids are one picture (positives of each other's
        captions). Default: the index.
      h_t, h_i: list lengths; every image needs ``h_t`` negative captions and every caption
        ``h_i`` negative images (``ValueError`` otherwise).
      backend: ``"jax"`` or ``"faiss"`` (optional dependency).
      block_size: image rows per score block (a multiple of 32); a device holds
        ``[block_size, M]`` float32 scores at a time (on CPU, 512 keeps the passes over a block
        in cache better than larger blocks).
      chunk_blocks: blocks per device between merges into the t2i lists (default: as many as fit
        2 GiB of candidates).
      devices: the devices of the ``data`` mesh axis (default: this process's devices).
      progress: show a tqdm bar over the blocks.

    Returns:
      ``Mined(i2t [N, h_t], t2i [M, h_i], i2t_scores, t2i_scores)``.
    """
    x = _prepare(img_emb, cap_emb, cap_to_img, image_ids, h_t, h_i)
    job = _Job(x, h_t=h_t, h_i=h_i, backend=backend, block_size=block_size,
               chunk_blocks=chunk_blocks, devices=devices)
    parts = []
    job.run(range(len(job.chunks)), done=lambda c, v, i: parts.append((v, i)),
            progress=progress)
    i2t_v, i2t_i = _concat(parts, h_t)
    t2i_v, t2i_i = _finish_t2i(x, *job.miner.get_state(), h_i, job.plan.block)
    return Mined(i2t_i, t2i_i, i2t_v, t2i_v)


def _concat(parts, k: int):
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
    return (np.concatenate([v for v, _ in parts]).astype(np.float32),
            np.concatenate([i for _, i in parts]).astype(np.int32))


# ----- files -----------------------------------------------------------------------------------
def _atomic_write(path: pathlib.Path, write) -> None:
    """``write(file)`` to a temporary file in ``path``'s directory, then renamed over ``path``: a
    reader (or a resumed job) sees the old file or the whole new one, never a partial one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _save_npz(path: pathlib.Path, meta: Mapping[str, Any], **arrays) -> None:
    _atomic_write(path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **arrays))


def _load_npz(path: pathlib.Path, fingerprint: str):
    """``(meta, arrays)`` of a work file of this job, or None (missing, partial, another job)."""
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return (meta, arrays) if meta.get("fingerprint") == fingerprint else None


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _chunk_path(work: pathlib.Path, c: int) -> pathlib.Path:
    return work / f"chunk{c:06d}.npz"


def _state_path(work: pathlib.Path, process: int) -> pathlib.Path:
    return work / f"t2i.process{process:04d}.npz"


def _save_chunk(work: pathlib.Path, process: int, c: int, done: int, fingerprint: str,
                values: np.ndarray, index: np.ndarray, state) -> None:
    """Persists chunk ``c``'s i2t rows, then this process's t2i lists with ``done`` chunks folded
    in; a job killed between the two redoes chunk ``c``."""
    meta = {"fingerprint": fingerprint, "chunk": c}
    _save_npz(_chunk_path(work, c), meta, values=values, index=index)
    _save_npz(_state_path(work, process), {"fingerprint": fingerprint, "done": done},
              values=state[0], index=state[1], bound=state[2])


def _resume(work: pathlib.Path, process: int, fingerprint: str, job: _Job, share) -> int:
    """Chunks of ``share`` already mined by an earlier run of this job (their t2i lists are put
    back into the miner); 0 without a usable state."""
    saved = _load_npz(_state_path(work, process), fingerprint)
    if saved is None:
        return 0
    meta, arrays = saved
    done = int(meta["done"])
    if not all(_chunk_path(work, c).exists() for c in share[:done]):
        return 0
    job.miner.set_state(arrays["values"], arrays["index"], arrays["bound"])
    return done


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _finished(out_dir: pathlib.Path, fingerprint: str) -> dict | None:
    """The manifest of an earlier run of this very job whose files are intact, else None."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
        intact = all(_sha256(out_dir / f["name"]) == f["sha256"]
                     for f in manifest["files"].values())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if intact and manifest.get("job") == fingerprint else None


def mine(img_emb, cap_emb, cap_to_img, out_dir, *, image_ids=None, h_t: int = 300, h_i: int = 60,
         backend: str = "jax", block_size: int = 512, chunk_blocks: int | None = None,
         devices=None, metadata: Mapping[str, Any] | None = None, keep_work: bool = False,
         progress: bool = True) -> dict:
    """Mines the lists of ``mine_arrays`` into ``out_dir``, resumably; returns the manifest.

    Every process of a multi-process job calls this with the same arguments: process ``p``
    mines its range of chunks on its local devices and saves each chunk (``out_dir/work``);
    process 0 then merges them into ``i2t.npy [N, h_t]``, ``t2i.npy [M, h_i]`` (int32),
    ``i2t_scores.npy``, ``t2i_scores.npy`` (float32) and ``manifest.json``. A job killed at any
    point resumes from its saved chunks (when run again with the same inputs, devices and
    processes; otherwise it starts over) and writes byte-identical lists; a finished job is not
    re-run. ``metadata`` (the teacher checkpoint, config hash, dataset name) is stored in the
    manifest, its ``"dataset"`` entries next to the sizes and the ids hash. ``keep_work`` keeps
    the work files. Other arguments: as ``mine_arrays``.
    """
    out_dir = pathlib.Path(out_dir)
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    x = _prepare(img_emb, cap_emb, cap_to_img, image_ids, h_t, h_i)
    job = _Job(x, h_t=h_t, h_i=h_i, backend=backend, block_size=block_size,
               chunk_blocks=chunk_blocks, devices=devices)
    process, processes = jax.process_index(), jax.process_count()
    fingerprint = job.fingerprint(processes)
    manifest = _finished(out_dir, fingerprint)
    if manifest is not None:
        return manifest
    share = job.share(process, processes)
    done = _resume(work, process, fingerprint, job, share)

    def save(c, values, index):
        _save_chunk(work, process, c, c - share.start + 1, fingerprint, values, index,
                    job.miner.get_state())

    job.run(share[done:], done=save, progress=progress)
    _barrier("itm_jax.mining.chunks")
    if process == 0:
        _finalize(out_dir, work, job, fingerprint, processes, dict(metadata or {}))
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    _barrier("itm_jax.mining.final")
    return json.loads((out_dir / MANIFEST).read_text())


def _finalize(out_dir: pathlib.Path, work: pathlib.Path, job: _Job, fingerprint: str,
              processes: int, metadata: dict) -> None:
    """Process 0: the chunks and the processes' t2i lists into the final files, manifest last."""
    parts = []
    for c in range(len(job.chunks)):
        saved = _load_npz(_chunk_path(work, c), fingerprint)
        if saved is None:
            raise RuntimeError(f"{_chunk_path(work, c)} is missing or from another job: a "
                               "process did not finish its chunks; run the job again to resume.")
        parts.append((saved[1]["values"], saved[1]["index"]))
    i2t_v, i2t_i = _concat(parts, job.h_t)
    t2i = None
    for p in range(processes):
        saved = _load_npz(_state_path(work, p), fingerprint)
        if saved is None or saved[0]["done"] != len(job.share(p, processes)):
            raise RuntimeError(f"Process {p} did not finish its chunks ({_state_path(work, p)}); "
                               "run the job again to resume.")
        state = (saved[1]["values"], saved[1]["index"], saved[1]["bound"])
        t2i = state if t2i is None else (
            _merge_np(*t2i[:2], *state[:2], job.h_i) + (np.maximum(t2i[2], state[2]),))
    t2i_v, t2i_i = _finish_t2i(job.x, *t2i, job.h_i, job.plan.block)
    arrays = {"i2t": i2t_i, "t2i": t2i_i.astype(np.int32), "i2t_scores": i2t_v,
              "t2i_scores": t2i_v.astype(np.float32)}
    files = {}
    for key, a in arrays.items():
        path = out_dir / FILES[key]
        _atomic_write(path, lambda f, a=a: np.save(f, a, allow_pickle=False))
        files[key] = {"name": FILES[key], "shape": list(a.shape), "dtype": str(a.dtype),
                      "sha256": _sha256(path)}
    x = job.x
    manifest = {
        **metadata,
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "job": fingerprint,
        "backend": job.backend,
        "h_t": job.h_t,
        "h_i": job.h_i,
        "dataset": {**metadata.get("dataset", {}), "num_images": len(x.img),
                    "num_captions": len(x.cap), "embedding_dim": int(x.img.shape[1]),
                    "ids_sha256": x.ids_hash},
        "plan": {"block_size": job.plan.block, "chunk_blocks": job.plan.blocks,
                 "devices": job.plan.devices, "processes": processes,
                 "chunks": len(job.chunks)},
        "files": files,
    }
    _atomic_write(out_dir / MANIFEST,
                  lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))


def load_mined(directory, source, *, h_t: int | None = None, h_i: int | None = None):
    """The lists of ``mine`` for the training split ``source``: ``(i2t [N, h_t], t2i [M, h_i],
    manifest)``, the first ``h_t`` / ``h_i`` columns (default: all that were mined).

    ``ValueError`` (naming the problem and the fix) when the manifest is missing or corrupted,
    the lists were mined on another dataset (sizes, caption->image map or image ids differ),
    fewer than ``h_t`` / ``h_i`` entries were mined, or a list file is missing or altered.
    """
    directory = pathlib.Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        hint = (f" (did you mean {directory / 'mining'}?)"
                if (directory / "mining" / MANIFEST).exists() else "")
        raise ValueError(f"No mined lists in {directory}{hint}: {MANIFEST} is missing (the "
                         f"mining job did not finish); {_RERUN}.")
    try:
        manifest = json.loads(path.read_text())
        dataset, files = manifest["dataset"], manifest["files"]
        mined_n, mined_m = int(dataset["num_images"]), int(dataset["num_captions"])
        mined_t, mined_i = int(manifest["h_t"]), int(manifest["h_i"])
        mined_ids = dataset["ids_sha256"]
        expected = {k: (files[k]["name"], files[k]["sha256"]) for k in ("i2t", "t2i")}
        if manifest["format"] != FORMAT:
            raise ValueError(f"format {manifest['format']!r}, expected {FORMAT!r}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is corrupted or unreadable ({e}); {_RERUN}.") from None
    n, m = source.num_images, source.num_captions
    if (mined_n, mined_m) != (n, m):
        raise ValueError(f"{directory} was mined on {mined_n} images / {mined_m} captions, but "
                         f"this training split has {n} / {m}: another dataset; {_RERUN}.")
    if mined_ids != ids_hash(source.cap_to_img, source_image_ids(source)):
        raise ValueError(f"{directory} was mined on another caption->image map or other image ids "
                         f"than this training split's (another dataset, split or order); {_RERUN}.")
    h_t, h_i = mined_t if h_t is None else h_t, mined_i if h_i is None else h_i
    for name, want, have in (("h_t", h_t, mined_t), ("h_i", h_i, mined_i)):
        if not 0 < want <= have:
            raise ValueError(f"{name}={want} must be in [1, {have}] ({directory} holds {have} "
                             f"entries per list); lower {name} or re-run itm-mine with "
                             f"--{name}={want}.")
    lists = {}
    for key, shape in (("i2t", (n, mined_t)), ("t2i", (m, mined_i))):
        name, sha256 = expected[key]
        file = directory / name
        if not file.exists():
            raise ValueError(f"{file} is missing; {_RERUN}.")
        try:
            a = np.load(file, allow_pickle=False) if _sha256(file) == sha256 else None
        except (OSError, ValueError) as e:
            raise ValueError(f"{file} is unreadable ({e}); {_RERUN}.") from None
        if a is None or a.shape != shape or a.dtype != np.int32:
            raise ValueError(f"{file} is truncated or altered (its sha256 or shape does not "
                             f"match {path}); {_RERUN}.")
        lists[key] = a
    return (np.ascontiguousarray(lists["i2t"][:, :h_t]),
            np.ascontiguousarray(lists["t2i"][:, :h_i]), manifest)
