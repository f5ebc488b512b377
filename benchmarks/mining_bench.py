"""AOQ mining (both directions' top-h lists): itm_jax.aoq.kernel against NumPy, faiss and a matmul.

    .venv/bin/python benchmarks/mining_bench.py            # 5000 images x 25000 captions, D=1024
    .venv/bin/python benchmarks/mining_bench.py --quick    # 2000 x 10000, D=512
    .venv/bin/python benchmarks/mining_bench.py --attention  # a SCAN teacher: the cost per pair

Random L2-normalised float32 embeddings, 5 consecutive captions per image; each image's top
H_t=300 captions and each caption's top H_i=60 images, positives excluded. Timed in one run,
each method's best of ``--repeats``, the repeats interleaved (the machine may be shared):

- ours: ``kernel.mine_arrays`` (backend "jax", ``--block_size`` rows per block), on one XLA CPU
  device and on one device per core (``--devices``; this script sets
  ``--xla_force_host_platform_device_count`` before JAX starts), as the blocks would run on an
  accelerator host's devices; the faster of the two is "ours" (other processes on a shared
  machine may hold the cores the extra devices need);
- numpy: per block of 1000 images, ``I @ C.T`` (BLAS), positives masked, ``argpartition`` + sort
  of the rows (i2t) and of the columns merged into running top lists (t2i);
- faiss: ``IndexFlatIP`` searched once per direction for k + 5 (or + 1) and positives dropped;
- matmul: the ``[N, D] x [D, M]`` float32 product alone, the ceiling of any exact method: one
  jitted JAX dot, JAX dots in blocks of 1000 rows (ours' engine), and NumPy's (BLAS); the
  fastest is the ceiling.

``--attention``: the cost of mining with a set model (SCAN t2i, ``clipped_l2norm``, mean) as
the teacher, on 400 images (36 regions) x 2,000 captions (8-30 words, mean ~13, padded to 30),
D=1024, H_t=40, H_i=8 (lists about as dense as Flickr30K's): ours with the ``AttentionScorer`` against the same sets' attention score matrix alone
(``itm_jax.scoring.score_matrix``) and against dot-product mining of as many pairs (global
embeddings, D=1024); per-pair times and the projection to Flickr30K's and COCO's training splits.

All methods must agree by score (the sorted score lists equal to 1e-5; float32 rounding of the
different matmul kernels may swap near-ties). Targets on a 2-core CPU: ours <= 0.8x faiss and
<= 1.5x the matmul ceiling. The COCO projection (113,287 x 566,435) scales ours' time by the
number of scores (the top-k work per score is about constant at this density or lower).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Before JAX starts: --devices XLA CPU devices (one per core by default), so that the image
# blocks' serial top-k work runs on every core, as blocks would on an accelerator host's devices.
_DEVICES = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--devices=")),
                os.cpu_count())
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={_DEVICES}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from itm_jax.aoq import kernel  # noqa: E402

CAPS = 5
H_T, H_I = 300, 60
BLOCK = 1000  # NumPy and blocked-matmul rows per block
MAX_VS_FAISS = 0.8
MAX_VS_MATMUL = 1.5
COCO = (113_287, 566_435)
F30K = (29_000, 145_000)


def embeddings(n, d, rng):
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_mine(img, cap, cap_to_img):
    """Blocked NumPy reference: (i2t, i2t_scores, t2i, t2i_scores)."""
    n, m = len(img), len(cap)
    i2t, i2t_v = np.empty((n, H_T), np.int64), np.empty((n, H_T), np.float32)
    t2i_v = np.full((m, H_I), -np.inf, np.float32)
    t2i = np.zeros((m, H_I), np.int64)
    cols = np.arange(m)
    for start in range(0, n, BLOCK):
        s = img[start:start + BLOCK] @ cap.T
        rows = np.arange(start, start + len(s))
        s[cap_to_img[None, :] == rows[:, None]] = -np.inf
        part = np.argpartition(-s, H_T - 1, axis=1)[:, :H_T]
        v = np.take_along_axis(s, part, 1)
        order = np.argsort(-v, axis=1, kind="stable")
        i2t[rows], i2t_v[rows] = np.take_along_axis(part, order, 1), np.take_along_axis(v, order, 1)
        k = min(H_I, len(s))
        part = np.argpartition(-s, k - 1, axis=0)[:k]  # [k, m] block rows
        v = s[part, cols]
        both_v = np.concatenate([t2i_v, v.T], axis=1)
        both_i = np.concatenate([t2i, part.T + start], axis=1)
        keep = np.argpartition(-both_v, H_I - 1, axis=1)[:, :H_I]
        t2i_v, t2i = np.take_along_axis(both_v, keep, 1), np.take_along_axis(both_i, keep, 1)
    order = np.argsort(-t2i_v, axis=1, kind="stable")
    return i2t, i2t_v, np.take_along_axis(t2i, order, 1), np.take_along_axis(t2i_v, order, 1)


def faiss_mine(img, cap, cap_to_img, faiss):
    """(i2t, i2t_scores, t2i, t2i_scores) from two IndexFlatIP searches."""
    index = faiss.IndexFlatIP(img.shape[1])
    index.add(cap)
    v, i = index.search(img, H_T + CAPS)
    keep = cap_to_img[i] != np.arange(len(img))[:, None]
    i2t, i2t_v = drop(i, v, keep, H_T)
    index = faiss.IndexFlatIP(img.shape[1])
    index.add(img)
    v, i = index.search(cap, H_I + 1)
    t2i, t2i_v = drop(i, v, i != cap_to_img[:, None], H_I)
    return i2t, i2t_v, t2i, t2i_v


def drop(index, values, keep, k):
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(index, order, 1), np.take_along_axis(values, order, 1)


def best_of_interleaved(fns, repeats):
    """Best wall time of each function; the repeats interleaved so that load from other
    processes on the machine hits all alike."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def agree(name, ref, got):
    """The sorted score lists match (the lists' order of near-ties may differ)."""
    for direction, a, b in (("i2t", ref[1], got[1]), ("t2i", ref[3], got[3])):
        err = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        same = float(np.mean(np.asarray(ref[0 if direction == "i2t" else 2]) ==
                             np.asarray(got[0 if direction == "i2t" else 2])))
        status = "ok" if err < 1e-5 else "MISMATCH"
        print(f"  {name:>6} vs ours {direction}: max |score diff| {err:.1e}, "
              f"same index {100 * same:.2f}%  {status}")
        if err >= 1e-5:
            return False
    return True


