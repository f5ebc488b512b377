"""The mining kernels of AOQ round 2: every image's and caption's hardest negatives (Chen, Deng
and Luo, "Adaptive Offline Quintuplet Loss for Image-Text Matching", ECCV 2020, Sec. 3.2).

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

Algorithm (``backend="jax"``): one jitted program per *step*, one block of ``block_size`` image
rows on each device of a ``data`` mesh axis (``shard_map``). Each device computes its
``[block, M]`` float32 score block once, for both directions:

- i2t: ``lax.top_k`` of the block's rows (positives masked to -inf);
- t2i: the block's columns are cut into groups of 32 images, each keeping its 5 best scores and
  the 6th as a bound (``_column_candidates``); each caption's candidates are reduced with
  ``lax.top_k`` and merged into a running ``[M, H_i]`` list (sharded over captions), earlier
  images first. A caption whose final H_i-th score does not beat every bound of its column is
  recomputed exactly (rare; see ``_GROUP``), so the lists are exact.

XLA's ``top_k`` on CPU is a serial heap (~4 ns per score, as much as the matmul that made the
score); the group pass hands it only a sixth of the t2i scores. Memory per device is the score
block, ``O(block_size * M)``, plus the ``[M, H_i]`` lists; the ``[N, M]`` matrix never exists.
A step is the unit the resumable job (``itm_jax.aoq.job``) saves: each step also reports which
t2i entries it put into the running lists (``new``), so the job saves that change only.

``backend="faiss"`` (``pip install itm_jax[bench]``) mines the same steps with ``IndexFlatIP``
searches (k plus the most positives a query can have; positives then dropped), as a cross-check.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BACKENDS = ("jax", "faiss")


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
class Inputs:
    """Validated mining inputs: float32 embeddings, and per image / caption a dense int32 code of
    its image id (equal codes = same picture)."""

    img: np.ndarray  # [N, D]
    cap: np.ndarray  # [M, D]
    img_code: np.ndarray  # [N]
    cap_code: np.ndarray  # [M]


def prepare(img_emb, cap_emb, cap_to_img, image_ids, h_t: int, h_i: int) -> Inputs:
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
    return Inputs(img, cap, img_code, cap_code)


# ----- backends: one step (a block of image rows per device) at a time -------------------------
@dataclasses.dataclass(frozen=True)
class _Plan:
    """How the images are cut: ``block`` rows per matmul, one block on each of ``devices`` local
    devices per step, so a step is ``rows = block * devices`` images."""

    block: int
    devices: int

    @property
    def rows(self) -> int:
        return self.block * self.devices


def _make_plan(n: int, block_size: int, devices: int) -> _Plan:
    if block_size % _GROUP or block_size < _GROUP:
        raise ValueError(f"block_size={block_size} must be a positive multiple of {_GROUP}.")
    steps = max(1, math.ceil(n / (devices * block_size)))
    # As many steps, the padding spread over them (whole groups of rows).
    return _Plan(_GROUP * math.ceil(n / (devices * steps) / _GROUP), devices)


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


def _device_block(x, code, pad, first, caps, cap_code, *, k_t: int, h_i: int, mp: int):
    """One device's block of rows ``[block, D]``: the top ``k_t`` captions of each row, positives
    included (``k_t`` = h_t + the most captions a picture has; the caller drops them), and per
    caption (padded to ``mp``) the top ``h_i`` of its candidates and the largest dropped score."""
    m = caps.shape[0]
    s = _scores(x, caps)  # [block, M]
    i2t_v, i2t_i = _top_k(s, k_t)
    cand_v, cand_i, bound = _column_candidates(_negatives(s, code, pad, cap_code), first[0])
    k = min(h_i, cand_v.shape[0])
    top, pos = _top_k(cand_v.T, k)  # [M, k]
    index = jnp.take_along_axis(cand_i.T, pos, axis=1)
    to_mp = lambda a, v: jnp.pad(a, ((0, mp - m),) + ((0, h_i - k),) * (a.ndim - 1),
                                 constant_values=v)
    return (i2t_v, i2t_i, to_mp(top, -jnp.inf)[None], to_mp(index, 0)[None],
            to_mp(bound, -jnp.inf)[None])


def _device_merge(part_v, part_i, part_b, state_v, state_i, state_b, *, h_i: int, fresh: bool):
    """A device's slice of captions: the running t2i lists with every device's candidates
    ``[devices, captions, h_i]`` (devices in image order, after the state's earlier images;
    ``fresh``: the state is still empty). Also returns ``new [captions, h_i]``: the entries that
    came from the candidates, not from the state."""
    flat = lambda a: a.transpose(1, 0, 2).reshape(a.shape[1], -1)
    bound = part_b.max(axis=0)
    every = jnp.ones(state_v.shape, bool)
    if not fresh:
        # The state's survivors are its first entries, in order (top_k is stable); the rest
        # came from this step's candidates, which is all a resumed job needs to redo the merge.
        top, pos = _top_k(jnp.concatenate([state_v, flat(part_v)], axis=1), h_i)
        index = jnp.take_along_axis(jnp.concatenate([state_i, flat(part_i)], axis=1), pos, axis=1)
        return top, index, jnp.maximum(state_b, bound), pos >= h_i
    if part_v.shape[0] == 1:
        return part_v[0], part_i[0], bound, every
    top, pos = _top_k(flat(part_v), h_i)
    return top, jnp.take_along_axis(flat(part_i), pos, axis=1), bound, every


@functools.partial(jax.jit, static_argnames=("mesh", "k_t", "h_i", "fresh"),
                   donate_argnums=(6, 7, 8))
def _step(x, code, pad, first, caps, cap_code, state_v, state_i, state_b, *, mesh: Mesh,
          k_t: int, h_i: int, fresh: bool):
    """A step's rows ``[devices * block, D]`` (a block per device of ``mesh``): their i2t
    candidates and the t2i state ``[Mp, h_i]`` (sharded over captions) with their columns
    merged, and which state entries are new (``fresh``: the state holds no image yet)."""
    rows, repl = P("data"), P()
    i2t_v, i2t_i, part_v, part_i, part_b = jax.shard_map(
        functools.partial(_device_block, k_t=k_t, h_i=h_i, mp=state_v.shape[0]),
        mesh=mesh, in_specs=(rows,) * 4 + (repl,) * 2, out_specs=(rows,) * 5,
    )(x, code, pad, first, caps, cap_code)
    cols = P(None, "data")
    state = jax.shard_map(functools.partial(_device_merge, h_i=h_i, fresh=fresh), mesh=mesh,
                          in_specs=(cols, cols, cols) + (rows,) * 3, out_specs=(rows,) * 4,
                          )(part_v, part_i, part_b, state_v, state_i, state_b)
    return (i2t_v, i2t_i) + state


class _JaxMiner:
    """``backend="jax"``: ``_step`` on a ``data`` mesh of ``devices``."""

    def __init__(self, x: Inputs, plan: _Plan, h_t: int, h_i: int, devices):
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
        self.set_state(*empty_state(self.m, h_i), fresh=True)

    def step(self, start: int, x: np.ndarray, code: np.ndarray):
        """Mines image rows ``[start, start + len(x))`` (at most a step); returns their i2t
        ``(values, index)``, folds their columns into the running t2i lists and returns which
        entries of those are new (a ``[M, h_i]`` bool array, left on the device)."""
        n, rows = len(x), self.plan.rows
        first = start + self.plan.block * np.arange(self.plan.devices)
        args = [jax.device_put(a, self.rows) for a in (
            np.pad(x, ((0, rows - n), (0, 0))), np.pad(code, (0, rows - n), constant_values=-1),
            np.arange(rows) >= n, first.astype(np.int32))]
        i2t_v, i2t_i, *self.state, new = _step(
            *args, self.caps, self.cap_code, *self.state, mesh=self.mesh, k_t=self.k_t,
            h_i=self.h_i, fresh=self.fresh)
        self.fresh = False
        values, index = np.asarray(i2t_v)[:n], np.asarray(i2t_i)[:n]
        i2t = _first_kept(values, index, self.x.cap_code[index] != code[:, None], self.h_t)
        return i2t + (new[:self.m],)

    def get_state(self):
        return tuple(np.asarray(a)[:self.m] for a in self.state)

    def set_state(self, values: np.ndarray, index: np.ndarray, bound: np.ndarray, *,
                  fresh: bool):
        """The running t2i lists ``[M, h_i]`` and bounds ``[M]`` (``fresh``: before any step)."""
        pad = self.mp - self.m
        self.fresh = fresh
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


def _finish_t2i(x: Inputs, values: np.ndarray, index: np.ndarray, bound: np.ndarray, k: int,
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


def merge_np(state_v, state_i, new_v, new_i, k: int):
    """``_merge_rows`` in NumPy: a stable sort keeps the earlier (lower) index first on ties.
    Returns ``(values, index, new)``, ``new`` marking the entries that came from ``new_*``."""
    v, i = np.concatenate([state_v, new_v], axis=1), np.concatenate([state_i, new_i], axis=1)
    order = np.argsort(-v, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(v, order, axis=1), np.take_along_axis(i, order, axis=1),
            order >= state_v.shape[1])


def empty_state(m: int, h_i: int):
    """The t2i lists before any image: values -inf, index 0 ``[m, h_i]``, bounds -inf ``[m]``."""
    return (np.full((m, h_i), -np.inf, np.float32), np.zeros((m, h_i), np.int32),
            np.full((m,), -np.inf, np.float32))


class _FaissMiner:
    """``backend="faiss"``: per step, ``IndexFlatIP`` over the captions searched by the step's
    images (i2t) and over the step's images searched by every caption (t2i); each search asks
    for ``k`` plus the most positives any query can have, and drops the positives."""

    def __init__(self, x: Inputs, h_t: int, h_i: int):
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
        self.state = empty_state(len(x.cap), h_i)  # exact: the bounds stay -inf

    def step(self, start: int, img: np.ndarray, code: np.ndarray):
        x = self.x
        values, index = self.caps.search(img, min(self.h_t + self.extra_t, len(x.cap)))
        i2t = _canonical(*_first_kept(values, index, x.cap_code[index] != code[:, None], self.h_t))
        step = self.faiss.IndexFlatIP(img.shape[1])
        step.add(img)
        values, index = step.search(x.cap, min(self.h_i + self.extra_i, len(img)))
        part = _first_kept(values, index + start, code[index] != x.cap_code[:, None], self.h_i)
        *lists, new = merge_np(*self.state[:2], *_canonical(*part), self.h_i)
        self.state = (*lists, self.state[2])
        return i2t + (new,)

    def get_state(self):
        return self.state

    def set_state(self, values: np.ndarray, index: np.ndarray, bound: np.ndarray, *,
                  fresh: bool):
        del fresh  # the merge is the same on an empty state
        self.state = (values, index, bound)


# ----- the steps ---------------------------------------------------------------------------
class Miner:
    """Steps of image rows (a block per device) and the backend that mines them; process ``p`` of
    ``P`` takes a contiguous range of steps.

    Attributes:
      x: the inputs; plan: the blocks; steps: ``[(start, stop)]`` image rows of each step;
      engine: the backend's miner, holding the running t2i lists (``get_state`` /
      ``set_state``).
    """

    def __init__(self, x: Inputs, *, h_t: int, h_i: int, backend: str, block_size: int,
                 devices):
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend={backend!r}; valid: {', '.join(BACKENDS)}.")
        devices = list(devices) if devices is not None else jax.local_devices()
        n = len(x.img)
        self.x, self.h_t, self.h_i, self.backend = x, h_t, h_i, backend
        self.plan = _make_plan(n, block_size, len(devices) if backend == "jax" else 1)
        self.steps = [(s, min(s + self.plan.rows, n)) for s in range(0, n, self.plan.rows)]
        self.engine = (_JaxMiner(x, self.plan, h_t, h_i, devices) if backend == "jax"
                       else _FaissMiner(x, h_t, h_i))

    def share(self, process: int, processes: int) -> range:
        """Indices of the steps that ``process`` mines."""
        c = len(self.steps)
        return range(process * c // processes, (process + 1) * c // processes)

    def run(self, steps, *, done=None, progress: bool = True):
        """Mines ``steps`` (indices) in order; ``done(c, values, index, new)`` after each one:
        the step's i2t rows and the ``[M, h_i]`` mask of the t2i entries it added."""
        total = sum(math.ceil((self.steps[c][1] - self.steps[c][0]) / self.plan.block)
                    for c in steps)
        with _progress_bar(total, progress) as bar:
            for c in steps:
                start, stop = self.steps[c]
                values, index, new = self.engine.step(start, self.x.img[start:stop],
                                                      self.x.img_code[start:stop])
                if done is not None:
                    done(c, values, index, new)
                bar.update(math.ceil((stop - start) / self.plan.block))

    def finish(self, i2t_parts, t2i_state) -> Mined:
        """The lists from the steps' i2t rows ``[(values, index)]`` (in order) and the t2i state
        ``(values, index, bound)`` after every step."""
        i2t_v, i2t_i = _concat(i2t_parts, self.h_t)
        t2i_v, t2i_i = _finish_t2i(self.x, *t2i_state, self.h_i, self.plan.block)
        return Mined(i2t_i, t2i_i.astype(np.int32), i2t_v, t2i_v.astype(np.float32))


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="block", desc="mining", dynamic_ncols=True,
                disable=not enabled or jax.process_index() != 0)


def mine_arrays(img_emb, cap_emb, cap_to_img, *, image_ids=None, h_t: int = 300, h_i: int = 60,
                backend: str = "jax", block_size: int = 512, devices=None,
                progress: bool = False) -> Mined:
    """The mined lists of embeddings, in memory (one process; ``itm_jax.aoq.job.mine`` writes
    resumable files).

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
      devices: the devices of the ``data`` mesh axis (default: this process's devices).
      progress: show a tqdm bar over the blocks.

    Returns:
      ``Mined(i2t [N, h_t], t2i [M, h_i], i2t_scores, t2i_scores)``.
    """
    x = prepare(img_emb, cap_emb, cap_to_img, image_ids, h_t, h_i)
    miner = Miner(x, h_t=h_t, h_i=h_i, backend=backend, block_size=block_size, devices=devices)
    parts = []
    miner.run(range(len(miner.steps)), done=lambda c, v, i, new: parts.append((v, i)),
              progress=progress)
    return miner.finish(parts, miner.engine.get_state())


def _concat(parts, k: int):
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
    return (np.concatenate([v for v, _ in parts]).astype(np.float32),
            np.concatenate([i for _, i in parts]).astype(np.int32))
