"""SCAN t2i scoring of 1,000 images x 5,000 captions: itm_jax against the authors' PyTorch loop.

    .venv/bin/python benchmarks/scan_bench.py            # 1000 images (36 regions), 5000 captions
    .venv/bin/python benchmarks/scan_bench.py --quick    # 200 images, 1000 captions

Random float32 features in a D=1024 joint space, L2-normalised per region and per word (as
SCAN's encoders output them); caption lengths drawn from 8..30 words, mean ~13 (Flickr30K-like),
padded to 30. Scoring is SCAN's t2i setting: ``raw_feature_norm="clipped_l2norm"``,
``lambda_softmax=9``, mean pooling. Timed in one run, after compiling / warming up:
- ours: ``itm_jax.similarity.scan_scores`` under ``jax.jit``;
- matmul: one jitted float32 ``[4608, 1024] x [1024, 8192]`` product, the FLOP/s ceiling;
- loop: the authors' ``xattn_score_t2i`` (kuanghuei/SCAN ``model.py``, reproduced below), which
  loops over captions and attends each against all images. It takes ~0.1-0.5 s a caption, so by
  default it runs on ``--baseline-captions`` random captions and its time is scaled to all of
  them (its cost is linear in the number of captions); ``--baseline-captions 0`` runs them all.
Each side reports the best of ``--repeats``, interleaved since the machine may be shared.
FLOPs are those of the two big contractions of every pair as SCAN computes them, raw attention
``C Q^T`` and the attended vectors ``alpha C``: ``2 * (2 * R * n_words * D)`` per pair. (Ours
forms only the first; the attended vectors' norms come from each image's R x R Gram matrix.)
Scores of the captions the loop ran must agree with ours (max abs difference printed).
Target: ours at least 10x faster than the loop. Without torch, only ours and the matmul run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from itm_jax import similarity  # noqa: E402

try:
    import torch
    from torch import nn
except ImportError:  # the baseline is optional: pip install -e '.[bench]'
    torch = None

REGIONS, DIM, MAX_WORDS = 36, 1024, 30
LAMBDA_SOFTMAX = 9.0
MIN_VS_LOOP = 10.0


def features(n, length, rng):
    x = rng.standard_normal((n, length, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def caption_lengths(n, rng):
    """Flickr30K-like: 8..30 words, a long right tail, mean ~13."""
    return np.clip(np.rint(8 + rng.gamma(2.0, 2.5, n)), 8, MAX_WORDS).astype(np.int32)


# ------------------------------------------------------------------ the authors' code (SCAN)


def l2norm(X, dim, eps=1e-8):
    """L2-normalize columns of X"""
    norm = torch.pow(X, 2).sum(dim=dim, keepdim=True).sqrt() + eps
    X = torch.div(X, norm)
    return X


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """Returns cosine similarity between x1 and x2, computed along dim."""
    w12 = torch.sum(x1 * x2, dim)
    w1 = torch.norm(x1, 2, dim)
    w2 = torch.norm(x2, 2, dim)
    return (w12 / (w1 * w2).clamp(min=eps)).squeeze()


def func_attention(query, context, opt, smooth, eps=1e-8):
    """
    query: (n_context, queryL, d)
    context: (n_context, sourceL, d)
    """
    batch_size_q, queryL = query.size(0), query.size(1)
    batch_size, sourceL = context.size(0), context.size(1)

    # Get attention
    # --> (batch, d, queryL)
    queryT = torch.transpose(query, 1, 2)

    # (batch, sourceL, d)(batch, d, queryL)
    # --> (batch, sourceL, queryL)
    attn = torch.bmm(context, queryT)
    if opt.raw_feature_norm == "softmax":
        # --> (batch*sourceL, queryL)
        attn = attn.view(batch_size * sourceL, queryL)
        attn = nn.Softmax(dim=1)(attn)  # the authors' implicit dim, for a 2-D input
        # --> (batch, sourceL, queryL)
        attn = attn.view(batch_size, sourceL, queryL)
    elif opt.raw_feature_norm == "l2norm":
        attn = l2norm(attn, 2)
    elif opt.raw_feature_norm == "clipped_l2norm":
        attn = nn.LeakyReLU(0.1)(attn)
        attn = l2norm(attn, 2)
    elif opt.raw_feature_norm == "clipped":
        attn = nn.LeakyReLU(0.1)(attn)
    elif opt.raw_feature_norm == "no_norm":
        pass
    else:
        raise ValueError("unknown first norm type:", opt.raw_feature_norm)
    # --> (batch, queryL, sourceL)
    attn = torch.transpose(attn, 1, 2).contiguous()
    # --> (batch*queryL, sourceL)
    attn = attn.view(batch_size * queryL, sourceL)
    attn = nn.Softmax(dim=1)(attn * smooth)
    # --> (batch, queryL, sourceL)
    attn = attn.view(batch_size, queryL, sourceL)
    # --> (batch, sourceL, queryL)
    attnT = torch.transpose(attn, 1, 2).contiguous()

    # --> (batch, d, sourceL)
    contextT = torch.transpose(context, 1, 2)
    # (batch x d x sourceL)(batch x sourceL x queryL)
    # --> (batch, d, queryL)
    weightedContext = torch.bmm(contextT, attnT)
    # --> (batch, queryL, d)
    weightedContext = torch.transpose(weightedContext, 1, 2)

    return weightedContext, attnT


def xattn_score_t2i(images, captions, cap_lens, opt):
    """
    Images: (n_image, n_regions, d) matrix of images
    Captions: (n_caption, max_n_word, d) matrix of captions
    CapLens: (n_caption) array of caption lengths
    """
    similarities = []
    n_image = images.size(0)
    n_caption = captions.size(0)
    for i in range(n_caption):
        # Get the i-th text description
        n_word = cap_lens[i]
        cap_i = captions[i, :n_word, :].unsqueeze(0).contiguous()
        # --> (n_image, n_word, d)
        cap_i_expand = cap_i.repeat(n_image, 1, 1)
        """
            word(query): (n_image, n_word, d)
            image(context): (n_image, n_regions, d)
            weiContext: (n_image, n_word, d)
            attn: (n_image, n_region, n_word)
        """
        weiContext, attn = func_attention(cap_i_expand, images, opt, smooth=opt.lambda_softmax)
        cap_i_expand = cap_i_expand.contiguous()
        weiContext = weiContext.contiguous()
        # (n_image, n_word)
        row_sim = cosine_similarity(cap_i_expand, weiContext, dim=2)
        if opt.agg_func == "LogSumExp":
            row_sim.mul_(opt.lambda_lse).exp_()
            row_sim = row_sim.sum(dim=1, keepdim=True)
            row_sim = torch.log(row_sim) / opt.lambda_lse
        elif opt.agg_func == "Max":
            row_sim = row_sim.max(dim=1, keepdim=True)[0]
        elif opt.agg_func == "Sum":
            row_sim = row_sim.sum(dim=1, keepdim=True)
        elif opt.agg_func == "Mean":
            row_sim = row_sim.mean(dim=1, keepdim=True)
        else:
            raise ValueError("unknown aggfunc: {}".format(opt.agg_func))
        similarities.append(row_sim)

    # (n_image, n_caption)
    similarities = torch.cat(similarities, 1)

    return similarities


class Opt:
    raw_feature_norm = "clipped_l2norm"
    lambda_softmax = LAMBDA_SOFTMAX
    agg_func = "Mean"
    lambda_lse = 6.0


# ------------------------------------------------------------------------------------ bench


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 images, 1000 captions")
    parser.add_argument("--baseline-captions", type=int, default=250,
                        help="captions the PyTorch loop runs (0: all); its time is scaled")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    n_img, n_cap = (200, 1000) if args.quick else (1000, 5000)
    rng = np.random.default_rng(0)
    images = features(n_img, REGIONS, rng)
    lens = caption_lengths(n_cap, rng)
    captions = features(n_cap, MAX_WORDS, rng)
    captions[np.arange(MAX_WORDS)[None, :] >= lens[:, None]] = 0.0
    n_base = n_cap if args.baseline_captions <= 0 else min(args.baseline_captions, n_cap)
    subset = np.sort(rng.choice(n_cap, n_base, replace=False))

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; torch "
          f"{torch.__version__ + f' ({torch.get_num_threads()} threads)' if torch else 'missing'}")
    print(f"{n_img} images x {REGIONS} regions, {n_cap} captions of {lens.min()}-{lens.max()} "
          f"words (mean {lens.mean():.1f}), D={DIM}; PyTorch loop on {n_base} captions")

    ours = jax.jit(lambda im, cap, n: similarity.scan_scores(
        im, cap, n, direction="t2i", raw_feature_norm="clipped_l2norm", agg="mean",
        lambda_softmax=LAMBDA_SOFTMAX))
    im_j, cap_j, lens_j = jnp.asarray(images), jnp.asarray(captions), jnp.asarray(lens)
    a = jnp.asarray(rng.standard_normal((128 * REGIONS, DIM), dtype=np.float32))
    b = jnp.asarray(rng.standard_normal((DIM, 8192), dtype=np.float32))
    matmul = jax.jit(lambda a, b: a @ b)
    compile_s, _ = timed(lambda: ours(im_j, cap_j, lens_j).block_until_ready())
    matmul(a, b).block_until_ready()
    print(f"ours: compile + first run {compile_s:.1f} s")

    if torch is not None:
        im_t, cap_t = torch.from_numpy(images), torch.from_numpy(captions[subset])
        lens_sub = [int(n) for n in lens[subset]]

        def loop():
            with torch.no_grad():
                return xattn_score_t2i(im_t, cap_t, lens_sub, Opt).numpy()

    best = {"ours": np.inf, "matmul": np.inf, "loop": np.inf}
    for _ in range(args.repeats):
        t, scores = timed(lambda: np.asarray(ours(im_j, cap_j, lens_j)))
        best["ours"] = min(best["ours"], t)
        t, _ = timed(lambda: matmul(a, b).block_until_ready())
        best["matmul"] = min(best["matmul"], t)
        if torch is not None:
            t, loop_scores = timed(loop)
            best["loop"] = min(best["loop"], t)

    pair_flops = 2 * 2 * REGIONS * DIM * float(lens.sum()) * n_img  # two contractions a pair
    ceiling = 2 * a.shape[0] * DIM * b.shape[1] / best["matmul"]
    ours_rate = pair_flops / best["ours"]
    print(f"\n{'':48s} {'time':>10s} {'GFLOP/s':>9s}")
    print(f"{'matmul [4608,1024] x [1024,8192] (ceiling)':48s} {best['matmul']:9.3f}s "
          f"{ceiling / 1e9:9.1f}")
    print(f"{'itm_jax.similarity.scan_scores (jit)':48s} {best['ours']:9.3f}s "
          f"{ours_rate / 1e9:9.1f}  = {ours_rate / ceiling:.2f}x the matmul's rate")
    if torch is None:
        print("PyTorch loop: baseline missing (torch is not installed: pip install -e '.[bench]')")
        return
    scale = n_cap / n_base
    loop_all = best["loop"] * scale
    loop_rate = pair_flops / loop_all
    label = "SCAN xattn_score_t2i loop (PyTorch)" + (f", x{scale:.0f}" if scale != 1 else "")
    print(f"{label:48s} {loop_all:9.3f}s {loop_rate / 1e9:9.1f}"
          + (f"  ({best['loop']:.1f} s on {n_base} captions)" if scale != 1 else ""))
    ratio = loop_all / best["ours"]
    diff = np.max(np.abs(scores[:, subset] - loop_scores))
    print(f"\nours {ratio:.1f}x faster than the loop (target >= {MIN_VS_LOOP:.0f}x: "
          f"{'met' if ratio >= MIN_VS_LOOP else 'NOT met'}); max |ours - loop| over "
          f"{n_img} x {n_base} scores: {diff:.2e}")


if __name__ == "__main__":
    main()
