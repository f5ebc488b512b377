"""A trained run, loaded for use: embed, score, search and export.

    from itm_jax.run import load_run

    run = load_run("workdir/default")                 # best validation checkpoint
    img = run.embed_images(features)                          # [N, F] features or [N, H, W, 3] uint8
    cap = run.embed_captions(["a red cube left of a ball"])   # [M, D]
    top, scores = run.top_images(cap, img, k=5)               # images for each caption
    run.export("test", "embeddings/")                         # .npy files + ids for other tools

Global embeddings are L2-normalised, so their scores are cosine similarities (``img @ cap.T``);
region models (SCAN, BFAN) embed sets (regions ``[N, R, D]``, words ``{"words", "length"}``)
that only their scorer compares: ``run.scores`` uses it either way.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from itm_jax import scoring
from itm_jax.errors import UserError
from itm_jax.evaluation.embed import embed_batches, embed_split, padded_batches
from itm_jax.evaluation.metrics import protocol_metrics, split_metrics
from itm_jax.experiment import Experiment
from itm_jax.models.dual_encoder import FEATURE_IMAGES
from itm_jax.training import run_dir


@dataclasses.dataclass
class Run:
    """A run's experiment with one set of weights.

    Attributes:
      experiment: the run's ``Experiment`` (config, data sources, vocabulary, model).
      params, rest: the weights in use. checkpoint: ``{"kind", "step", "checkpoint"}``.
    """

    experiment: Experiment
    params: Any
    rest: Any
    checkpoint: dict[str, Any]

    @property
    def config(self):
        return self.experiment.config

    def _embed(self, kind: str, fields: dict[str, np.ndarray]) -> np.ndarray:
        bs = self.config.eval_batch_size
        return embed_batches(self.experiment, self.params, self.rest, kind,
                             padded_batches(fields, bs))

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """``[N, D]`` embeddings (a region model: ``[N, R, D]`` regions) of ``images``:
        precomputed features ``[N, F]`` or region features ``[N, R, F]`` for the models that read
        features (``precomp``, ``regions``, ``vsrn``), else uint8 pictures ``[N, H, W, 3]``
        (resized and cropped as in evaluation) or float32 ``[N, S, S, 3]`` already
        preprocessed."""
        images = np.asarray(images)
        if self.config.model.image in FEATURE_IMAGES:
            return self._embed("images", {"image_feat": images.astype(np.float32)})
        if images.dtype == np.uint8:
            from itm_jax.data.preprocess import EvalTransform

            images = np.stack([EvalTransform()(x) for x in images])
        return self._embed("images", {"image": images.astype(np.float32)})

    def embed_captions(self, captions: Sequence[str]) -> np.ndarray:
        """``[M, D]`` embeddings of caption strings (tokenised with the run's vocabulary)."""
        if isinstance(captions, str):
            raise TypeError("embed_captions takes a list of captions, not one string.")
        tokens, lengths = zip(*(self.experiment.tokenize(c) for c in captions))
        return self._embed("captions", {"tokens": np.stack(tokens).astype(np.int32),
                                        "length": np.asarray(lengths, np.int32)})

    def embed_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``([N, D], [M, D])`` image and caption embeddings of a split of the run's data."""
        return embed_split(self.experiment, self.params, self.rest, split)

    def evaluate(self, split: str = "test") -> dict[str, float]:
        """The split's metrics under the run's protocol (what ``itm-eval`` prints)."""
        return split_metrics(self.experiment, *self.embed_split(split), split)

    def scores(self, img, cap) -> np.ndarray:
        """``[N, M]`` scores of images against captions, as the model scores them (cosines of
        global embeddings, or the attention score of region and word sets)."""
        return scoring.score_matrix(self.experiment.scorer, img, cap)

    def top_captions(self, img, cap, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Each image's ``k`` best captions: ``(index int [N, k], score [N, k])``, best first
        (ties by ascending index)."""
        return scoring.top_k(self.scores(img, cap), k)

    def top_images(self, cap, img, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Each caption's ``k`` best images: ``(index int [M, k], score [M, k])``."""
        return scoring.top_k(self.scores(img, cap).T, k)

    def export(self, split: str, directory: str | pathlib.Path) -> pathlib.Path:
        """Writes a split's embeddings for other tools: ``images.npy [N, D]``,
        ``captions.npy [M, D]`` (float32), ``image_ids.npy``, ``caption_ids.npy``,
        ``cap_to_img.npy`` (int64) and ``export.json`` (run, checkpoint, split, shapes)."""
        from itm_jax.data.source import image_ids

        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        src = self.experiment.sources[split]
        img, cap = self.embed_split(split)
        if isinstance(cap, dict):  # a set model's words and their lengths
            cap, lengths = cap["words"], {"caption_lengths": np.asarray(cap["length"], np.int64)}
        else:
            lengths = {}
        arrays = {
            "images": img, "captions": cap, **lengths,
            "image_ids": np.asarray(image_ids(src), np.int64),
            "caption_ids": np.asarray([src.caption(j)["caption_id"]
                                       for j in range(src.num_captions)], np.int64),
            "cap_to_img": np.asarray(src.cap_to_img, np.int64),
        }
        for name, a in arrays.items():
            np.save(directory / f"{name}.npy", a, allow_pickle=False)
        meta = {"run": str(self.experiment.workdir.absolute()), "split": split,
                "checkpoint": self.checkpoint,
                "shapes": {k: list(a.shape) for k, a in arrays.items()}}
        (directory / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
        return directory


def evaluate_ensemble(runs: Sequence[Run], split: str = "test") -> dict[str, float]:
    """The split's metrics of the mean of the runs' score matrices (each run scores with its
    own model), under the first run's protocol; the runs must share the split's data."""
    first = runs[0].experiment
    c2i = np.asarray(first.sources[split].cap_to_img)
    for run in runs[1:]:
        if not np.array_equal(np.asarray(run.experiment.sources[split].cap_to_img), c2i) or \
                run.config.data.to_dict() != first.config.data.to_dict():
            raise UserError(f"{run.experiment.workdir} was trained on other data than "
                            f"{first.workdir}: an ensemble averages scores of the same {split} "
                            "split (same config.data).")
    embedded = [run.embed_split(split) for run in runs]
    scorer = scoring.EnsembleScorer(tuple(run.experiment.scorer for run in runs))
    img, cap = tuple(e[0] for e in embedded), tuple(e[1] for e in embedded)
    protocol = first.config.eval_protocol if split == "test" else "all"
    return protocol_metrics(img, cap, c2i, protocol, scorer=scorer,
                            image_labels=getattr(first.sources[split], "labels", None))


def load_run(workdir: str | pathlib.Path, checkpoint: str = "best", *, config=None) -> Run:
    """The itm-train run in ``workdir`` with its ``"best"`` (validation) or ``"latest"``
    checkpoint (``"initial"``: the untrained model). ``config`` (default: the run's
    ``config.json``) builds the model, e.g. a teacher's config for mining."""
    workdir = pathlib.Path(workdir)
    config = config if config is not None else run_dir.load_config(workdir)
    if checkpoint not in ("best", "latest", "initial"):
        raise UserError(f"Unknown checkpoint {checkpoint!r}: pass best, latest or initial.")
    exp = Experiment(config, workdir)
    params, rest, info = exp.weights(checkpoint)
    return Run(exp, params, rest, info)
