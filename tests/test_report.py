"""HTML retrieval report (itm_jax.evaluation.report, ``itm-eval --report``) on two tiny trained runs.

The report is checked as markup (tables, data-URI images, SVG curves, ranks consistent with the
top-5 lists) and in headless Chromium: its DOM holds every image and chart, and a screenshot
differs from one of the same page with blanked images by at least the thumbnails' area, in
many colours, so the embedded pictures really decode and show.
"""

import base64
import html
import html.parser
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from itm_jax.data.datasets import synthetic_cache_dir
from itm_jax.errors import RunError
from itm_jax.evaluation import report
from itm_jax.run import load_run
from itm_jax.training.loop import train_and_evaluate
from train_utils import ROOT, load_config

RUNS = {
    "mh": [{"name": "max_of_hinges", "margin": 0.2}],
    "sh": [{"name": "sum_of_hinges", "margin": 0.2}],
}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-quic", "--hide-scrollbars",
                  "--force-device-scale-factor=1")
WINDOW = (1280, 5000)
# Display sizes of the thumbnails in report._CSS: queries 112 px, the rest 88 px.
QUERY_PX, THUMB_PX = 112, 88


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, skip_xla_optimizations):
    """``(dir, tested, cache)``: an ablation-style directory of two smoke runs, ``dir/mh`` and
    ``dir/sh``, the test metrics each wrote at the end of training, and the data cache."""
    root = tmp_path_factory.mktemp("ablation")
    # The synthetic cache test_train uses: generating it is the slow part of a smoke run.
    cache = str(tmp_path_factory.getbasetemp() / "cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ITM_JAX_CACHE", cache)
        tested = {}
        for name, losses in RUNS.items():
            c = load_config()
            c.losses = losses
            c.mesh.data = 1
            c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 8, 2, 4, 8
            train_and_evaluate(c, root / name)
            tested[name] = json.loads((root / name / "test_metrics.json").read_text())
    return root, tested, cache


@pytest.fixture(scope="module")
def built(workdir):
    """``(Report, page)`` of the whole directory, built once through the Python API."""
    root, _, cache = workdir
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ITM_JAX_CACHE", cache)
        result = report.write_report(root)
    return result, result.path.read_text(encoding="utf-8")


class _Tags(html.parser.HTMLParser):
    """Start tags of a page as ``(tag, attrs)``."""

    def __init__(self, page: str):
        super().__init__()
        self.tags = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def count(self, tag, **attrs):
        return sum(t == tag and all(a.get(k) == v for k, v in attrs.items())
                   for t, a in self.tags)


def _images(page: str) -> list[str]:
    return [a["src"] for t, a in _Tags(page).tags if t == "img"]


def test_report_of_a_directory_of_runs(workdir, built):
    root, tested, _ = workdir
    result, page = built
    assert result.path == root / "report.html" and not result.single_run
    assert [r.name for r in result.runs] == ["mh", "sh"]
    # Each run evaluated exactly as at the end of training (itm-eval's numbers).
    for run in result.runs:
        assert run.metrics == pytest.approx(tested[run.name])
        assert run.rsum == pytest.approx(tested[run.name]["rsum"])
        np.testing.assert_allclose(report.recall_at_k(run.i2t["ranks"], 10)[[0, 4, 9]],
                                   [run.i2t["r1"], run.i2t["r5"], run.i2t["r10"]])
        assert any("val/rsum" in row for row in run.history)
    assert result.shown == max(result.runs, key=lambda r: r.metrics["rsum"]).name

    tags = _Tags(page)
    # Metrics, image->text and text->image tables; one metrics row per run.
    assert tags.count("table") == 3
    assert page.count('<tr class="shown">') == 1
    # Recall@K both ways and validation R-sum (a line per run), a loss chart per run.
    assert tags.count("svg") == 3 + len(RUNS) and tags.count("polyline") == 4 * len(RUNS)
    # 8 image queries; 8 caption queries with 5 retrieved images and the true one each.
    images = _images(page)
    assert len(images) == 8 + 8 * (report.TOP_K + 1)
    assert all(src.startswith("data:image/png;base64,") for src in images)
    thumb = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
    assert thumb.size == (64, 64) and len(np.unique(np.asarray(thumb).reshape(-1, 3), axis=0)) > 20
    # Self-contained: nothing to fetch, nothing to run.
    assert not re.search(r"<script|<link|<iframe|src=\"(?!data:)|url\(", page)

    # Each listed rank agrees with where the first correct item sits in the top 5.
    i2t = re.findall(r'<ol class="captions">(.*?)</ol><div class="rank">first correct caption '
                     r"at rank (\d+)", page)
    t2i = re.findall(r'<div class="gallery">(.*?)</div>', page)
    t2i_ranks = re.findall(r"correct image at rank (\d+)", page)
    assert len(i2t) == len(t2i) == len(t2i_ranks) == 8
    lists = [(re.findall(r'<li class="(hit|miss)"', items), int(rank)) for items, rank in i2t]
    lists += [(re.findall(r'class="thumb (hit|miss)', g), int(r)) for g, r in zip(t2i, t2i_ranks)]
    for marks, rank in lists:
        assert len(marks) == report.TOP_K
        first = marks.index("hit") + 1 if "hit" in marks else None
        assert first == (rank if rank <= report.TOP_K else None), (marks, rank)


