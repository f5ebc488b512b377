"""AOQ round 2 end to end: round-1 run -> itm-mine -> round-2 training on the mined negatives."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itm_jax.aoq.teacher import mine_run
from itm_jax.errors import UserError
from itm_jax.experiment import Experiment
from itm_jax.training import loop
from itm_jax.training.metric_writer import read_metrics
from itm_jax.training.step import model_outputs
from itm_jax.similarity import l2_normalize
from train_utils import ROOT, load_config


@pytest.fixture(scope="module")
def round1(tmp_path_factory):
    root = tmp_path_factory.mktemp("aoq")
    c = load_config("default.py", "loss=mh,smoke")
    loop.train(Experiment(c, root / "round1"))
    return c, root / "round1", mine_run(c, root / "round1", progress=False)


def round2_config(mining_dir, **aoq):
    c = load_config("default.py", "loss=aoq,smoke")
    c.aoq.mining_dir = str(mining_dir)
    c.aoq.update(aoq)
    return c


def test_offline_scores_are_the_cosines_of_the_drawn_items(round1, tmp_path):
    _, _, mining_dir = round1
    trainer = Experiment(round2_config(mining_dir), tmp_path)
    batch = next(iter(trainer.loader()))
    model = trainer.model
    model.eval()
    g = trainer.global_batch(batch)
    out = model_outputs(model, g, use_id_positives=True, extras=trainer.extras)

    def img(key):
        return np.asarray(l2_normalize(model.embed_images({"image_feat": g[key]})))

    def cap(role):
        return np.asarray(l2_normalize(model.embed_captions(
            {"tokens": g[f"{role}_tokens"], "length": g[f"{role}_length"]})))

    i, t = np.asarray(out["img_emb"]), np.asarray(out["txt_emb"])
    np.testing.assert_allclose(i, img("image_feat"), rtol=1e-5, atol=1e-6)
    i_off, i_tilde = img("i_off_image_feat"), img("i_tilde_image_feat")
    t_off, t_tilde = cap("t_off"), cap("t_tilde")
    want = {"s_i_toff": (i * t_off).sum(1), "s_ioff_t": (i_off * t).sum(1),
            "s_ioff_toff": (i_off * t_off).sum(1), "s_itilde_ttilde": (i_tilde * t_tilde).sum(1)}
    for k, v in want.items():
        np.testing.assert_allclose(np.asarray(out[k]), v, rtol=1e-5, atol=1e-5, err_msg=k)
    # The drawn captions are the mined ones: t_off is in the image's list at the drawn rank.
    i2t = np.load(mining_dir / "i2t.npy")
    rank, image = batch["offline_rank"], batch["image_index"]
    t_off_tokens = np.stack([trainer.tokenize(trainer.sources["train"].caption(int(j))["caption"])[0]
                             for j in i2t[image, rank]])
    np.testing.assert_array_equal(batch["t_off_tokens"], t_off_tokens)


def test_round2_trains_on_the_mined_negatives(round1, tmp_path):
    _, _, mining_dir = round1
    state = loop.train(Experiment(round2_config(mining_dir), tmp_path))
    assert int(state.step) == 12
    rows = [r for r in read_metrics(tmp_path) if "loss/aoq_loss" in r]
    assert rows and all(np.isfinite(r["loss/aoq_loss"]) for r in rows)


def test_round2_with_offline_terms_weighted_zero_trains_exactly_as_round1(round1, tmp_path):
    """``loss=aoq_zero``: round 2's pipeline with the AOQ term weighted 0 (a stage leaves a
    weight-0 loss out) is MH: every batch draws its offline items, and that must disturb
    neither the batches nor their order: the same weights as round 1, bit for bit."""
    config, round1_dir, mining_dir = round1
    c = load_config("default.py", "loss=aoq_zero,smoke")
    c.aoq.mining_dir = str(mining_dir)
    exp = Experiment(c, tmp_path)
    assert "t_off_tokens" in next(iter(exp.loader()))  # the offline items are drawn
    loop.train(exp)
    ours, mh = (Experiment(cfg, d).weights("latest")[0]
                for cfg, d in ((c, tmp_path), (config, round1_dir)))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(mh), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_offline_variants_need_mined_lists_and_matching_ones(round1, tmp_path):
    config, _, mining_dir = round1
    c = round2_config("")
    with pytest.raises(UserError, match="itm-mine"):
        Experiment(c, tmp_path / "none")
    c.losses[0].variant = "online"  # round 1's loss needs no lists
    Experiment(c, tmp_path / "online")
    other = round2_config(mining_dir)
    other.data.synthetic.num_train = 150  # another dataset than the one mined
    with pytest.raises(UserError, match="another dataset"):
        Experiment(other, tmp_path / "other")
    with pytest.raises(UserError, match="h_t"):
        Experiment(round2_config(mining_dir, h_t=301), tmp_path / "long")


def test_itm_mine_command_mines_the_same_lists_and_resumes_finished_jobs(round1, tmp_path):
    _, run, mining_dir = round1
    env = dict(os.environ)  # the same 4 devices as this process: the same embeddings
    command = [sys.executable, "-m", "itm_jax.cli.mine", "--config=configs/default.py:loss=mh,smoke",
               f"--workdir={tmp_path}", f"--checkpoint={run}"]
    for expected in ("i2t [", "already mined with this teacher"):
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0 and expected in proc.stdout, proc.stderr[-2000:]
    for name in ("i2t.npy", "t2i.npy", "i2t_scores.npy", "t2i_scores.npy"):
        assert (tmp_path / "mining" / name).read_bytes() == (mining_dir / name).read_bytes()


def test_vsrn_embeds_the_offline_items_in_the_batch_forward_pass():
    """A model with BatchNorm (VSRN) normalises the batch and its offline items with one set of
    batch statistics, and its running statistics move once per step: as one forward pass of all
    the rows. (Embedded apart, the offline images got their own statistics and a second
    update, and VSRN's round 2 collapsed on the built-in data.)"""
    from flax import nnx

    from itm_jax.models.batch import with_rows
    from itm_jax.models.dual_encoder import build_dual_encoder

    c = load_config("default.py", "loss=aoq,model=vsrn,smoke")
    model = build_dual_encoder(c.model, vocab_size=20, image_dim=12, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    b, r = 4, 4

    def items(n):
        lengths = rng.integers(2, 6, n).astype(np.int32)
        return ({"image_feat": rng.standard_normal((n, r, 12)).astype(np.float32)},
                {"tokens": rng.integers(1, 20, (n, 6)).astype(np.int32), "length": lengths})

    (images, captions), (extra_images, extra_captions) = items(b), items(2 * b)
    batch = {**images, **captions}
    for block in model.image_encoder.gcn:  # trained BatchNorm: the statistics matter
        block.bn.scale[...] = jnp.ones_like(block.bn.scale[...])
    model.train()
    alone = nnx.clone(model)
    every_row = alone.embed_images(with_rows(batch, extra_images))  # one pass, one update
    out = model(batch, extra_images=extra_images, extra_captions=extra_captions)
    np.testing.assert_allclose(out["img_feat"], every_row[:b], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["extra_images"], every_row[b:], rtol=1e-5, atol=1e-6)
    for ours, ref in zip(jax.tree.leaves(nnx.state(model, nnx.BatchStat)),
                         jax.tree.leaves(nnx.state(alone, nnx.BatchStat)), strict=True):
        np.testing.assert_allclose(ours, ref, rtol=1e-6)
    batch_only = nnx.clone(alone).embed_images(batch)  # the batch's own statistics differ
    assert np.abs(np.asarray(batch_only - every_row[:b])).max() > 1e-3
