"""The resumable mining job and its files: a SIGKILLed job loses at most one block, the lists
are refused for another dataset (split fingerprints), the write volume stays small."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from itm_jax.aoq import job, kernel, store
from itm_jax.data.synthetic import synthetic_splits
from itm_jax.errors import ConfigError, DataError
from test_aoq_kernel import _data

pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")

TESTS = pathlib.Path(__file__).parent


class _Source:
    """The index side of a split: captions ``caption {j}``, ``cap_to_img`` and image ids."""

    def __init__(self, cap_to_img, ids, texts=None):
        self.cap_to_img, self.image_ids = np.asarray(cap_to_img), np.asarray(ids)
        self.num_images, self.num_captions = len(ids), len(cap_to_img)
        self.texts = texts or [f"caption {j}" for j in range(len(cap_to_img))]

    def caption(self, j):
        return {"caption": self.texts[j], "caption_id": np.int64(j)}


def _mine(out, data, *, devices=1, **kw):
    img, cap, cap_to_img, ids = data
    kw = {"h_t": 40, "h_i": 12, "block_size": 32, "progress": False, **kw}
    return job.mine(img, cap, _Source(cap_to_img, ids), out, devices=jax.devices()[:devices],
                    **kw)


def _lists(directory):
    return {name: (directory / name).read_bytes() for name in store.FILES.values()}


def _count_steps(monkeypatch):
    """Records the steps the jax backend computes from now on (each device's first image row)."""
    steps, step = [], kernel._JaxMiner.step
    monkeypatch.setattr(kernel._JaxMiner, "step", lambda self, starts, *a: steps.append(
        starts.tolist()) or step(self, starts, *a))
    return steps


# A child process mining the problem of `data.npz` that SIGKILLs itself in the middle of
# writing the record of step KILL_AT: after its temporary file is written, before the rename.
_KILLED = """
import os, signal, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from itm_jax.aoq import store
from test_aoq_job import _mine

writes, atomic_write = [], store.atomic_write

def killed(path, write):
    if len(writes) == {kill_at}:
        with open(path.parent / ("." + path.name + ".torn.tmp"), "wb") as f:
            write(f)
        os.kill(os.getpid(), signal.SIGKILL)
    writes.append(path.name)
    atomic_write(path, write)

store.atomic_write = killed
z = np.load({data!r})
_mine({out!r}, tuple(z[k] for k in ("img", "cap", "cap_to_img", "ids")))
"""


def test_sigkilled_job_loses_at_most_one_block(tmp_path, monkeypatch):
    data = _data(n=600)  # 19 blocks of 32 images
    steps = _count_steps(monkeypatch)
    full = _mine(tmp_path / "full", data, keep_work=True)
    total = full["plan"]["steps"]
    assert total == len(steps) == 19 and full["plan"]["block_size"] == 32

    np.savez(tmp_path / "data.npz", **dict(zip(("img", "cap", "cap_to_img", "ids"), data)))
    kill_at = 7
    code = _KILLED.format(tests=str(TESTS), kill_at=kill_at, data=str(tmp_path / "data.npz"),
                          out=str(tmp_path / "resumed"))
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"})
    assert child.returncode == -9, child.stderr[-3000:]  # SIGKILL
    work = tmp_path / "resumed" / "work"
    assert sorted(p.name for p in work.glob("step*.npz")) == [
        f"step{c:06d}.npz" for c in range(kill_at)]
    assert list(work.glob(".step*.torn.tmp"))  # the torn record of step 7 is left behind
    assert not (tmp_path / "resumed" / store.MANIFEST).exists()

    steps.clear()
    resumed = _mine(tmp_path / "resumed", data)
    # The killed run had computed steps 0-7 (7 saved); the resumed run mines 7-18: one block
    # of work is lost.
    assert len(steps) == total - kill_at and steps[0] == [kill_at * 32]
    assert _lists(tmp_path / "resumed") == _lists(tmp_path / "full")
    assert {**resumed, "created": 0} == {**full, "created": 0}
    assert not work.exists()
    # A finished job is not mined again.
    steps.clear()
    assert _mine(tmp_path / "resumed", data) == resumed and not steps


def test_write_volume_is_a_small_multiple_of_the_lists(tmp_path):
    data = _data(n=600)
    manifest = _mine(tmp_path, data, keep_work=True)
    records = sum(p.stat().st_size for p in (tmp_path / "work").glob("step*.npz"))
    final = sum((tmp_path / f["name"]).stat().st_size for f in manifest["files"].values())
    # 19 steps: the i2t rows once, each t2i list about 1 + ln(19) = 3.9 times (entries 9 bytes
    # against 8), against 19 times for a rewrite of the t2i lists after every step.
    assert records < 3.5 * final, records / final


def test_multi_device_steps_resume_to_identical_files(tmp_path, monkeypatch):
    data = _data()
    full = _mine(tmp_path / "full", data, devices=2)
    assert full["plan"] == {"block_size": 32, "devices": 2, "processes": 1, "steps": 3}
    save, saved = store.save_npz, []

    def killed_after_two(path, meta, **arrays):
        if len(saved) == 2:
            raise KeyboardInterrupt("killed")
        save(path, meta, **arrays)
        saved.append(meta["step"])

    monkeypatch.setattr(store, "save_npz", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        _mine(tmp_path / "resumed", data, devices=2)
    monkeypatch.setattr(store, "save_npz", save)
    steps = _count_steps(monkeypatch)
    _mine(tmp_path / "resumed", data, devices=2)
    # The third step only: device 0 mines images 0-95, device 1 96-149 (and padding).
    assert steps == [[64, 160]]
    assert _lists(tmp_path / "resumed") == _lists(tmp_path / "full")


def test_attention_mining_resumes_to_identical_files(tmp_path, monkeypatch):
    """A set model's job (sets, attention scorer) saves and replays its steps as any other."""
    from itm_jax.scoring import AttentionScorer
    from test_aoq_kernel import _sets

    data = _sets()
    scorer = AttentionScorer("bfan", (("focal", "equal"), ("lambda_softmax", 20.0)))
    kw = {"h_t": 20, "h_i": 8, "scorer": scorer}
    full = _mine(tmp_path / "full", data, **kw)
    assert full["plan"]["steps"] == 3
    save, saved = store.save_npz, []

    def killed_after_one(path, meta, **arrays):
        if saved:
            raise KeyboardInterrupt("killed")
        save(path, meta, **arrays)
        saved.append(meta["step"])

    monkeypatch.setattr(store, "save_npz", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        _mine(tmp_path / "resumed", data, **kw)
    monkeypatch.setattr(store, "save_npz", save)
    steps = _count_steps(monkeypatch)
    _mine(tmp_path / "resumed", data, **kw)
    assert steps == [[32], [64]]
    assert _lists(tmp_path / "resumed") == _lists(tmp_path / "full")


def test_replayed_changes_rebuild_the_lists():
    # Steps of a merge with ties and -inf entries, replayed from their changes alone.
    rng = np.random.default_rng(5)
    m, h = 50, 6
    lists = tuple(a[0] for a in kernel.empty_state(1, m, h))
    replayed = kernel.empty_state(1, m, h)
    for step in range(8):
        part_v = np.round(rng.standard_normal((m, h)), 1).astype(np.float32)
        part_v[rng.random((m, h)) < 0.1] = -np.inf
        part_i = np.sort(rng.choice(1000, (m, h)), axis=1).astype(np.int32) + 1000 * step
        order = np.argsort(-part_v, axis=1, kind="stable")
        part_v, part_i = (np.take_along_axis(a, order, 1) for a in (part_v, part_i))
        values, index, new = kernel.merge_np(*lists[:2], part_v, part_i, h)
        bound = np.maximum(lists[2], np.where(rng.random(m) < 0.3, rng.standard_normal(m), -np.inf)
                           ).astype(np.float32)
        change = job._change((values[None], index[None], bound[None]), new[None],
                             lists[2][None])
        lists = (values, index, bound)
        job._apply(replayed, change)
        for a, b in zip(lists, replayed):
            np.testing.assert_array_equal(a, b[0])


def test_load_mined_validates(tmp_path):
    data = _data()
    _, _, cap_to_img, ids = data
    out = tmp_path / "mining"
    _mine(out, data, metadata={"teacher": {"step": 7}, "dataset": {"name": "random"}})
    i2t, t2i, manifest = store.load_mined(out, _Source(cap_to_img, ids), h_t=30, h_i=12)
    assert i2t.shape == (150, 30) and t2i.shape == (len(cap_to_img), 12)
    assert manifest["teacher"] == {"step": 7} and manifest["dataset"]["name"] == "random"
    assert manifest["dataset"]["num_images"] == 150 and manifest["backend"] == "jax"

    def rejects(match, source=_Source(cap_to_img, ids), directory=out, error=DataError, **kw):
        with pytest.raises(error, match=match):
            store.load_mined(directory, source, **kw)

    rejects(r"h_t=41 must be in \[1, 40\]", error=ConfigError, h_t=41)
    rejects("lower h_i or re-run itm-mine with --h_i=13", error=ConfigError, h_i=13)
    rejects("mined on another dataset", _Source(cap_to_img, ids + 1))
    texts = [f"caption {j}" for j in range(len(cap_to_img))]
    texts[3] = "another caption"
    rejects("mined on another dataset", _Source(cap_to_img, ids, texts))
    rejects("mined on 150 images / .* this training split has 149",
            _Source(cap_to_img[cap_to_img < 149], ids[:149]))
    rejects(r"did you mean .*mining\?", directory=tmp_path)
    (out / "t2i.npy").write_bytes((out / "t2i.npy").read_bytes()[:-8])
    rejects("t2i.npy is truncated or altered")
    (out / "i2t.npy").unlink()
    rejects("i2t.npy is missing")
    (out / store.MANIFEST).write_text(f'{{"format": "{store.FORMAT}", "datas')
    rejects("manifest.json is corrupted")


def test_lists_of_another_synthetic_seed_are_refused(tmp_path):
    # Same sizes, image ids and caption->image map; other captions.
    sizes = dict(num_train=64, num_val=1, num_test=1)
    ours, other = (synthetic_splits(seed=s, **sizes)["train"] for s in (0, 1))
    np.testing.assert_array_equal(ours.image_ids, other.image_ids)
    np.testing.assert_array_equal(ours.cap_to_img, other.cap_to_img)
    rng = np.random.default_rng(0)
    emb = lambda n: (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(
        rng.standard_normal((n, 8)).astype(np.float32))
    job.mine(emb(ours.num_images), emb(ours.num_captions), ours, tmp_path, h_t=20, h_i=4,
             block_size=32, devices=jax.devices()[:1], progress=False)
    assert store.load_mined(tmp_path, ours)[0].shape == (64, 20)
    with pytest.raises(DataError) as e:
        store.load_mined(tmp_path, other)
    assert str(e.value) == (
        f"{tmp_path} was mined on another dataset than this training split (their captions, "
        f"image ids or caption->image map differ); {store.RERUN}.")
    assert "itm-mine" in store.RERUN and "this dataset" in store.RERUN


def test_split_fingerprint_reads_captions_ids_and_map():
    base = _Source([0, 0, 1], [4, 5])
    fingerprints = {store.split_fingerprint(s) for s in (
        base, _Source([0, 1, 1], [4, 5]), _Source([0, 0, 1], [4, 6]),
        _Source([0, 0, 1], [4, 5], ["caption 0", "caption 1", "caption 3"]),
        # The same bytes cut into captions differently.
        _Source([0, 0, 1], [4, 5], ["caption 0c", "aption 1", "caption 2"]))}
    assert len(fingerprints) == 5
    assert store.split_fingerprint(_Source([0, 0, 1], [4, 5])) == store.split_fingerprint(base)
    assert len(store.split_fingerprint(base)) == 64  # sha256, hex
