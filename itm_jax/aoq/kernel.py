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
scores are listed by ascending index. A set model (SCAN, BFAN) passes its sets and its
``scorer`` instead, and every score block is its attention score (``itm_jax.scoring``); the
lists are then built from those blocks exactly as below. The authors store H_t=2000 / H_i=400 and sample from the
first 300 / 60; ``h_t`` and ``h_i`` are parameters here.

Algorithm (``backend="jax"``): each device of a ``data`` mesh axis takes a contiguous range of
the images and walks it in blocks of ``block_size`` rows, one block per *step* on every device at
once (one jitted program, ``shard_map``, no communication). Each device computes its
``[block, M]`` float32 score block once, for both directions:

- i2t: ``lax.top_k`` of the block's rows (positives masked to -inf);
- t2i: the block's columns are cut into groups of 32 images, each keeping its 5 best scores and
  the 6th as a bound (``_column_candidates``); the candidates are merged with one ``lax.top_k``
  into the device's own running ``[M, H_i]`` lists (its earlier images first). At the end the
  devices' lists are merged in image order (``merge_lists``), as processes' lists are. A caption
  whose final H_i-th score does not beat every bound of its column is recomputed exactly (rare;
  see ``_GROUP``), so the lists are exact.

Ties are broken by the order images are seen (earlier blocks, then a block's candidates in
order), the same on any number of devices or processes: every device's blocks follow the
previous device's. XLA's ``top_k`` on CPU is a serial heap (~4 ns per score, as much as the
matmul that made the score); the group pass hands it only a sixth of the t2i scores, and each
step merges them into the lists in a single ``top_k``. Memory per device is the score block,
``O(block_size * M)``, plus its ``[M, H_i]`` lists; the ``[N, M]`` matrix never exists. A step is
the unit the resumable job (``itm_jax.aoq.job``) saves: each step also reports which entries of
each device's lists it put in (``new``), so the job saves that change only.

``backend="faiss"`` (``pip install itm_jax[bench]``) mines the same steps with ``IndexFlatIP``
searches (k plus the most positives a query can have; positives then dropped), as a cross-check.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from itm_jax.scoring import DotScorer, rows, take

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
    """Validated mining inputs: float32 embeddings (or a set model's sets), the scorer that
    compares them, and per image / caption a dense int32 code of its image id (equal codes =
    same picture)."""

    img: Any  # [N, D]; sets: regions [N, R, D]
    cap: Any  # [M, D]; sets: {"words": [M, L, D], "length": [M]}
    img_code: np.ndarray  # [N]
    cap_code: np.ndarray  # [M]
    scorer: Any = DotScorer()


def _contiguous(tree):
    return jax.tree.map(lambda a: np.ascontiguousarray(
        a, np.float32 if np.issubdtype(np.asarray(a).dtype, np.floating) else np.int32), tree)


def prepare(img_emb, cap_emb, cap_to_img, image_ids, h_t: int, h_i: int,
            scorer=None) -> Inputs:
    scorer = DotScorer() if scorer is None else scorer
    img, cap = _contiguous(img_emb), _contiguous(cap_emb)
    if isinstance(scorer, DotScorer):
        if img.ndim != 2 or cap.ndim != 2 or img.shape[1] != cap.shape[1]:
            raise ValueError(f"img_emb [N, D] and cap_emb [M, D] with one D; got {img.shape} and "
                             f"{cap.shape}.")
    else:
        scorer(take(img, slice(0, 1)), take(cap, slice(0, 1)))  # the scorer checks the shapes
    n, m = rows(img), rows(cap)
    cap_to_img = np.asarray(cap_to_img)
    if cap_to_img.shape != (m,) or not np.issubdtype(cap_to_img.dtype, np.integer):
        raise ValueError(f"cap_to_img must be an int array [{m}] (one image index per caption); "
                         f"got {cap_to_img.dtype} {cap_to_img.shape}.")
    if m and (cap_to_img.min() < 0 or cap_to_img.max() >= n):
        raise ValueError(f"cap_to_img holds image indices outside [0, {n}).")
    ids = np.arange(n, dtype=np.int64) if image_ids is None else np.asarray(image_ids, np.int64)
    if ids.shape != (n,):
        raise ValueError(f"image_ids must be [{n}] (one id per image); got {ids.shape}.")
    for name, tree in (("img_emb", img), ("cap_emb", cap)):
        if not all(np.isfinite(a).all() for a in jax.tree.leaves(tree)):
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
    return Inputs(img, cap, img_code, cap_code, scorer)


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


