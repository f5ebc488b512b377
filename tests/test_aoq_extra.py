"""AOQ round 2 as a batch extra: built from the run config, adds the offline items to the
batches, scores them inside the step."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from itm_jax.aoq import extra, job
from itm_jax.data.pipeline import train_loader
from itm_jax.data.synthetic import synthetic_splits
from itm_jax.errors import ConfigError

pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")


def _config(variant, mining_dir=""):
    return ml_collections.ConfigDict(dict(
        losses=[dict(name="max_of_hinges"), dict(name="aoq_loss", variant=variant)],
        aoq=dict(mining_dir=str(mining_dir), h_t=20, h_i=4, resample_matching=True),
        data=dict(caps_per_image=5)))


def test_online_needs_no_extra_and_offline_needs_mined_lists():
    assert extra.from_config(_config("online"), train_source=None) is None
    with pytest.raises(ConfigError, match=r"aoq_loss variant 'offquin' needs offline hard "
                       r"negatives: run `itm-mine` .* --config.aoq.mining_dir=RUN/mining"):
        extra.from_config(_config("offquin"), train_source=None)


def test_offline_items_reach_the_batches(tmp_path):
    src = synthetic_splits(seed=0, num_train=64, num_val=1, num_test=1, image_size=32)["train"]
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    job.mine(unit(rng.standard_normal((64, 8))), unit(rng.standard_normal((320, 8))), src,
             tmp_path, h_t=20, h_i=4, block_size=32, devices=jax.devices()[:1], progress=False)
    negatives = extra.from_config(_config("adaptive", tmp_path), src)
    assert set(negatives.keys) == {"i_off_image", "i_off_image_feat", "i_tilde_image",
                                   "i_tilde_image_feat", "t_off_tokens", "t_off_length",
                                   "t_tilde_tokens", "t_tilde_length"}
    tokenize = lambda caption: (np.array([len(caption), 1], np.int32), np.int32(2))
    batch = next(iter(train_loader(src, global_batch_size=4, seed=0, tokenize=tokenize,
                                   image_transform=lambda im, rng: im.astype(np.float32),
                                   shard_index=0, shard_count=1, extras=[negatives])))
    for role in ("i_off", "i_tilde"):
        assert batch[f"{role}_image"].shape == batch["image"].shape == (4, 32, 32, 3)
    for role in ("t_off", "t_tilde"):
        assert batch[f"{role}_tokens"].shape == batch["tokens"].shape == (4, 2)
    i2t = negatives.sampler.i2t
    np.testing.assert_array_equal(
        batch["t_off_tokens"][:, 0],
        [len(src.caption(int(t))["caption"])
         for t in i2t[batch["image_index"], batch["offline_rank"]]])


def test_outputs_are_the_offline_scores():
    """``rows`` gives ``[i_off; i_tilde]`` and ``[t_off; t_tilde]``; ``outputs`` scores the
    embedded rows (here: features as they are, tokens as floats) against the batch pairs."""
    rng = np.random.default_rng(1)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    b, d = 3, 4
    batch = {f"{r}_image_feat": rng.standard_normal((b, d)).astype(np.float32)
             for r in ("i_off", "i_tilde")}
    batch.update({f"{r}_tokens": rng.integers(1, 9, (b, d)).astype(np.int32)
                  for r in ("t_off", "t_tilde")})
    batch.update({f"{r}_length": np.full(b, d, np.int32) for r in ("t_off", "t_tilde")})
    out = {"img_emb": unit(rng.standard_normal((b, d))), "txt_emb": unit(rng.standard_normal((b, d)))}
    negatives = extra.OfflineNegatives(None, None)
    images, captions = negatives.rows(batch)
    np.testing.assert_array_equal(images["image_feat"], np.concatenate(
        [batch["i_off_image_feat"], batch["i_tilde_image_feat"]]))
    np.testing.assert_array_equal(captions["length"], np.full(2 * b, d))
    got = jax.jit(lambda out, i, c: negatives.outputs(None, batch, out, i, c))(
        out, images["image_feat"], captions["tokens"].astype(jnp.float32))
    i_off, i_tilde = unit(batch["i_off_image_feat"]), unit(batch["i_tilde_image_feat"])
    t_off, t_tilde = unit(batch["t_off_tokens"] * 1.0), unit(batch["t_tilde_tokens"] * 1.0)
    assert set(got) == {"s_i_toff", "s_ioff_t", "s_ioff_toff", "s_itilde_ttilde"}
    for key, a, c in (("s_i_toff", out["img_emb"], t_off), ("s_ioff_t", i_off, out["txt_emb"]),
                      ("s_ioff_toff", i_off, t_off), ("s_itilde_ttilde", i_tilde, t_tilde)):
        np.testing.assert_allclose(got[key], np.sum(a * c, -1), rtol=1e-5, err_msg=key)
