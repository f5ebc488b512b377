"""SCAN (t-i, AVG) train step: itm_jax (jit) against the SCAN authors' PyTorch step (eager, CPU).

    .venv/bin/python benchmarks/scan_train_step_bench.py            # 3 repeats of 2 steps
    .venv/bin/python benchmarks/scan_train_step_bench.py --quick    # batch 32, 2 repeats of 1
    (PyTorch comes with the optional extra: pip install -e '.[bench]')

The configuration is ``configs/scan_f30k.py:direction=t2i,agg=avg`` (the SCAN code's published
Flickr30K settings): batch 128, 36 regions of 2048-d features projected to a 1024-d joint
space, 300-d words, a bi-GRU whose two directions are averaged per word, stacked cross
attention t-i (``clipped_l2norm``, lambda_softmax 9, mean pooling), max of hinges (margin 0.2,
summed), Adam (lr 2e-4), global-norm gradient clipping at 2. Batches are those of
``train_step_bench.make_batches`` (Flickr30K-like caption lengths, 5..32 tokens, mean ~14,
padded to 32; a 10k Zipf vocabulary), with region sets; four are cycled.

PyTorch: the authors' code (kuanghuei/SCAN ``model.py``): ``EncoderImagePrecomp`` (Linear,
l2norm per region), ``EncoderText`` (``nn.Embedding`` -> bidirectional ``nn.GRU`` on
``pack_padded_sequence``, the directions averaged, l2norm per word), ``ContrastiveLoss`` over
``xattn_score_t2i`` (a loop over the captions, each attending all the batch's images; from
``scan_bench.py``) with ``max_violation``; ``zero_grad; backward; clip_grad_norm_(2); Adam
step``, batches sorted by length as the authors' ``collate_fn``. Its weights, PyTorch's own
initialisation, are saved as the authors' checkpoint and converted into ours with
``python -m itm_jax.models.convert_weights scan`` 's reader and ``load_authors_weights`` (the
path a user takes), so both sides start from the same
parameters: the losses of the first steps must agree (printed), and the converted model's
region and word vectors must equal PyTorch's (checked before timing).

Timing: both sides warmed up (our compile excluded), then ``--repeats`` repeats of ``--steps``
steps each, interleaved. PyTorch runs with one thread per core of the process's affinity.
FLOPs: the two attention contractions of every pair (``4 R n_words D``) forward and twice that
backward, the bi-GRU's gates over the valid tokens and the region projection, divided by each
side's step time, against the float32 matmul ceiling measured in the same run.

Target: ours >= 1.3x the PyTorch steps/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from configs import scan_f30k  # noqa: E402
from itm_jax import host_memory  # noqa: E402
from itm_jax.models import convert_weights  # noqa: E402
from itm_jax.models.pretrained import load_authors_weights  # noqa: E402
from train_step_bench import build_ours, make_batches, matmul_ceiling, torch_inputs  # noqa: E402

TARGET = 1.3
REGIONS, IMAGE_DIM, VOCAB = 36, 2048, 10000


def build_torch(config, threads):
    """The SCAN authors' model, loss and optimiser (their initialisation)."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from scan_bench import l2norm, xattn_score_t2i

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m, scan = config.model, config.model.scan

    class Opt:
        raw_feature_norm = scan.raw_feature_norm
        lambda_softmax = scan.lambda_softmax
        agg_func = {"mean": "Mean", "logsumexp": "LogSumExp"}[scan.agg]
        lambda_lse = scan.lambda_lse

    class EncoderImagePrecomp(nn.Module):
        def __init__(self, img_dim, embed_size):
            super().__init__()
            self.fc = nn.Linear(img_dim, embed_size)
            r = np.sqrt(6.0) / np.sqrt(img_dim + embed_size)
            self.fc.weight.data.uniform_(-r, r)
            self.fc.bias.data.fill_(0)

        def forward(self, images):
            return l2norm(self.fc(images), dim=-1)

    class EncoderText(nn.Module):
        def __init__(self, vocab_size, word_dim, embed_size):
            super().__init__()
            self.embed_size = embed_size
            self.embed = nn.Embedding(vocab_size, word_dim)
            self.embed.weight.data.uniform_(-0.1, 0.1)
            self.rnn = nn.GRU(word_dim, embed_size, 1, batch_first=True, bidirectional=True)

        def forward(self, x, lengths):
            packed = pack_padded_sequence(self.embed(x), lengths, batch_first=True)
            out, _ = self.rnn(packed)
            cap_emb, _ = pad_packed_sequence(out, batch_first=True)
            half = cap_emb.size(2) // 2
            cap_emb = (cap_emb[:, :, :half] + cap_emb[:, :, half:]) / 2
            return l2norm(cap_emb, dim=-1)

    def contrastive_loss(im, s, s_l, margin):
        scores = xattn_score_t2i(im, s, s_l, Opt)
        diagonal = scores.diag().view(im.size(0), 1)
        cost_s = (margin + scores - diagonal.expand_as(scores)).clamp(min=0)
        cost_im = (margin + scores - diagonal.t().expand_as(scores)).clamp(min=0)
        mask = torch.eye(scores.size(0)) > 0.5
        cost_s = cost_s.masked_fill_(mask, 0)
        cost_im = cost_im.masked_fill_(mask, 0)
        return cost_s.max(1)[0].sum() + cost_im.max(0)[0].sum()

    img_enc = EncoderImagePrecomp(IMAGE_DIM, m.embed_dim)
    txt_enc = EncoderText(VOCAB, m.word_dim, m.embed_dim)
    params = [*img_enc.parameters(), *txt_enc.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.optim.learning_rate)
    margin, clip = config.losses[0].margin, config.optim.grad_clip

    def step(inputs):
        images, tokens, lengths = inputs
        optimizer.zero_grad()
        loss = contrastive_loss(img_enc(images), txt_enc(tokens, lengths), lengths.tolist(),
                                margin)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        return loss

    return step, img_enc, txt_enc