def test_single_run_of_features_without_pixels_and_errors(workdir, tmp_path, monkeypatch):
    root, tested, cache = workdir
    monkeypatch.setenv("ITM_JAX_CACHE", cache)
    # The same run read as plain precomp features (the synthetic cache is in that layout):
    # the report must do without thumbnails and say so.
    run_dir = tmp_path / "precomp_run"
    shutil.copytree(root / "sh", run_dir, ignore=shutil.ignore_patterns("report.html"))
    config = json.loads((run_dir / "config.json").read_text())
    config["data"].update(name="precomp", data_dir=str(synthetic_cache_dir(config["data"])))
    (run_dir / "config.json").write_text(json.dumps(config))
    single = report.write_report(run_dir, num_examples=3, max_k=20)
    assert single.single_run and [r.name for r in single.runs] == ["precomp_run"]
    assert single.runs[0].metrics == pytest.approx(tested["sh"])
    page = single.path.read_text()
    assert single.path == run_dir / "report.html"
    assert not _images(page) and "No thumbnails: data.name='precomp'" in html.unescape(page)
    assert page.count('<span class="noimg') == 3 + 3 * (report.TOP_K + 1)

    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(RunError, match="No runs in .*DIR/<name>/config.json"):
        report.write_report(tmp_path / "empty")
    with pytest.raises(RunError, match="'vse' is not a run .* runs: mh, sh"):
        report.write_report(root, model="vse")
    with pytest.raises(RunError, match="holds the runs mh, sh: pass one of them"):
        load_run(root)


def test_cli_report_with_chosen_model(workdir, tmp_path):
    root, tested, cache = workdir
    copy = tmp_path / "runs"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("report.html"))
    other = min(tested, key=lambda name: tested[name]["rsum"])  # not the default choice
    env = {**os.environ, "ITM_JAX_CACHE": cache, "XLA_FLAGS": ""}
    run = subprocess.run(
        [sys.executable, "-m", "itm_jax.cli.eval", f"--workdir={copy}", "--report",
         f"--report_model={other}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in RUNS:
        assert re.search(rf"^{name} test: i2t_r1=", run.stdout, re.M), run.stdout
        assert json.loads((copy / name / "eval" / "test_metrics.json").read_text()) == \
            pytest.approx(tested[name])
    assert f"report: {copy / 'report.html'}" in run.stdout
    page = (copy / "report.html").read_text()
    assert f"top 5 captions ({other})" in page and "chosen with --report_model" in page


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    pytest.fail(
        "Headless Chromium is needed to check that report.html renders, and none of "
        f"{', '.join(CHROMIUM_NAMES)} is on PATH. Install it with `apt-get install -y "
        "chromium` (Debian/Ubuntu; `make test` does this when run as root), then rerun.",
        pytrace=False)


def _browse(browser, tmp_path, name, *args) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / f'profile-{name}'}", *args],
        capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _screenshot(browser, tmp_path, name, page_path) -> np.ndarray:
    shot = tmp_path / f"{name}.png"
    _browse(browser, tmp_path, name, f"--screenshot={shot}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}", page_path.as_uri())
    return np.asarray(Image.open(shot).convert("RGB"))


def test_report_renders_in_chromium(built, tmp_path):
    browser = _chromium()
    result, page = built
    dom = _browse(browser, tmp_path, "dom", "--dump-dom", result.path.as_uri()).stdout
    tags = _Tags(dom)
    assert _images(dom) == _images(page)  # every image element survived parsing
    assert tags.count("svg") == 3 + len(RUNS) and tags.count("table") == 3
    assert "Text → image: top 5 images" in dom

    # The same page with every picture replaced by a transparent pixel: the layout is fixed
    # by CSS, so the screenshots differ exactly where thumbnails show.
    blank = tmp_path / "blank.html"
    blank.write_text(re.sub(r'src="data:image/[^"]+"', 'src="data:image/gif;base64,R0lGODlhA'
                            'QABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"', page))
    shown = _screenshot(browser, tmp_path, "report", result.path)
    blanked = _screenshot(browser, tmp_path, "blank", blank)
    assert shown.shape == blanked.shape == (WINDOW[1], WINDOW[0], 3)
    assert shown.std() > 20  # not a blank page
    differ = np.abs(shown.astype(int) - blanked.astype(int)).max(axis=2) > 16
    thumbs_area = 8 * QUERY_PX**2 + 8 * (report.TOP_K + 1) * THUMB_PX**2
    assert differ.sum() > 0.7 * thumbs_area, (differ.sum(), thumbs_area)
    colours = np.unique(shown[differ].reshape(-1, 3), axis=0)
    assert len(colours) > 500  # rendered scenes (tinted, noisy), not icons or flat boxes
