"""Offline hard-negative mining (AOQ round 2): exact lists, resumable files, the CLI."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itm_jax import mining
from train_utils import ROOT, load_config


# Tiny problems compile far longer than they run.
pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # One synthetic-data cache for the session (as in test_train).
    monkeypatch.setenv("ITM_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _data(n=150, d=16, seed=0, max_caps=7):
    """Images with 1..max_caps captions each (captions near their image, so positives would top
    the lists if they were not excluded), duplicate pictures (equal ids at 5/17, 10/11/12) and
    exact ties (images 2 and 3 and the first two captions of image 8 have equal embeddings)."""
    rng = np.random.default_rng(seed)
    cap_to_img = np.repeat(np.arange(n), rng.integers(2, max_caps + 1, n))
    ids = 10 * np.arange(n)
    ids[5], ids[11], ids[12] = ids[17], ids[10], ids[10]
    img = _unit(rng.standard_normal((n, d)))
    img[3] = img[2]
    cap = _unit(img[cap_to_img] + 0.7 * rng.standard_normal((len(cap_to_img), d)))
    first = np.flatnonzero(cap_to_img == 8)[0]
    cap[first + 1] = cap[first]
    return img, cap, cap_to_img, ids


def _brute(img, cap, cap_to_img, ids, h_t, h_i):
    """NumPy reference: ``(i2t, i2t_scores, t2i, t2i_scores)`` from the full score matrix."""
    s = img.astype(np.float64) @ cap.T.astype(np.float64)
    s[ids[:, None] == ids[cap_to_img][None, :]] = -np.inf
    i2t = np.argsort(-s, axis=1, kind="stable")[:, :h_t]
    t2i = np.argsort(-s.T, axis=1, kind="stable")[:, :h_i]
    return i2t, np.take_along_axis(s, i2t, 1), t2i, np.take_along_axis(s.T, t2i, 1)


def _check(got: mining.Mined, img, cap, cap_to_img, ids, h_t, h_i):
    """Equal to the reference by score (tolerating float32 rounding and the order of exact ties),
    each score that of its pair, descending, no positive, no repeat."""
    _, ref_t, _, ref_i = _brute(img, cap, cap_to_img, ids, h_t, h_i)
    assert got.i2t.shape == (len(img), h_t) and got.t2i.shape == (len(cap), h_i)
    assert got.i2t.dtype == got.t2i.dtype == np.int32
    np.testing.assert_allclose(got.i2t_scores, ref_t, atol=2e-6)
    np.testing.assert_allclose(got.t2i_scores, ref_i, atol=2e-6)
    pair_t = np.einsum("nd,nkd->nk", img, cap[got.i2t])
    pair_i = np.einsum("md,mkd->mk", cap, img[got.t2i])
    np.testing.assert_allclose(got.i2t_scores, pair_t, atol=2e-6)
    np.testing.assert_allclose(got.t2i_scores, pair_i, atol=2e-6)
    for scores, lists in ((got.i2t_scores, got.i2t), (got.t2i_scores, got.t2i)):
        step = np.diff(scores, axis=1)
        assert (step <= 0).all() and ((step < 0) | (np.diff(lists, axis=1) > 0)).all()
    assert not (ids[cap_to_img][got.i2t] == ids[:, None]).any()
    assert not (ids[got.t2i] == ids[cap_to_img][:, None]).any()
    for lists in (got.i2t, got.t2i):
        assert (np.diff(np.sort(lists, axis=1), axis=1) > 0).all()


@pytest.mark.parametrize("devices,block", [(1, 32), (1, 96), (4, 32)])
def test_lists_equal_brute_force(devices, block):
    # 150 images: neither blocks of 32 or 96 nor chunks of 4 x 32 divide it.
    img, cap, cap_to_img, ids = _data()
    got = mining.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=40, h_i=12,
                             block_size=block, chunk_blocks=1, devices=jax.devices()[:devices])
    _check(got, img, cap, cap_to_img, ids, 40, 12)


def test_clustered_images_are_recomputed(monkeypatch):
    # Runs of 40 near-identical images: a caption's top images fill its groups of 32 beyond the
    # 5 kept, the check fails and those captions are recomputed over every image.
    rng = np.random.default_rng(3)
    base = rng.standard_normal((5, 16))
    img = _unit(np.repeat(base, 40, axis=0) + 0.01 * rng.standard_normal((200, 16)))
    cap_to_img = np.arange(200)
    cap = _unit(img + 0.5 * rng.standard_normal((200, 16)))
    ids = np.arange(200)
    redone = []
    exact = mining._exact_columns_fn
    monkeypatch.setattr(mining, "_exact_columns_fn",
                        lambda caps, *a, **kw: redone.append(1) or exact(caps, *a, **kw))
    got = mining.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=30, h_i=20, block_size=64,
                             devices=jax.devices()[:1])
    assert redone
    _check(got, img, cap, cap_to_img, ids, 30, 20)


def test_group_top_keeps_the_largest():
    rng = np.random.default_rng(4)
    x = np.round(rng.standard_normal((3, 32, 50)), 1).astype(np.float32)  # many ties
    x[0, 5:, 7] = -np.inf
    values, member, bound = jax.jit(lambda a: mining._group_top(a, 5))(jnp.asarray(x))
    order = np.argsort(-x, axis=1, kind="stable")  # ties: lower member first
    np.testing.assert_array_equal(member, order[:, :5].transpose(1, 0, 2))
    np.testing.assert_array_equal(values, np.take_along_axis(x, order, 1)[:, :5].transpose(1, 0, 2))
    np.testing.assert_array_equal(bound, np.take_along_axis(x, order, 1)[:, 5])


def test_faiss_backend_agrees():
    pytest.importorskip("faiss")
    img, cap, cap_to_img, ids = _data()
    got = mining.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=40, h_i=12,
                             backend="faiss", block_size=64, chunk_blocks=1)
    _check(got, img, cap, cap_to_img, ids, 40, 12)
    ours = mining.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=40, h_i=12,
                              devices=jax.devices()[:1])
    np.testing.assert_allclose(got.i2t_scores, ours.i2t_scores, atol=2e-6)
    np.testing.assert_allclose(got.t2i_scores, ours.t2i_scores, atol=2e-6)
    assert (got.i2t == ours.i2t).mean() > 0.99 and (got.t2i == ours.t2i).mean() > 0.99


def test_h_beyond_the_negatives_is_rejected():
    img, cap, cap_to_img, ids = _data(n=20)
    with pytest.raises(ValueError, match="h_i=19 exceeds the 17 negatives of caption"):
        mining.mine_arrays(img, cap, cap_to_img, image_ids=ids, h_t=5, h_i=19)


def _mine(out, data, **kw):
    img, cap, cap_to_img, ids = data
    return mining.mine(img, cap, cap_to_img, out, image_ids=ids, h_t=40, h_i=12, block_size=32,
                       chunk_blocks=1, devices=jax.devices()[:2], progress=False, **kw)


def _lists(directory):
    return {name: (directory / name).read_bytes() for name in mining.FILES.values()}


def test_killed_job_resumes_to_identical_files(tmp_path, monkeypatch):
    data = _data()
    full = _mine(tmp_path / "full", data)
    assert full["plan"]["chunks"] == 3 and not (tmp_path / "full" / "work").exists()

    save, saved = mining._save_chunk, []

    def killed_after_two(*args):
        if len(saved) == 2:
            raise KeyboardInterrupt("killed")
        save(*args)
        saved.append(args[2])

    monkeypatch.setattr(mining, "_save_chunk", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        _mine(tmp_path / "resumed", data)
    assert not (tmp_path / "resumed" / mining.MANIFEST).exists()
    monkeypatch.setattr(mining, "_save_chunk", lambda *args: (save(*args), saved.append(args[2])))
    resumed = _mine(tmp_path / "resumed", data)
    assert saved == [0, 1, 2]  # the resumed run mined only the third chunk
    assert _lists(tmp_path / "resumed") == _lists(tmp_path / "full")
    assert {**resumed, "created": 0} == {**full, "created": 0}
    # A finished job is not mined again.
    assert _mine(tmp_path / "resumed", data) == resumed and saved == [0, 1, 2]


class _Source:
    def __init__(self, cap_to_img, ids):
        self.cap_to_img, self.image_ids = cap_to_img, ids
        self.num_images, self.num_captions = len(ids), len(cap_to_img)


def test_load_mined_validates(tmp_path):
    data = _data()
    _, _, cap_to_img, ids = data
    out = tmp_path / "mining"
    _mine(out, data, metadata={"teacher": {"step": 7}, "dataset": {"name": "random"}})
    i2t, t2i, manifest = mining.load_mined(out, _Source(cap_to_img, ids), h_t=30, h_i=12)
    assert i2t.shape == (150, 30) and t2i.shape == (len(cap_to_img), 12)
    assert manifest["teacher"] == {"step": 7} and manifest["dataset"]["name"] == "random"
    assert manifest["dataset"]["num_images"] == 150 and manifest["backend"] == "jax"

    def rejects(match, source=_Source(cap_to_img, ids), directory=out, **kw):
        with pytest.raises(ValueError, match=match):
            mining.load_mined(directory, source, **kw)

    rejects(r"h_t=41 must be in \[1, 40\]", h_t=41)
    rejects("lower h_i or re-run itm-mine with --h_i=13", h_i=13)
    rejects("another caption->image map", _Source(cap_to_img, ids + 1))
    rejects("mined on 150 images / .* this training split has 149",
            _Source(cap_to_img[cap_to_img < 149], ids[:149]))
    rejects(r"did you mean .*mining\?", directory=tmp_path)
    (out / "t2i.npy").write_bytes((out / "t2i.npy").read_bytes()[:-8])
    rejects("t2i.npy is truncated or altered")
    (out / "i2t.npy").unlink()
    rejects("i2t.npy is missing")
    (out / mining.MANIFEST).write_text('{"format": "itm_jax.mining/1", "datas')
    rejects("manifest.json is corrupted")


def test_cli_mines_a_trained_smoke_run(tmp_path):
    # Round 1: a few steps with one validation, so the run has a best checkpoint.
    from itm_jax import train
    from itm_jax.data.source import image_ids

    config = load_config()
    config.num_steps, config.eval_every, config.checkpoint_every = 3, 3, 3
    run = tmp_path / "round1"
    trainer = train.Trainer(config, run)
    trainer.train()
    out = subprocess.run(
        [sys.executable, "-m", "itm_jax.mine", f"--config={ROOT / 'configs' / 'default.py'}:smoke",
         f"--workdir={run}", "--h_t=50", "--h_i=10", "--config.num_steps=3"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"})  # compiling dominates
    assert out.returncode == 0, out.stderr[-3000:]
    source = trainer.sources["train"]
    i2t, t2i, manifest = mining.load_mined(run / "mining", source)
    assert i2t.shape == (source.num_images, 50) and t2i.shape == (source.num_captions, 10)
    assert manifest["teacher"]["kind"] == "best" and manifest["teacher"]["step"] == 3
    assert manifest["dataset"]["name"] == "synthetic" and len(manifest["config_sha256"]) == 64
    ids = image_ids(source)
    assert not (ids[source.cap_to_img][i2t] == ids[:, None]).any()
    assert json.loads((run / "mining" / mining.MANIFEST).read_text()) == manifest

    # Without a best checkpoint the teacher is the latest one (here the same step-3 weights).
    from itm_jax.mine import teacher_weights

    best, _, _ = teacher_weights(trainer, run)
    shutil.rmtree(run / "best")
    params, _, info = teacher_weights(train.Trainer(config, run), run)
    assert info["kind"] == "checkpoints" and info["step"] == 3
    for a, b in zip(jax.tree.leaves(best), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