def _scores(scorer, img, caps):
    """``[B, M]`` float32 scores: ``img @ caps.T`` (full float32 precision on every backend), or
    a set model's scorer (attention, itself computed in blocks of pairs)."""
    if isinstance(scorer, DotScorer):
        return lax.dot_general(img, caps, (((1,), (1,)), ((), ())),
                               precision=lax.Precision.HIGHEST)
    return scorer(img, caps).astype(jnp.float32)


def _negatives(s, img_code, img_pad, cap_code):
    """``s [B, M]`` with -inf for positives (same picture) and padding rows. Left unmaterialised:
    XLA fuses it into the group pass that reads it."""
    return jnp.where((img_code[:, None] != cap_code[None, :]) & ~img_pad[:, None], s, -jnp.inf)


def _merge_rows(state_v, state_i, new_v, new_i, k: int):
    """Top ``k`` of ``[state | new]`` per row (the state holds earlier images) and its positions
    in ``[state | new]``: the state's survivors are its first entries, in order (``top_k`` is
    stable)."""
    top, pos = _top_k(jnp.concatenate([state_v, new_v], axis=1), k)
    return top, jnp.take_along_axis(jnp.concatenate([state_i, new_i], axis=1), pos, axis=1), pos


def _device_step(x, code, pad, first, caps, cap_code, state_v, state_i, state_b, *, scorer,
                 k_t: int, h_i: int):
    """One device's block of rows ``[block, D]`` and its t2i lists ``[1, M, h_i]``: the top
    ``k_t`` captions of each row, positives included (``k_t`` = h_t + the most captions a picture
    has; the caller drops them), the lists with the block's candidates merged in, the bounds
    ``[1, M]`` (largest dropped score) and ``new [1, M, h_i]``: the entries from this block."""
    s = _scores(scorer, x, caps)  # [block, M]
    i2t_v, i2t_i = _top_k(s, k_t)
    cand_v, cand_i, bound = _column_candidates(_negatives(s, code, pad, cap_code), first[0])
    top, index, pos = _merge_rows(state_v[0], state_i[0], cand_v.T, cand_i.T, h_i)
    return (i2t_v, i2t_i, top[None], index[None], jnp.maximum(state_b[0], bound)[None],
            (pos >= h_i)[None])


@functools.partial(jax.jit, static_argnames=("mesh", "scorer", "k_t", "h_i"),
                   donate_argnums=(6, 7, 8))
def _step(x, code, pad, first, caps, cap_code, state_v, state_i, state_b, *, mesh: Mesh, scorer,
          k_t: int, h_i: int):
    """A step: a block of rows per device of ``mesh`` (``[devices * block, D]``), each merged into
    that device's own t2i lists (``[devices, M, h_i]``, sharded over devices): no communication."""
    rows, repl = P("data"), P()
    return jax.shard_map(functools.partial(_device_step, scorer=scorer, k_t=k_t, h_i=h_i),
                         mesh=mesh,
                         in_specs=(rows,) * 4 + (repl,) * 2 + (rows,) * 3, out_specs=(rows,) * 6,
                         )(x, code, pad, first, caps, cap_code, state_v, state_i, state_b)


