"""``config.data`` -> the train / val / test sources of one dataset.

``config.data.name``:
  ``synthetic``: the built-in dataset as precomputed features, generated once into a cache
    directory (``data_dir``, default ``~/.cache/itm_jax/synthetic-<sizes>-<seed>``) and read
    back with the precomp reader, exactly as real precomputed features are.
  ``synthetic_images``: the same scenes as 64x64 images.
  ``precomp``: VSE++/SCAN features in ``data_dir`` (splits train / dev / ``test_split``).
  ``karpathy/coco_restval``, ``karpathy/flickr30k``, ... or ``coco_captions``: prepared TFDS
    datasets in ``data_dir`` (see ``python -m itm_jax.data.karpathy --help``).
  ``cuhk_pedes``: ``reid_raw.json`` and ``imgs/`` under ``data_dir``.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from itm_jax.data.source import CaptionedSource

SPLITS = ("train", "val", "test")


def synthetic_cache_dir(cfg: Mapping[str, Any]) -> pathlib.Path:
    if cfg.get("data_dir"):
        return pathlib.Path(cfg["data_dir"]).expanduser()
    s = cfg["synthetic"]
    name = f"synthetic-{s['num_train']}-{s['num_val']}-{s['num_test']}-seed{s['seed']}"
    root = os.environ.get("ITM_JAX_CACHE", "~/.cache/itm_jax")
    return pathlib.Path(root).expanduser() / name


def _synthetic_config(cfg):
    from itm_jax.data.synthetic import SyntheticConfig

    s = cfg["synthetic"]
    return SyntheticConfig(seed=s["seed"], num_train=s["num_train"], num_val=s["num_val"],
                           num_test=s["num_test"])


def _synthetic_precomp(cfg) -> dict[str, CaptionedSource]:
    from itm_jax.data.precomp import PrecompSource
    from itm_jax.data.synthetic import synthetic_splits
    from itm_jax.data.synthetic_features import META_FILENAME, write_precomp

    directory = synthetic_cache_dir(cfg)
    wanted = _synthetic_config(cfg).to_dict()
    meta = directory / META_FILENAME
    if not meta.exists() or json.loads(meta.read_text()).get("config") != wanted:
        directory.mkdir(parents=True, exist_ok=True)
        # Written atomically, so concurrent processes at worst both write identical files.
        write_precomp(directory, synthetic_splits(_synthetic_config(cfg)))
    names = {"train": "train", "val": "dev", "test": "test"}
    return {split: PrecompSource(directory, names[split]) for split in SPLITS}


def get_sources(cfg: Mapping[str, Any]) -> dict[str, CaptionedSource]:
    """``{"train", "val", "test"}`` sources for ``config.data``."""
    name = cfg["name"]
    if name == "synthetic":
        return _synthetic_precomp(cfg)
    if name == "synthetic_images":
        from itm_jax.data.synthetic import synthetic_splits

        return dict(synthetic_splits(_synthetic_config(cfg)))
    if name == "precomp":
        from itm_jax.data.precomp import PrecompSource

        names = {"train": "train", "val": "dev", "test": cfg.get("test_split", "test")}
        return {s: PrecompSource(cfg["data_dir"], names[s]) for s in SPLITS}
    if name.startswith("karpathy/") or name == "coco_captions":
        from itm_jax.data.tfds_source import TfdsSource

        train = "train+restval" if name == "coco_captions" else "train"
        names = {"train": train, "val": "val", "test": "test"}
        return {
            s: TfdsSource(name, names[s], data_dir=cfg.get("data_dir") or None,
                          max_captions_per_image=cfg.get("caps_per_image") or None)
            for s in SPLITS
        }
    if name == "cuhk_pedes":
        from itm_jax.data.cuhk_pedes import CuhkPedesSource

        return {s: CuhkPedesSource(cfg["data_dir"], s) for s in SPLITS}
    raise ValueError(
        f"Unknown data.name={name!r}; valid: synthetic, synthetic_images, precomp, "
        "karpathy/<coco|coco_restval|flickr30k|flickr8k>, coco_captions, cuhk_pedes."
    )


def image_dim(source: CaptionedSource) -> int:
    """Feature size ``F`` of a precomputed-feature source (0 for image sources)."""
    shape = getattr(source, "feature_shape", None)
    return int(shape[-1]) if shape else 0
