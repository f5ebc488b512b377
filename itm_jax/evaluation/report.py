"""HTML retrieval report of one run or of a directory of runs (``itm-eval --report``).

    itm-eval --workdir=workdir/demo --report [--report_model=NAME] [--split=test]

or, from Python, ``write_report(workdir)``. The workdir is either one itm-train run (it holds
``config.json``) or a directory whose subdirectories are runs (``workdir/<name>/config.json``,
e.g. an ablation); the report covers every run. Each run's best checkpoint is evaluated on the
split as ``itm-eval`` does (``itm_jax.run.load_run``; the metrics are also written to
``<run>/eval/<split>_metrics.json``). The page, ``workdir/report.html``, is one self-contained
file: images are base64 data URIs and plots inline SVG; it loads nothing and runs no script.

Contents:
  - a metrics table (R@1/5/10 both ways, R-sum, median ranks) per run;
  - Recall@K for K = 1..50, image-to-text and text-to-image, one curve per run;
  - training curves from each run's ``metrics.jsonl`` (loss, validation R-sum);
  - retrieval examples of one run (the best R-sum, or ``model=``): for a fixed sample of images
    their top-5 captions, for a sample of captions their top-5 images, correct ones marked.

Thumbnails come from the source's ``image`` item (pixel datasets), or, for the built-in
synthetic data stored as precomputed features (``data.name = "synthetic"``), from rendering the
same scenes again. Other feature-only data (real precomp features) has no pixels: the examples
then name images by index and id, and the page says so. Only the sampled queries are scored
(``[Q, gallery]``); the Recall@K curves use the block-wise ranks of ``itm_jax.evaluation``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
import math
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from itm_jax import scoring
from itm_jax.errors import DataError, RunError
from itm_jax.evaluation import metrics as evaluation
from itm_jax.training import run_dir
from itm_jax.training.metric_writer import read_metrics

REPORT_FILENAME = "report.html"
TOP_K = 5  # retrievals shown per example query
_THUMB_MAX = 160  # longest side of an embedded thumbnail, pixels (larger images are shrunk)
_DISPLAY_PX = 88  # displayed thumbnail side (query images: 112), as in _CSS
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


@dataclasses.dataclass(frozen=True)
class _Embedded:
    """A run's experiment and its ``[N, D]`` / ``[M, D]`` embeddings of the split."""

    exp: object
    img: np.ndarray
    cap: np.ndarray


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One run's evaluation on the report's split.

    Attributes:
      name: the run's directory name.
      path: the run directory.
      metrics: the split's metrics under the run's protocol (as ``itm-eval`` prints them).
      i2t, t2i: ``itm_jax.evaluation.i2t`` / ``t2i`` on the whole split: ``r1, r5, r10, medr,
        meanr`` and ``ranks`` (int ``[N]`` images / ``[M]`` captions, 0 = correct first).
      history: the rows of the run's ``metrics.jsonl`` (``read_metrics``).
    """

    name: str
    path: pathlib.Path
    metrics: dict[str, float]
    i2t: dict
    t2i: dict
    history: list[dict]

    @property
    def rsum(self) -> float:
        """R@1 + R@5 + R@10 of both directions on the whole split."""
        return sum(d[f"r{k}"] for d in (self.i2t, self.t2i) for k in (1, 5, 10))


@dataclasses.dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote: the page's ``path``, every run's results (``runs``, in
    page order), the ``shown`` run's name (its retrievals are the examples) and ``single_run``
    (the workdir is one run rather than a directory of runs)."""

    path: pathlib.Path
    runs: list[RunResult]
    shown: str
    single_run: bool


# ------------------------------------------------------------------------------- the runs