class _JaxMiner:
    """``backend="jax"``: ``_step`` on a ``data`` mesh of ``devices``."""

    def __init__(self, x: Inputs, plan: _Plan, h_t: int, h_i: int, devices):
        self.x, self.plan, self.h_t, self.h_i = x, plan, h_t, h_i
        self.mesh = Mesh(np.asarray(devices), ("data",))
        repl = NamedSharding(self.mesh, P())
        self.rows = NamedSharding(self.mesh, P("data"))
        self.caps = jax.device_put(x.cap, repl)
        self.cap_code = jax.device_put(x.cap_code, repl)
        # Rows are mined with their positives, dropped afterwards: a picture has at most
        # `positives` captions.
        self.k_t = h_t + int(np.bincount(x.cap_code).max(initial=0))
        self.set_state(*empty_state(plan.devices, len(x.cap_code), h_i))

    def step(self, starts: np.ndarray, rows: np.ndarray):
        """Mines a block of image rows from each of ``starts [devices]`` (``rows``: the images,
        those of the blocks that exist); returns their i2t ``(values, index)``, merges their
        columns into each device's t2i lists and returns which entries of those are new (a
        ``[devices, M, h_i]`` bool array, left on the device)."""
        block = self.plan.block
        at = (starts[:, None] + np.arange(block)).ravel()
        real = at < len(self.x.img_code)
        at_real = np.where(real, at, 0)
        args = [jax.device_put(a, self.rows) for a in (
            take(self.x.img, at_real), np.where(real, self.x.img_code[at_real], -1), ~real,
            starts.astype(np.int32))]
        i2t_v, i2t_i, *self.state, new = _step(
            *args, self.caps, self.cap_code, *self.state, mesh=self.mesh, scorer=self.x.scorer,
            k_t=self.k_t, h_i=self.h_i)
        values, index = np.asarray(i2t_v)[real], np.asarray(i2t_i)[real]
        code = self.x.img_code[rows]
        i2t = _first_kept(values, index, self.x.cap_code[index] != code[:, None], self.h_t)
        return i2t + (new,)

    def get_state(self):
        return tuple(np.asarray(a) for a in self.state)

    def set_state(self, values: np.ndarray, index: np.ndarray, bound: np.ndarray):
        """Each device's t2i lists ``[devices, M, h_i]`` and bounds ``[devices, M]``."""
        self.state = [jax.device_put(a, self.rows) for a in (values, index, bound)]


def _bucket(n: int) -> int:
    return max(8, 1 << (n - 1).bit_length())  # padded sizes: few distinct shapes to compile


@functools.partial(jax.jit, static_argnames=("scorer", "k", "block"))
def _exact_columns_fn(img, img_code, img_pad, caps, cap_code, *, scorer, k: int, block: int):
    """t2i lists ``[F, k]`` of the captions ``caps [F, D]`` over all images ``img [N, D]``
    (blocks of ``block`` rows, each merged whole with ``top_k``)."""

    def step(state, args):
        xb, cb, pb, start = args
        s = _negatives(_scores(scorer, xb, caps), cb, pb, cap_code)
        rows = start + lax.broadcasted_iota(jnp.int32, s.T.shape, 1)
        return _merge_rows(*state, s.T, rows, k)[:2], None

    f, blocks = rows(caps), rows(img) // block
    init = (jnp.full((f, k), -jnp.inf, jnp.float32), jnp.zeros((f, k), jnp.int32))
    in_blocks = jax.tree.map(lambda a: a.reshape(blocks, block, *a.shape[1:]), img)
    return lax.scan(step, init, (in_blocks, img_code.reshape(blocks, block),
                                 img_pad.reshape(blocks, block),
                                 block * jnp.arange(blocks, dtype=jnp.int32)))[0]


