"""Every loss computed inside `jax.jit` on a batch sharded over 4 simulated CPU devices (a
`data` mesh axis) gives the same value and gradients as on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import itm_jax.losses as L
from itm_jax.similarity import cosine_scores, l2_normalize

B, D, C = 16, 8, 6


def _offline(img, txt):
    # Stand-ins for the offline negatives' scores: pairs with other batch items.
    i, t = l2_normalize(img), l2_normalize(txt)
    s = lambda a, b: jnp.sum(a * b, axis=1)
    return s(i, jnp.roll(t, 1, 0)), s(jnp.roll(i, 2, 0), t), s(jnp.roll(i, 3, 0), jnp.roll(t, 1, 0)), s(jnp.roll(i, 1, 0), jnp.roll(t, 2, 0))


OBJECTIVES = {
    "sum_of_hinges": lambda img, txt, lab, w: L.sum_of_hinges(cosine_scores(img, txt)),
    "max_of_hinges": lambda img, txt, lab, w: L.max_of_hinges(
        cosine_scores(img, txt), positives=L.positives_from_ids(lab, lab)
    ),
    "imc": lambda img, txt, lab, w: L.imc(
        cosine_scores(img, txt), l2_normalize(img), l2_normalize(txt), chunk_size=3
    ),
    "cmpm": lambda img, txt, lab, w: L.cmpm(img, txt, lab),
    "cmpc": lambda img, txt, lab, w: L.cmpc(img, txt, lab, w),
    "instance_loss": lambda img, txt, lab, w: L.instance_loss(img @ w, txt @ w, lab),
    "dual_path_ranking": lambda img, txt, lab, w: L.dual_path_ranking(cosine_scores(img, txt)),
    "contrastive_sum_negatives": lambda img, txt, lab, w: L.contrastive_sum_negatives(
        cosine_scores(img, txt), positives=L.positives_from_ids(lab, lab)
    ),
    "contrastive_max_negative": lambda img, txt, lab, w: L.contrastive_max_negative(
        cosine_scores(img, txt)
    ),
    "multimodal_nce": lambda img, txt, lab, w: L.multimodal_nce(
        l2_normalize(img), l2_normalize(txt)
    ),
    "aoq_loss": lambda img, txt, lab, w: L.aoq_loss(cosine_scores(img, txt), *_offline(img, txt)),
}


def test_every_loss_is_covered():
    assert sorted(OBJECTIVES) == sorted(L.names())


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_sharded_matches_single_device(name):
    assert jax.device_count() >= 4, "conftest must request 4 host devices before JAX starts"
    rng = np.random.default_rng(0)
    img = rng.normal(size=(B, D)).astype(np.float32)
    txt = rng.normal(size=(B, D)).astype(np.float32)
    lab = rng.integers(0, C, size=B).astype(np.int32)  # repeated ids: shared positives
    w = rng.normal(size=(D, C)).astype(np.float32)
    f = jax.value_and_grad(OBJECTIVES[name], argnums=(0, 1, 3))

    single = jax.jit(f)(*jax.device_put((img, txt, lab, w), jax.devices()[0]))

    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    args = (jax.device_put(img, rows), jax.device_put(txt, rows), jax.device_put(lab, rows),
            jax.device_put(w, rep))
    sharded = jax.jit(f, out_shardings=(rep, (rows, rows, rep)))(*args)

    assert args[0].sharding.num_devices == 4
    np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5, atol=1e-6)
    for gs, g1 in zip(sharded[1], single[1]):
        np.testing.assert_allclose(gs, g1, rtol=1e-4, atol=1e-6)