def find_runs(workdir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """``{name: run directory}``: ``workdir`` itself if it is a run, else its subdirectories
    that are runs, sorted by name. A run is a directory holding itm-train's ``config.json``."""
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise RunError(f"--workdir={workdir} does not exist: pass an itm-train --workdir.")
    if (workdir / "config.json").is_file():
        return {workdir.resolve().name: workdir}
    runs = {p.parent.name: p.parent for p in sorted(workdir.glob("*/config.json"))}
    if not runs:
        raise RunError(
            f"No runs in {workdir}: it has no config.json and no subdirectory with one. Pass the "
            "--workdir of an itm-train run, or a directory of runs (DIR/<name>/config.json, one "
            "itm-train --workdir=DIR/<name> each).")
    return runs


def recall_at_k(ranks: np.ndarray, max_k: int) -> np.ndarray:
    """float64 ``[max_k]``: ``100 * mean(ranks < K)`` for K = 1..max_k (ranks 0-based)."""
    counts = np.bincount(np.minimum(np.asarray(ranks), max_k), minlength=max_k + 1)
    return 100.0 * np.cumsum(counts[:max_k]) / len(ranks)


# ------------------------------------------------------------------------------ thumbnails


def image_lookup(exp, split: str) -> tuple[Callable[[int], np.ndarray] | None, str]:
    """``(image_of, note)``: ``image_of(i)`` is image ``i`` of ``exp.sources[split]`` as
    uint8 ``[H, W, 3]``, or ``None`` (with the reason in ``note``) when the data has no pixels."""
    data, source = exp.config.data, exp.sources[split]
    if data.name == "synthetic":
        from itm_jax.data.datasets import _synthetic_config
        from itm_jax.data.synthetic import synthetic_splits

        # The cached features were computed from exactly these scenes; the ids and captions
        # confirm the rendered split lists its images in the feature file's order.
        scenes = synthetic_splits(_synthetic_config(data))[split]
        ids = getattr(source, "image_ids", None)
        same_ids = ids is not None and np.array_equal(np.asarray(ids), scenes.image_ids)
        probe = np.unique(np.linspace(0, source.num_captions - 1, 16).astype(int))
        same_caps = all(source.caption(int(j))["caption"] == scenes.captions[j] for j in probe)
        if not (same_ids and same_caps and scenes.num_images == source.num_images):
            raise DataError(
                f"The rendered synthetic {split} split does not match the cached features in "
                f"{getattr(source, 'data_dir', '?')} (image ids or captions differ). Delete that "
                "directory so the features are regenerated, then evaluate again.")
        return scenes.render, ""
    if source.num_images and "image" in source.image(0):
        return (lambda i: source.image(i)["image"]), ""
    return None, (
        f"No thumbnails: data.name={data.name!r} provides precomputed image features only (no "
        "pixels), so images are named by their index and dataset id.")


def _data_uri(image: np.ndarray) -> str:
    """A ``data:`` URI of uint8 ``[H, W]`` / ``[H, W, C]`` pixels, shrunk to ``_THUMB_MAX``."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:  # float images in [0, 1]
        pixels = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    pic = Image.fromarray(pixels)
    if pic.mode not in ("RGB", "L"):
        pic = pic.convert("RGB")
    buf = io.BytesIO()
    if max(pic.size) > _THUMB_MAX:  # photographs: small JPEGs keep the page light
        pic.thumbnail((_THUMB_MAX, _THUMB_MAX), Image.Resampling.LANCZOS)
        pic.save(buf, format="JPEG", quality=85)
        mime = "jpeg"
    else:  # small renders: lossless
        pic.save(buf, format="PNG", optimize=True)
        mime = "png"
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Thumbs:
    """``<img>`` tags of a split's images, each encoded once."""

    def __init__(self, image_of: Callable[[int], np.ndarray] | None, source):
        self._image_of, self._source, self._uris = image_of, source, {}

    def _label(self, i: int) -> str:
        image_id = self._source.image(i).get("image_id", i) if self._image_of is None else None
        return f"image {i}" + ("" if image_id is None else f" (id {int(image_id)})")

    def tag(self, i: int, css: str = "") -> str:
        if self._image_of is None:
            return f'<span class="noimg {css}">{html.escape(self._label(i))}</span>'
        if i not in self._uris:
            pixels = np.asarray(self._image_of(i))
            # Renders smaller than their display box are enlarged with crisp pixels.
            small = max(pixels.shape[:2]) < _DISPLAY_PX
            self._uris[i] = (_data_uri(pixels), " px" if small else "")
        uri, px = self._uris[i]
        return (f'<img class="thumb {css}{px}" src="{uri}" alt="image {i}" '
                f'title="image {i}">')


# ------------------------------------------------------------------------------ SVG charts


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values spanning ``[lo, hi]`` (about ``count`` intervals)."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / count
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def line_chart(
    series: Sequence[tuple[str, str, Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    y_range: tuple[float, float] | None = None,
    width: int = 560,
    height: int = 330,
    legend: bool = True,
) -> str:
    """An inline ``<svg>`` line chart with a legend.

    Args:
      series: ``(label, colour, xs [P], ys [P])`` per line; non-finite points are dropped.
      title, xlabel, ylabel: texts.
      y_range: fixed ``(low, high)`` of the y axis (e.g. 0-100 for recalls); default: the data's.
      width, height: pixels.
      legend: label the lines in a column right of the plot.

    Returns:
      The SVG markup, or a short note when no series has a point.
    """
    clean = []
    for label, colour, xs, ys in series:
        pts = [(float(x), float(y)) for x, y in zip(xs, ys)
               if math.isfinite(float(x)) and math.isfinite(float(y))]
        if pts:
            clean.append((label, colour, pts))
    if not clean:
        return f'<p class="note">{html.escape(title)}: nothing logged.</p>'
    left, right, top, bottom = 58, 150 if legend else 16, 30, 44
    pw, ph = width - left - right, height - top - bottom
    xs = [x for *_, pts in clean for x, _ in pts]
    ys = [y for *_, pts in clean for _, y in pts]
    xt = _ticks(min(xs), max(xs))
    yt = _ticks(*(y_range or (min(ys), max(ys))))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def px(x):
        return left + (x - x0) / (x1 - x0) * pw

    def py(y):
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
           f'font-size="11" role="img"><title>{html.escape(title)}</title>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>']
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" '
                   f'stroke="#eee"/><text x="{px(t):.1f}" y="{top + ph + 14}" '
                   f'text-anchor="middle">{t:g}</text>')
    for t in yt:
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" '
                   f'stroke="#eee"/><text x="{left - 5}" y="{py(t) + 4:.1f}" '
                   f'text-anchor="end">{t:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="18" text-anchor="middle" font-size="13" '
               f'font-weight="bold">{html.escape(title)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">'
               f'{html.escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2})">{html.escape(ylabel)}</text>')
    for n, (label, colour, pts) in enumerate(clean):
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" '
                   f'points="{coords}"/>')
        if len(pts) <= 30:  # sparse series (validation every epoch): show the points
            out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>'
                       for x, y in pts)
        if not legend:
            continue
        ly = top + 10 + 16 * n
        out.append(f'<line x1="{left + pw + 10}" y1="{ly}" x2="{left + pw + 28}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="3"/><text x="{left + pw + 33}" '
                   f'y="{ly + 4}">{html.escape(label[:18])}</text>')
    out.append("</svg>")
    return "".join(out)