def convert_into(model, img_enc, txt_enc):
    """PyTorch's weights into ``model`` as a user converts the authors' checkpoint: saved as
    their ``train.py`` saves it (the two state_dicts and the argparse options), read back by
    ``convert_weights`` and loaded by ``load_authors_weights``."""
    import argparse

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"model": [img_enc.state_dict(), txt_enc.state_dict()], "epoch": 0,
                    "opt": argparse.Namespace(data_name="f30k_precomp", bi_gru=True)},
                   f"{tmp}/model_best.pth.tar")
        convert_weights.convert("scan", f"{tmp}/model_best.pth.tar", f"{tmp}/scan.npz")
        load_authors_weights(model, f"{tmp}/scan.npz")


def useful_flops(batches, *, embed, word, batch):
    words = np.mean([b["length"].sum() for b in batches])
    attention = 3 * 4 * REGIONS * embed * words * batch  # every image with every caption
    gru = 2 * 3 * 2 * 3 * embed * (word + embed) * words  # 2 directions, (fwd + 2 bwd)
    image = 3 * 2 * batch * REGIONS * IMAGE_DIM * embed
    return attention + gru + image, words


def main():
    host_memory.reuse_freed_memory()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 32, 2 repeats of 1 step")
    p.add_argument("--steps", type=int, default=None, help="steps per timed repeat (2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per side (3)")
    args = p.parse_args()
    steps = args.steps or (1 if args.quick else 2)
    repeats = args.repeats or (2 if args.quick else 3)
    import torch

    config = scan_f30k.get_config("direction=t2i,agg=avg")
    if args.quick:
        config.batch_size = 32
    batch, embed, word = config.batch_size, config.model.embed_dim, config.model.word_dim
    threads = len(os.sched_getaffinity(0))
    batches = make_batches(np.random.default_rng(0), 4, batch=batch, max_len=config.data.max_len,
                           vocab=VOCAB, image_dim=IMAGE_DIM, regions=REGIONS)
    flops, words = useful_flops(batches, embed=embed, word=word, batch=batch)
    print(f"SCAN t-i AVG step: batch {batch}, {REGIONS} regions x {IMAGE_DIM}, embed {embed}, "
          f"word {word}, mean {words / batch:.1f} tokens/caption; jax {jax.__version__} x"
          f"{jax.device_count()}, torch {torch.__version__} ({threads} threads)")

    torch_step, img_enc, txt_enc = build_torch(config, threads)
    model, state, step_fn, to_device = build_ours(
        config, vocab=VOCAB, image_dim=IMAGE_DIM, init=lambda m: convert_into(m, img_enc, txt_enc))
    ours_batches = [to_device(b) for b in batches]
    torch_batches = [torch_inputs(b) for b in batches]

    b0 = batches[0]
    with torch.no_grad():
        ref_regions = img_enc(torch.from_numpy(b0["image_feat"][:4])).numpy()
        order = np.argsort(-b0["length"], kind="stable")[:4]
        ref_words = txt_enc(torch.from_numpy(b0["tokens"][order].astype(np.int64)),
                            torch.from_numpy(b0["length"][order].astype(np.int64))).numpy()
    regions = np.asarray(model.embed_images({"image_feat": b0["image_feat"][:4]}))
    words_out = model.embed_captions({"tokens": b0["tokens"][order], "length": b0["length"][order]})
    valid = np.arange(ref_words.shape[1])[None] < b0["length"][order][:, None]
    diff_img = np.abs(regions - ref_regions).max()
    diff_txt = np.abs(np.asarray(words_out["words"])[:, :ref_words.shape[1]][valid]
                      - ref_words[valid]).max()
    print(f"converted weights: max |ours - PyTorch| regions {diff_img:.1e}, words {diff_txt:.1e}")
    assert diff_img < 1e-5 and diff_txt < 1e-5, "the converted model differs from PyTorch's"

    losses = {"ours": [], "torch": []}
    t0 = time.perf_counter()
    for i in range(2):
        state, metrics, _ = step_fn(state, ours_batches[i])
        losses["ours"].append(float(metrics["loss"]))
        if i == 0:
            print(f"ours: compile + first step {time.perf_counter() - t0:.1f} s")
        losses["torch"].append(torch_step(torch_batches[i]).item())
    print("losses, steps 1-2: ours " + " ".join(f"{v:.4f}" for v in losses["ours"]) +
          " | torch " + " ".join(f"{v:.4f}" for v in losses["torch"]))

    def run_ours(start):
        nonlocal state
        t0 = time.perf_counter()
        for i in range(steps):
            state, metrics, _ = step_fn(state, ours_batches[(start + i) % 4])
        jax.block_until_ready((state, metrics))
        return (time.perf_counter() - t0) / steps

    def run_torch(start):
        t0 = time.perf_counter()
        for i in range(steps):
            torch_step(torch_batches[(start + i) % 4]).item()
        return (time.perf_counter() - t0) / steps

    load_start = os.getloadavg()[0]
    ceiling = max(matmul_ceiling(3).values())
    times = {"ours": [], "torch": []}
    for r in range(repeats):
        times["ours"].append(run_ours(2 + r * steps))
        times["torch"].append(run_torch(2 + r * steps))
        print(f"repeat {r + 1}/{repeats}: ours {times['ours'][-1]:.2f} s/step, PyTorch "
              f"{times['torch'][-1]:.2f} s/step", flush=True)
    load = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, name in (("ours", "ours"), ("torch", f"PyTorch, {threads} threads")):
        print(f"{name}: median {med[k]:.2f} s/step, {flops / med[k] / 1e9:.1f} GFLOP/s = "
              f"{flops / med[k] / ceiling:.0%} of the {ceiling / 1e9:.0f} GFLOP/s matmul ceiling")
    ratio, best = med["torch"] / med["ours"], min(times["torch"]) / min(times["ours"])
    print(f"SUMMARY: ours {ratio:.2f}x PyTorch's steps/s (best repeats {best:.2f}x), "
          f"{'meets' if min(ratio, best) >= TARGET else 'misses'} the {TARGET}x target; "
          f"load {load_start:.1f} -> {load:.1f} on {threads} cores")


if __name__ == "__main__":
    main()
