"""Every loss computed inside `jax.jit` on a batch sharded over 4 simulated CPU devices (a
`data` mesh axis) gives the same value and gradients as on one device: the loss sees the
global score matrix, not a per-device one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import itm_jax.losses as L
from itm_jax.objective import objective, outputs_from_features

B, D, C = 16, 8, 6


def _loss(name, img, txt, image_ids, w):
    out = outputs_from_features(img, txt, image_ids=image_ids, labels=image_ids, cls_weight=w,
                                img_logits=img @ w, txt_logits=txt @ w)
    # AOQ's offline items, stood in for by other pairs of the batch.
    i, t = out["img_emb"], out["txt_emb"]
    pair = lambda a, b: jnp.sum(a * b, axis=1)
    out["s_i_toff"] = pair(i, jnp.roll(t, 1, 0))
    out["s_ioff_t"] = pair(jnp.roll(i, 2, 0), t)
    out["s_ioff_toff"] = pair(jnp.roll(i, 2, 0), jnp.roll(t, 1, 0))
    out["s_itilde_ttilde"] = pair(jnp.roll(i, 1, 0), jnp.roll(t, 3, 0))
    # VSRN's caption term: two decoded steps predicting class-sized vocabularies.
    out["caption_log_probs"] = jax.nn.log_softmax(jnp.stack([img @ w, txt @ w], axis=1))
    out["caption_targets"] = jnp.stack([image_ids, image_ids[::-1]], axis=1) % C
    out["caption_mask"] = jnp.ones((img.shape[0], 2))
    spec = {"name": name, "chunk_size": 3} if name == "imc" else {"name": name}
    return objective(out, [spec])[0]


@pytest.mark.parametrize("name", L.names())
def test_sharded_matches_single_device(name):
    assert jax.device_count() >= 4, "conftest must request 4 host devices before JAX starts"
    rng = np.random.default_rng(0)
    img = rng.normal(size=(B, D)).astype(np.float32)
    txt = rng.normal(size=(B, D)).astype(np.float32)
    ids = rng.integers(0, C, size=B).astype(np.int32)  # repeated ids: shared positives
    w = rng.normal(size=(D, C)).astype(np.float32)
    f = jax.value_and_grad(lambda *a: _loss(name, *a), argnums=(0, 1, 3))

    single = jax.jit(f)(*jax.device_put((img, txt, ids, w), jax.devices()[0]))

    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    args = jax.device_put((img, txt, ids, w), (rows, rows, rows, rep))
    sharded = jax.jit(f, out_shardings=(rep, (rows, rows, rep)))(*args)

    assert args[0].sharding.num_devices == 4
    np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5, atol=1e-6)
    for gs, g1 in zip(sharded[1], single[1]):
        np.testing.assert_allclose(gs, g1, rtol=1e-4, atol=1e-6)
