"""The main job for now: every loss on one random batch, as a table.

Evaluates each registered loss (default hyper-parameters) on random features of a batch with
a few duplicated images, and reports its value, gradient norm and jitted step time. Later
issues replace this with training on the built-in synthetic dataset.

Usage: python -m itm_jax.demo [--workdir=DIR] [--batch=128] [--dim=256]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from itm_jax import losses as L
from itm_jax.objective import objective, outputs_from_features


def _loss_fn(name: str):
    def f(img_feat, txt_feat, image_ids, cls_weight):
        out = outputs_from_features(
            img_feat, txt_feat, image_ids=image_ids, labels=image_ids, cls_weight=cls_weight,
            img_logits=img_feat @ cls_weight, txt_logits=txt_feat @ cls_weight,
        )
        # AOQ's offline negatives, stood in for by shifted pairs of the batch.
        i, t = out["img_emb"], out["txt_emb"]
        out["s_i_toff"] = jnp.sum(i * jnp.roll(t, 1, 0), axis=1)
        out["s_ioff_t"] = jnp.sum(jnp.roll(i, 1, 0) * t, axis=1)
        out["s_ioff_toff"] = jnp.sum(jnp.roll(i, 1, 0) * jnp.roll(t, 1, 0), axis=1)
        out["s_itilde_ttilde"] = jnp.sum(jnp.roll(i, 2, 0) * jnp.roll(t, 3, 0), axis=1)
        return objective(out, [{"name": name}])[0]

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))


def loss_table(batch: int = 128, dim: int = 256, seed: int = 0, repeats: int = 20) -> str:
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(batch, dim)).astype(np.float32)
    txt = (img + 2 * rng.normal(size=(batch, dim))).astype(np.float32)  # noisy pairs
    ids = np.arange(batch, dtype=np.int32)
    ids[1::8] = ids[0::8][: len(ids[1::8])]  # some images twice in the batch
    classes = int(ids.max()) + 1
    weight = (rng.normal(size=(dim, classes)) / np.sqrt(dim)).astype(np.float32)

    rows = [
        f"| loss | value | grad norm | ms / step (jit, B={batch}, D={dim}) |",
        "|---|---:|---:|---:|",
    ]
    for name in L.names():
        step = _loss_fn(name)
        value, grads = jax.block_until_ready(step(img, txt, ids, weight))
        start = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(step(img, txt, ids, weight))
        ms = (time.perf_counter() - start) / repeats * 1e3
        gnorm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in grads)))
        rows.append(f"| {name} | {float(value):.4f} | {gnorm:.4f} | {ms:.3f} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="workdir/demo")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args(argv)
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; one random batch per loss\n")
    table = loss_table(args.batch, args.dim)
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "losses.md").write_text(table + "\n")
    print(f"\n{table}\n\nwritten to {workdir / 'losses.md'}")


if __name__ == "__main__":
    main()