def attention_cost(repeats: int) -> None:
    """``--attention``: SCAN-teacher mining against its score matrix and dot-product mining."""
    from itm_jax import scoring
    from scan_bench import caption_lengths, features

    n, m, d = 400, 400 * CAPS, 1024
    # Lists as dense as Flickr30K's (300 / 60 of 145k / 29k): with 60 of only 400 images, the
    # t2i group pass would fail for most captions and recompute them (kernel._GROUP).
    h_t, h_i = 40, 8
    rng = np.random.default_rng(0)
    img = features(n, 36, rng)
    lens = caption_lengths(m, rng)
    words = features(m, 30, rng)
    words[np.arange(30)[None, :] >= lens[:, None]] = 0.0
    cap = {"words": words, "length": lens}
    cap_to_img = np.repeat(np.arange(n), CAPS)
    scorer = scoring.AttentionScorer("scan", (
        ("agg", "mean"), ("direction", "t2i"), ("lambda_lse", 6.0), ("lambda_softmax", 9.0),
        ("raw_feature_norm", "clipped_l2norm")))
    glob_img, glob_cap = embeddings(n, d, rng), embeddings(m, d, rng)
    results = {}

    def mine_sets():
        results["sets"] = kernel.mine_arrays(img, cap, cap_to_img, h_t=h_t, h_i=h_i,
                                             block_size=128, scorer=scorer)

    fns = {
        "mining, SCAN scorer": mine_sets,
        "SCAN score matrix alone": lambda: results.update(
            matrix=scoring.score_matrix(scorer, img, cap)),
        "mining, dot products": lambda: kernel.mine_arrays(
            glob_img, glob_cap, cap_to_img, h_t=h_t, h_i=h_i, block_size=128),
    }
    print(f"{n} images x 36 regions, {m} captions of {lens.min()}-{lens.max()} words (mean "
          f"{lens.mean():.1f}), D={d}, H_t={h_t}, H_i={h_i}; {jax.device_count()} XLA CPU "
          f"devices, {os.cpu_count()} cores")
    for fn in fns.values():  # compile / warm up
        fn()
    best = best_of_interleaved(fns, repeats)
    s = results["matrix"].astype(np.float64)
    s[np.arange(n)[:, None] == cap_to_img[None, :]] = -np.inf
    diff = np.abs(results["sets"].i2t_scores - -np.sort(-s, axis=1)[:, :h_t]).max()
    pairs = n * m
    print(f"\n{'':26s}{'time':>9s}{'per pair':>11s}{'Flickr30K':>11s}{'COCO':>10s}")
    for name, t in best.items():
        hours = [t / pairs * a * b / 3600 for a, b in (F30K, COCO)]
        print(f"{name:26s}{t:8.2f}s{t / pairs * 1e6:9.2f}us{hours[0]:9.1f} h{hours[1]:8.1f} h")
    ratio = best["mining, SCAN scorer"] / best["SCAN score matrix alone"]
    vs_dot = best["mining, SCAN scorer"] / best["mining, dot products"]
    print(f"\nmining / its score matrix: {ratio:.2f}x; SCAN / dot-product mining: {vs_dot:.0f}x; "
          f"max |i2t score - the matrix's| {diff:.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2000 images x 10000 captions, D=512")
    ap.add_argument("--attention", action="store_true",
                    help="the cost of mining with a SCAN teacher (see the docstring)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--devices", type=int, default=_DEVICES,
                    help="XLA CPU devices for ours (default: one per core)")
    ap.add_argument("--block_size", type=int, default=512, help="ours' image rows per block")
    args = ap.parse_args()
    if args.attention:
        attention_cost(args.repeats)
        return
    n, d = (2000, 512) if args.quick else (5000, 1024)
    m = n * CAPS
    rng = np.random.default_rng(0)
    img, cap = embeddings(n, d, rng), embeddings(m, d, rng)
    cap_to_img = np.repeat(np.arange(n), CAPS)
    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss not installed (pip install -e '.[bench]'): skipping its baseline")
    print(f"{n} images x {m} captions, D={d}, H_t={H_T}, H_i={H_I}; {jax.device_count()} XLA "
          f"CPU devices, {os.cpu_count()} cores")

    results = {}

    def ours(devices):
        def run():
            r = kernel.mine_arrays(img, cap, cap_to_img, h_t=H_T, h_i=H_I,
                                   block_size=args.block_size, devices=devices)
            results["ours"] = (r.i2t, r.i2t_scores, r.t2i, r.t2i_scores)
        return run

    def numpy_():
        results["numpy"] = numpy_mine(img, cap, cap_to_img)

    def faiss_():
        results["faiss"] = faiss_mine(img, cap, cap_to_img, faiss)

    img_j, cap_j = jnp.asarray(img), jnp.asarray(cap)
    dot = jax.jit(lambda a, b: lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                                               precision=lax.Precision.HIGHEST))
    blocks = -(-n // BLOCK)
    img_blocks = jnp.asarray(
        np.pad(img, ((0, blocks * BLOCK - n), (0, 0))).reshape(blocks, BLOCK, d))
    # A running elementwise max of the blocks: [N, M] is not written to memory, and unlike a row
    # reduction it does not get fused into (and slow down) XLA's matmul kernel.
    dot_blocked = jax.jit(lambda a, b: lax.scan(
        lambda acc, x: (jnp.maximum(acc, dot(x, b)), None),
        jnp.full((a.shape[1], b.shape[0]), -jnp.inf), a)[0])
    # On a shared machine other processes may hold the cores that extra devices would use.
    mined = {f"ours ({k} device{'s' * (k > 1)})": ours(jax.devices()[:k])
             for k in sorted({1, jax.device_count()})}
    fns = {
        **mined,
        "numpy": numpy_,
        "matmul (jax)": lambda: dot(img_j, cap_j).block_until_ready(),
        "matmul (jax, blocks)": lambda: dot_blocked(img_blocks, cap_j).block_until_ready(),
        "matmul (numpy)": lambda: img @ cap.T,
    }
    if faiss is not None:
        fns["faiss"] = faiss_
    for fn in fns.values():  # compile / warm up
        fn()
    best = best_of_interleaved(fns, args.repeats)

    ceiling = min(best[k] for k in best if k.startswith("matmul"))
    ours_best = min(mined, key=best.get)
    gflop = 2 * n * m * d / 1e9
    print(f"\n{'method':<22}{'time':>9}{'vs ours':>9}  GFLOP/s")
    for name, t in sorted(best.items(), key=lambda kv: kv[1]):
        print(f"{name:<22}{t:8.2f}s{t / best[ours_best]:8.2f}x  {gflop / t:6.0f}")

    print("\nagreement (by score):")
    ok = agree("numpy", results["numpy"], results["ours"])
    if faiss is not None:
        ok &= agree("faiss", results["faiss"], results["ours"])

    scale = COCO[0] * COCO[1] / (n * m)
    print(f"\nprojected full COCO ({COCO[0]:,} x {COCO[1]:,}, D={d}): {ours_best} "
          f"{best[ours_best] * scale / 60:.1f} min, matmul ceiling {ceiling * scale / 60:.1f} min "
          f"(paper: 3,400 s for VSRN's scoring, on a GPU)")
    vs_matmul = best[ours_best] / ceiling
    print(f"ours / matmul ceiling: {vs_matmul:.2f} (target <= {MAX_VS_MATMUL})")
    passed = ok and vs_matmul <= MAX_VS_MATMUL
    if faiss is not None:
        vs_faiss = best[ours_best] / best["faiss"]
        print(f"ours / faiss: {vs_faiss:.2f} (target <= {MAX_VS_FAISS})")
        passed &= vs_faiss <= MAX_VS_FAISS
    print("PASS" if passed else "FAIL")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