def _finish_t2i(x: Inputs, values: np.ndarray, index: np.ndarray, bound: np.ndarray, k: int,
                block: int):
    """The final t2i lists: captions whose dropped scores reach their k-th kept one (``bound``)
    are recomputed over every image; ties ordered by image index."""
    redo = np.flatnonzero(~(bound < values[:, -1]))
    if len(redo):
        f, n = _bucket(len(redo)), len(x.img_code)
        n_pad = -(-n // block) * block
        # Padding rows repeat the first one (a valid set, e.g. a caption of length >= 1).
        caps = take(x.cap, np.pad(redo, (0, f - len(redo)), mode="edge"))
        codes = np.pad(x.cap_code[redo], (0, f - len(redo)), constant_values=-1)
        img = take(x.img, np.minimum(np.arange(n_pad), n - 1))
        v, i = _exact_columns_fn(img, np.pad(x.img_code, (0, n_pad - n), constant_values=-1),
                                 np.arange(n_pad) >= n, caps, codes, scorer=x.scorer, k=k,
                                 block=block)
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


def merge_lists(values: np.ndarray, index: np.ndarray, bound: np.ndarray):
    """One t2i list per caption from ``L`` lists of consecutive image ranges, in image order:
    ``values, index [L, M, h_i]``, ``bound [L, M]`` -> ``[M, h_i]``, ``[M]``."""
    if len(values) == 1:
        return values[0], index[0], bound[0]
    flat = lambda a: a[1:].transpose(1, 0, 2).reshape(a.shape[1], -1)
    return (*merge_np(values[0], index[0], flat(values), flat(index), values.shape[2])[:2],
            bound.max(axis=0))


def empty_state(lists: int, m: int, h_i: int):
    """``lists`` t2i lists before any image: values -inf, index 0 ``[lists, m, h_i]``, bounds
    -inf ``[lists, m]``."""
    return (np.full((lists, m, h_i), -np.inf, np.float32), np.zeros((lists, m, h_i), np.int32),
            np.full((lists, m), -np.inf, np.float32))


class _FaissMiner:
    """``backend="faiss"`` (one list, steps of one block): per step, ``IndexFlatIP`` over the
    captions searched by the step's images (i2t) and over the step's images searched by every
    caption (t2i); each search asks for ``k`` plus the most positives any query can have, and
    drops the positives."""

    def __init__(self, x: Inputs, h_t: int, h_i: int):
        if not isinstance(x.scorer, DotScorer):
            raise ValueError("backend='faiss' searches dot products; a set model's attention "
                             "scores are mined with backend='jax'.")
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
        self.state = empty_state(1, len(x.cap), h_i)  # exact: the bounds stay -inf

    def step(self, starts: np.ndarray, rows: np.ndarray):
        x = self.x
        img, code = x.img[rows], x.img_code[rows]
        values, index = self.caps.search(img, min(self.h_t + self.extra_t, len(x.cap)))
        i2t = _canonical(*_first_kept(values, index, x.cap_code[index] != code[:, None], self.h_t))
        step = self.faiss.IndexFlatIP(img.shape[1])
        step.add(img)
        values, index = step.search(x.cap, min(self.h_i + self.extra_i, len(img)))
        part = _first_kept(values, rows[index], code[index] != x.cap_code[:, None], self.h_i)
        *lists, new = merge_np(self.state[0][0], self.state[1][0], *_canonical(*part), self.h_i)
        self.state = (lists[0][None], lists[1][None], self.state[2])
        return i2t + (new[None],)

    def get_state(self):
        return self.state

    def set_state(self, values: np.ndarray, index: np.ndarray, bound: np.ndarray):
        self.state = (values, index, bound)


# ----- the steps ---------------------------------------------------------------------------
class Miner:
    """Steps of image rows and the backend that mines them. Process ``p`` of ``P`` takes a
    contiguous range of steps (``share``), so a contiguous range of images; each of its devices
    takes a contiguous part of that range and mines it one block per step into its own t2i lists
    (``blocks``).

    Attributes:
      x: the inputs; plan: the blocks; steps: how many steps (of all processes);
      engine: the backend's miner, holding each device's running t2i lists (``get_state`` /
      ``set_state``).
    """

    def __init__(self, x: Inputs, *, h_t: int, h_i: int, backend: str, block_size: int,
                 devices):
        if backend not in BACKENDS:
            raise ValueError(f"Unknown backend={backend!r}; valid: {', '.join(BACKENDS)}.")
        devices = list(devices) if devices is not None else jax.local_devices()
        n = len(x.img_code)
        self.x, self.h_t, self.h_i, self.backend = x, h_t, h_i, backend
        self.plan = _make_plan(n, block_size, len(devices) if backend == "jax" else 1)
        self.steps = math.ceil(n / self.plan.rows)
        self.engine = (_JaxMiner(x, self.plan, h_t, h_i, devices) if backend == "jax"
                       else _FaissMiner(x, h_t, h_i))

    def share(self, process: int, processes: int) -> range:
        """Indices of the steps that ``process`` mines."""
        c = self.steps
        return range(process * c // processes, (process + 1) * c // processes)

    def blocks(self, share: range, c: int) -> np.ndarray:
        """The first image row of each device's block ``[devices]`` in step ``c`` of ``share``:
        device ``d`` mines blocks ``d * len(share)`` to ``(d + 1) * len(share) - 1`` of the
        share's images (those past the last image are padding)."""
        d, devices = np.arange(self.plan.devices), self.plan.devices
        return self.plan.block * (share.start * devices + d * len(share) + c - share.start)

    def rows(self, starts: np.ndarray) -> np.ndarray:
        """The images of the blocks starting at ``starts``, in order."""
        n = len(self.x.img_code)
        return np.concatenate([np.zeros(0, np.intp)] + [
            np.arange(min(s, n), min(s + self.plan.block, n)) for s in starts])

    def run(self, share: range, *, skip: int = 0, done=None, progress: bool = True):
        """Mines the steps of ``share`` after its first ``skip`` ones, in order (the devices' lists
        hold the first ``skip``); ``done(c, values, index, new)`` after each one: the step's i2t
        rows (``rows(blocks(share, c))``) and the ``[devices, M, h_i]`` mask of the t2i entries
        it added."""
        with _progress_bar((len(share) - skip) * self.plan.devices, progress) as bar:
            for c in share[skip:]:
                starts = self.blocks(share, c)
                values, index, new = self.engine.step(starts, self.rows(starts))
                if done is not None:
                    done(c, values, index, new)
                bar.update(self.plan.devices)

    def finish(self, i2t_parts, t2i_lists, processes: int = 1) -> Mined:
        """The lists from every step's i2t rows ``[(values, index)]`` (steps in order, shared by
        ``processes``) and every device's t2i lists after its steps ``(values, index [L, M, h_i],
        bound [L, M])`` (process 0's devices first)."""
        rows = self.rows(np.concatenate([np.zeros(0, np.intp)] + [
            self.blocks(share, c) for p in range(processes)
            for share in [self.share(p, processes)] for c in share]))
        v, i = _concat(i2t_parts, self.h_t)
        i2t_v, i2t_i = np.empty_like(v), np.empty_like(i)
        i2t_v[rows], i2t_i[rows] = v, i
        t2i_v, t2i_i = _finish_t2i(self.x, *merge_lists(*t2i_lists), self.h_i, self.plan.block)
        return Mined(i2t_i, t2i_i.astype(np.int32), i2t_v, t2i_v.astype(np.float32))


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="block", desc="mining", dynamic_ncols=True,
                disable=not enabled or jax.process_index() != 0)


def mine_arrays(img_emb, cap_emb, cap_to_img, *, image_ids=None, h_t: int = 300, h_i: int = 60,
                backend: str = "jax", block_size: int = 512, devices=None, scorer=None,
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
      scorer: how pairs score (``itm_jax.scoring``): ``None``, the dot product of the
        embeddings; a set model's ``AttentionScorer``, with ``img_emb`` / ``cap_emb`` its sets
        (regions ``[N, R, D]``, ``{"words": [M, L, D], "length": [M]}``). Attention costs
        ``O(R L D)`` per pair instead of ``O(D)`` (measured in the README).
      progress: show a tqdm bar over the blocks.

    Returns:
      ``Mined(i2t [N, h_t], t2i [M, h_i], i2t_scores, t2i_scores)``.
    """
    x = prepare(img_emb, cap_emb, cap_to_img, image_ids, h_t, h_i, scorer)
    miner = Miner(x, h_t=h_t, h_i=h_i, backend=backend, block_size=block_size, devices=devices)
    parts = []
    miner.run(range(miner.steps), done=lambda c, v, i, new: parts.append((v, i)),
              progress=progress)
    return miner.finish(parts, miner.engine.get_state())


def _concat(parts, k: int):
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
    return (np.concatenate([v for v, _ in parts]).astype(np.float32),
            np.concatenate([i for _, i in parts]).astype(np.int32))
