"""Region models (SCAN, BFAN, VSRN) through the whole library on synthetic region features:
training, the retrieval metrics by the model's scorer, the run API, export and the report."""

import json

import numpy as np
import pytest

from itm_jax import similarity
from itm_jax.evaluation import metrics, report
from itm_jax.run import load_run
from itm_jax.training.loop import train_and_evaluate
from train_utils import load_config


@pytest.fixture(scope="module")
def scan_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("scan") / "run"
    config = load_config("scan_f30k.py", "direction=t2i,agg=lse,smoke")
    config.eval_every = 3
    return workdir, train_and_evaluate(config, workdir)


def _ranks_from_matrix(s, cap_to_img):
    """VSE++-protocol ranks from a full score matrix, in plain NumPy."""
    n = s.shape[0]
    i2t = np.array([np.sum(s[i] > s[i, cap_to_img == i].max()) for i in range(n)])
    t2i = np.array([np.sum(s[:, j] > s[cap_to_img[j], j]) for j in range(s.shape[1])])
    return i2t, t2i


def test_set_model_metrics_are_those_of_its_score_matrix(scan_run):
    workdir, tested = scan_run
    run = load_run(workdir)
    img, cap = run.embed_split("test")
    assert img.ndim == 3 and cap["words"].ndim == 3
    assert cap["length"].shape == (cap["words"].shape[0],)
    assert run.evaluate("test") == pytest.approx(tested)
    options = dict(run.config.model.scan)
    direct = np.asarray(similarity.scan_scores(img, cap["words"], cap["length"], **options))
    s = run.scores(img, cap)
    np.testing.assert_allclose(s, direct, rtol=1e-5, atol=1e-6)
    c2i = np.asarray(run.experiment.sources["test"].cap_to_img)
    i2t, t2i = _ranks_from_matrix(s.astype(np.float64), c2i)
    got_i2t = metrics.i2t(img, cap, cap_to_img=c2i, scorer=run.experiment.scorer)["ranks"]
    got_t2i = metrics.t2i(img, cap, cap_to_img=c2i, scorer=run.experiment.scorer)["ranks"]
    # Equal up to float ties between the blocked and the direct scores.
    assert np.mean(got_i2t == i2t) > 0.95 and np.mean(got_t2i == t2i) > 0.95
    features = np.stack([run.experiment.sources["test"].image(i)["image_feat"] for i in (0, 1)])
    np.testing.assert_allclose(run.embed_images(features), img[:2], rtol=1e-5, atol=1e-6)
    top, scores = run.top_images(cap, img, k=3)
    np.testing.assert_array_equal(top[:, 0], np.argmax(s, axis=0))
    assert scores.shape == (s.shape[1], 3)


def test_a_set_model_teacher_mines_the_lists_of_its_attention_scores(scan_run, tmp_path):
    from itm_jax.aoq import store
    from itm_jax.aoq.teacher import mine_run

    workdir, _ = scan_run
    config = load_config("scan_f30k.py", "direction=t2i,agg=lse,smoke")
    out = mine_run(config, tmp_path, workdir, h_t=10, h_i=4, progress=False)
    run = load_run(workdir)
    source = run.experiment.sources["train"]
    i2t, t2i, manifest = store.load_mined(out, source, h_t=10, h_i=4)
    assert manifest["teacher"]["run_dir"] == str(workdir.absolute())
    img, cap = run.embed_split("train")
    s = run.scores(img, cap).astype(np.float64)
    c2i = np.asarray(source.cap_to_img)
    s[np.arange(len(img))[:, None] == c2i[None, :]] = -np.inf  # synthetic ids are the indices
    lists = np.load(out / store.FILES["i2t_scores"]), np.load(out / store.FILES["t2i_scores"])
    np.testing.assert_allclose(lists[0], -np.sort(-s, axis=1)[:, :10], atol=1e-5)
    np.testing.assert_allclose(lists[1], -np.sort(-s.T, axis=1)[:, :4], atol=1e-5)
    np.testing.assert_allclose(lists[0], np.take_along_axis(s, i2t, 1), atol=1e-5)
    np.testing.assert_allclose(lists[1], np.take_along_axis(s.T, t2i, 1), atol=1e-5)


def test_set_model_export_and_report(scan_run, tmp_path):
    workdir, _ = scan_run
    out = load_run(workdir).export("test", tmp_path / "export")
    meta = json.loads((out / "export.json").read_text())
    n, m = meta["shapes"]["images"][0], meta["shapes"]["captions"][0]
    assert len(meta["shapes"]["images"]) == 3 and meta["shapes"]["caption_lengths"] == [m]
    assert meta["shapes"]["cap_to_img"] == [m] and n == 16
    page = report.write_report(workdir, num_examples=2, max_k=5)
    assert page.path.exists() and page.runs[0].metrics["rsum"] > 0


def test_bfan_trains_and_evaluates(tmp_path):
    tested = train_and_evaluate(load_config("bfan_f30k.py", "focal=prob,smoke"), tmp_path / "run")
    assert np.isfinite(tested["rsum"])


def _records(workdir, key):
    log = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r[key] for r in map(json.loads, log) if key in r]


def test_ensemble_averages_the_runs_score_matrices(scan_run, tmp_path):
    workdir, _ = scan_run
    other = tmp_path / "i2t"
    train_and_evaluate(load_config("scan_f30k.py", "direction=i2t,agg=avg,smoke"), other)
    from itm_jax.run import evaluate_ensemble

    runs = [load_run(workdir), load_run(other)]
    got = evaluate_ensemble(runs, "test")
    mean = sum(r.scores(*r.embed_split("test")) for r in runs) / 2
    c2i = np.asarray(runs[0].experiment.sources["test"].cap_to_img)
    i2t, t2i = _ranks_from_matrix(mean.astype(np.float64), c2i)
    want = 100 * np.mean(i2t < 1) + 100 * np.mean(t2i < 1)
    assert got["i2t_r1"] + got["t2i_r1"] == pytest.approx(want, abs=100 / len(c2i) + 1e-6)
    assert got != runs[0].evaluate("test")  # the second model changed the scores


def test_aoq_round2_trains_scan_on_the_lists_of_a_vsrn_teacher(tmp_path):
    # The paper's chain: round 1 is VSRN, whose scores rank the negatives of every round-2
    # model; SCAN scores its offline items with its own attention scorer.
    from itm_jax.aoq.teacher import mine_run

    teacher = tmp_path / "round1"  # VSRN, with its caption-generation term
    train_and_evaluate(load_config("aoq_round1_f30k.py", "smoke"), teacher)
    captions = _records(teacher, "loss/caption_generation")
    assert captions and all(t > 0 for t in captions)
    mining = mine_run(load_config("aoq_round1_f30k.py", "smoke"), teacher, h_t=20, h_i=4,
                      progress=False)
    config = load_config("aoq_round2_f30k.py", "model=scan,smoke")
    config.aoq.update(mining_dir=str(mining), h_t=20, h_i=4)
    tested = train_and_evaluate(config, tmp_path / "round2")
    assert np.isfinite(tested["rsum"])
    offline = _records(tmp_path / "round2", "loss/aoq_loss")
    assert offline and all(np.isfinite(offline))