def _history(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``key`` in metric rows; a resumed run's repeated step keeps its
    last value."""
    last = {int(r["step"]): float(r[key]) for r in rows if key in r and "step" in r}
    steps = sorted(last)
    return steps, [last[s] for s in steps]


# ------------------------------------------------------------------------------- sections

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1200px; margin: 24px auto; padding: 0 16px; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
.meta, .note { color: #555; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e4e4; vertical-align: middle; }
table.metrics td { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics td:first-child, table.metrics th:first-child { text-align: left; }
table.metrics tr.shown { background: #f3f8ff; font-weight: 600; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
          margin-right: 6px; vertical-align: -1px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
img.thumb { width: 88px; height: 88px; object-fit: cover; border: 3px solid transparent;
            border-radius: 3px; display: block; }
img.thumb.px { image-rendering: pixelated; }
img.thumb.query { width: 112px; height: 112px; }
img.thumb.hit { border-color: #2da44e; }
img.thumb.miss { border-color: #ddd; }
.noimg { display: inline-block; width: 88px; height: 88px; border: 3px solid #ddd;
         border-radius: 3px; font-size: 0.8em; text-align: center; padding-top: 30px;
         box-sizing: border-box; color: #555; }
.noimg.hit { border-color: #2da44e; }
table.examples td { vertical-align: top; }
ol.captions { margin: 0; padding-left: 1.6em; }
ol.captions li { margin: 2px 0; }
li.hit { color: #1a7f37; } li.miss { color: #666; }
.mark { font-weight: bold; display: inline-block; width: 1.2em; }
.score { color: #888; font-size: 0.85em; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0 6px 0 0; text-align: center; font-size: 0.8em; }
figcaption { color: #555; }
figcaption.hit { color: #1a7f37; font-weight: bold; }
.gallery { display: flex; gap: 4px; align-items: flex-start; }
.rank { color: #555; font-size: 0.85em; margin-top: 4px; }
"""


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _metrics_table(runs: list[RunResult], colours: dict[str, str], shown: str) -> str:
    protocol_col = any(abs(r.metrics.get("rsum", r.rsum) - r.rsum) > 1e-6 for r in runs)
    head = ("<tr><th rowspan=2>Model</th><th colspan=4>Image → text</th>"
            "<th colspan=4>Text → image</th><th rowspan=2>R-sum</th>"
            + ("<th rowspan=2>protocol<br>R-sum</th>" if protocol_col else "")
            + "<th rowspan=2>best val<br>R-sum</th><th rowspan=2>steps</th></tr>"
            "<tr>" + "<th>R@1</th><th>R@5</th><th>R@10</th><th>medr</th>" * 2 + "</tr>")
    rows = []
    for r in runs:
        _, val = _history(r.history, "val/rsum")
        steps = [int(row["step"]) for row in r.history if "step" in row]
        cells = [f'<span class="swatch" style="background:{colours[r.name]}"></span>'
                 f"{html.escape(r.name)}"]
        for d in (r.i2t, r.t2i):
            cells += [_fmt(d["r1"]), _fmt(d["r5"]), _fmt(d["r10"]), _fmt(d["medr"], 0)]
        cells.append(_fmt(r.rsum))
        if protocol_col:
            cells.append(_fmt(r.metrics.get("rsum")))
        cells += [_fmt(max(val)) if val else "–", str(max(steps)) if steps else "–"]
        css = ' class="shown"' if r.name == shown else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    note = ("<p class=\"note\">Recalls and median ranks over the whole split; <em>protocol "
            "R-sum</em> is the run's evaluation protocol (e.g. COCO 1K, 5-fold average).</p>"
            if protocol_col else "")
    return f'<table class="metrics">{head}{"".join(rows)}</table>{note}'


def _recall_charts(runs: list[RunResult], colours: dict[str, str], max_k: int) -> str:
    charts = []
    for key, title, gallery in (("i2t", "Image → text", "captions"),
                                ("t2i", "Text → image", "images")):
        series = []
        for r in runs:
            ranks = getattr(r, key)["ranks"]
            k = min(max_k, r.t2i["ranks"].size if key == "i2t" else r.i2t["ranks"].size)
            series.append((r.name, colours[r.name], range(1, k + 1), recall_at_k(ranks, k)))
        charts.append(line_chart(series, title=f"{title}: Recall@K", xlabel=f"K ({gallery})",
                                 ylabel="Recall@K (%)", y_range=(0, 100)))
    return '<div class="charts">' + "".join(charts) + "</div>"


def _training_charts(runs: list[RunResult], colours: dict[str, str]) -> str:
    series = [(r.name, colours[r.name], *_history(r.history, "val/rsum")) for r in runs]
    val = line_chart(series, title="Validation R-sum", xlabel="step", ylabel="R-sum")
    # One loss chart per run: the objectives differ in scale, one axis would flatten some.
    losses = [line_chart([(r.name, colours[r.name], *_history(r.history, "loss"))],
                         title=f"Training loss: {r.name}", xlabel="step", ylabel="loss",
                         width=290, height=220, legend=False) for r in runs]
    return (f'<div class="charts">{val}</div><div class="charts">{"".join(losses)}</div>')


def _i2t_examples(ev, run: RunResult, source, thumbs: _Thumbs, queries: np.ndarray) -> str:
    matrix = scoring.score_matrix(ev.exp.scorer, scoring.take(ev.img, queries), ev.cap)
    idx, scores = scoring.top_k(matrix, TOP_K)
    cap_to_img = np.asarray(source.cap_to_img)
    rows = []
    for q, i in enumerate(queries):
        items = []
        for j, s in zip(idx[q], scores[q]):
            hit = cap_to_img[j] == i
            items.append(
                f'<li class="{"hit" if hit else "miss"}"><span class="mark">'
                f'{"✓" if hit else "✗"}</span>{html.escape(source.caption(int(j))["caption"])} '
                f'<span class="score">{s:.3f}</span></li>')
        rank = int(run.i2t["ranks"][i]) + 1
        missed = ""
        if rank > TOP_K:  # show what should have come first: the image's best own caption
            own = np.flatnonzero(cap_to_img == i)
            best = int(own[np.argmax(matrix[q, own])])
            missed = f': <i>{html.escape(source.caption(best)["caption"])}</i>'
        rows.append(
            f"<tr><td>{thumbs.tag(int(i), 'query')}<div class=\"rank\">image {int(i)}</div></td>"
            f'<td><ol class="captions">{"".join(items)}</ol><div class="rank">first correct '
            f"caption at rank {rank}{missed}</div></td></tr>")
    return ('<table class="examples"><tr><th>Image</th><th>Top 5 captions</th></tr>'
            f'{"".join(rows)}</table>')


def _t2i_examples(ev, run: RunResult, source, thumbs: _Thumbs, queries: np.ndarray) -> str:
    matrix = scoring.score_matrix(ev.exp.scorer, ev.img, scoring.take(ev.cap, queries))
    idx, scores = scoring.top_k(matrix.T, TOP_K)
    cap_to_img = np.asarray(source.cap_to_img)
    rows = []
    for q, j in enumerate(queries):
        truth = int(cap_to_img[j])
        figures = []
        for n, (i, s) in enumerate(zip(idx[q], scores[q])):
            hit = int(i) == truth
            figures.append(
                f"<figure>{thumbs.tag(int(i), 'hit' if hit else 'miss')}<figcaption"
                f'{" class=hit" if hit else ""}>{n + 1}. {"✓ " if hit else ""}{s:.3f}'
                f"</figcaption></figure>")
        rank = int(run.t2i["ranks"][j]) + 1
        rows.append(
            f"<tr><td>{html.escape(source.caption(int(j))['caption'])}<div class=\"rank\">"
            f"caption {int(j)}; correct image at rank {rank}</div></td>"
            f'<td><div class="gallery">{"".join(figures)}</div></td>'
            f"<td><figure>{thumbs.tag(truth, 'hit')}<figcaption>correct image</figcaption>"
            f"</figure></td></tr>")
    return ('<table class="examples"><tr><th>Caption</th><th>Top 5 images</th><th>Truth</th>'
            f'</tr>{"".join(rows)}</table>')


def _page(workdir: pathlib.Path, split: str, runs: list[RunResult], shown: str, single: bool,
          examples: str, max_k: int) -> str:
    colours = {r.name: _PALETTE[n % len(_PALETTE)] for n, r in enumerate(runs)}
    best = max(runs, key=lambda r: r.metrics.get("rsum", r.rsum))
    n_img, n_cap = runs[0].i2t["ranks"].size, runs[0].t2i["ranks"].size
    what = (f"Run {html.escape(runs[0].name)}" if single else
            f"{len(runs)} run{'s' if len(runs) > 1 else ''}")
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Retrieval report: {html.escape(workdir.resolve().name)}</title>
<style>{_CSS}</style></head>
<body>
<h1>Retrieval report: {html.escape(workdir.resolve().name)}</h1>
<p class="meta">{what}, best checkpoint{"" if single else " of each"} on the
<b>{html.escape(split)}</b> split ({n_img} images, {n_cap} captions).
Best R-sum: <b>{html.escape(best.name)}</b>. Written {html.escape(when)} from
<code>{html.escape(str(workdir))}</code>.</p>
<h2>Metrics</h2>
{_metrics_table(runs, colours, shown)}
<h2>Recall@K</h2>
{_recall_charts(runs, colours, max_k)}
<h2>Training curves</h2>
{_training_charts(runs, colours)}
{examples}
</body></html>
"""


# ---------------------------------------------------------------------------------- entry


def write_report(
    workdir: str | pathlib.Path,
    *,
    split: str = "test",
    model: str | None = None,
    num_examples: int = 8,
    max_k: int = 50,
    seed: int = 0,
) -> Report:
    """Evaluates every run in ``workdir`` and writes ``workdir/report.html``.

    Args:
      workdir: one itm-train run, or a directory of runs (``workdir/<name>/config.json``).
      split: ``test`` or ``val``.
      model: the run whose retrievals are shown (a subdirectory name); default: the best
        R-sum on ``split`` under each run's protocol.
      num_examples: image queries and caption queries shown (each), drawn with ``seed``.
      max_k: the Recall@K curves go to K = ``max_k`` (at most the gallery size).
      seed: the sample of example queries.

    Returns:
      A ``Report``: the page's path and each run's ``RunResult``.
    """
    from itm_jax.run import load_run

    workdir = pathlib.Path(workdir)
    runs = find_runs(workdir)
    if model is not None and model not in runs:
        raise RunError(f"--report_model={model!r} is not a run in {workdir}; runs: "
                         f"{', '.join(runs)}.")
    results, shown = [], None  # shown: (RunResult, _Embedded) of the examples' run
    for name, path in runs.items():
        loaded = load_run(path)
        ev = _Embedded(loaded.experiment, *loaded.embed_split(split))
        metrics = evaluation.split_metrics(ev.exp, ev.img, ev.cap, split)
        run_dir.save_eval(path, split, metrics)
        c2i = ev.exp.sources[split].cap_to_img
        result = RunResult(name, path, metrics,
                           evaluation.i2t(ev.img, ev.cap, cap_to_img=c2i, scorer=ev.exp.scorer),
                           evaluation.t2i(ev.img, ev.cap, cap_to_img=c2i, scorer=ev.exp.scorer),
                           read_metrics(path))
        results.append(result)
        score = result.metrics.get("rsum", result.rsum)
        if (name == model if model else
                shown is None or score > shown[0].metrics.get("rsum", shown[0].rsum)):
            shown = (result, ev)  # only this run's embeddings stay in memory
    run, ev = shown
    source = ev.exp.sources[split]
    image_of, note = image_lookup(ev.exp, split)
    thumbs = _Thumbs(image_of, source)
    rng = np.random.default_rng(seed)
    img_q = np.sort(rng.choice(source.num_images, min(num_examples, source.num_images),
                               replace=False))
    cap_q = np.sort(rng.choice(source.num_captions, min(num_examples, source.num_captions),
                               replace=False))
    why = "chosen with --report_model" if model else "the best R-sum"
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    examples = (
        f"<h2>Image → text: top {TOP_K} captions ({html.escape(run.name)})</h2>"
        f'<p class="meta">Run <b>{html.escape(run.name)}</b> ({why}); {len(img_q)} images drawn '
        f"with seed {seed}. ✓ marks a caption of the image; scores are cosine similarities."
        f"</p>{note_html}{_i2t_examples(ev, run, source, thumbs, img_q)}"
        f"<h2>Text → image: top {TOP_K} images ({html.escape(run.name)})</h2>"
        f'<p class="meta">{len(cap_q)} captions drawn with seed {seed}; the correct image has a '
        f"green frame.</p>{note_html}{_t2i_examples(ev, run, source, thumbs, cap_q)}")
    single = (workdir / "config.json").is_file()
    page = _page(workdir, split, results, run.name, single, examples, max_k)
    path = workdir / REPORT_FILENAME
    path.write_text(page, encoding="utf-8")
    return Report(path, results, run.name, single)
