"""``config.data`` -> the train / val / test sources of one dataset.

``config.data.name``:
  ``synthetic``: the built-in dataset as precomputed features, generated once into a cache
    directory (``data_dir``, default ``~/.cache/itm_jax/synthetic-<sizes>-<seed>``, with
    ``-regions<K>`` for ``synthetic.regions = K > 0``) and read back with the precomp reader,
    exactly as real precomputed features are: one global feature ``[F]`` per image, or ``K``
    region features ``[K, F]`` (``itm_jax.data.synthetic_features``).
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
from itm_jax.errors import ConfigError

SPLITS = ("train", "val", "test")
# ``data.name`` values; TFDS's Karpathy splits are ``karpathy/<config>``.
DATASETS = ("synthetic", "synthetic_images", "precomp", "coco_captions", "cuhk_pedes",
            "karpathy/<coco|coco_restval|flickr30k|flickr8k>")


def _regions(cfg: Mapping[str, Any]) -> int:
    # Configs saved before the field existed describe the global features.
    return cfg["synthetic"].get("regions", 0)


def synthetic_cache_dir(cfg: Mapping[str, Any]) -> pathlib.Path:
    if cfg.get("data_dir"):
        return pathlib.Path(cfg["data_dir"]).expanduser()
    s = cfg["synthetic"]
    name = f"synthetic-{s['num_train']}-{s['num_val']}-{s['num_test']}-seed{s['seed']}"
    if _regions(cfg):
        name += f"-regions{_regions(cfg)}"
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
    wanted = (_synthetic_config(cfg).to_dict(), _regions(cfg))
    if _cached_description(directory / META_FILENAME) != wanted:
        # Written atomically (into a directory it creates), so concurrent processes at worst
        # both write identical files.
        write_precomp(directory, synthetic_splits(_synthetic_config(cfg)), regions=_regions(cfg))
    names = {"train": "train", "val": "dev", "test": "test"}
    return {split: PrecompSource(directory, names[split]) for split in SPLITS}


def _cached_description(path: pathlib.Path) -> Any:
    """(generator config, regions) recorded in a synthetic cache's metadata; None if there is
    none."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):  # none yet, or damaged: either way, regenerate
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("feature_extractor"), dict):
        return None
    return meta.get("config"), meta["feature_extractor"].get("regions")


def _data_dir(cfg: Mapping[str, Any], holds: str) -> str:
    if not cfg.get("data_dir"):
        raise ConfigError(
            f"data.name={cfg['name']!r} reads its files from data.data_dir, which is empty: "
            f"pass --config.data.data_dir=<the folder holding {holds}>."
        )
    return cfg["data_dir"]


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

        test = cfg.get("test_split", "test")
        if test not in ("test", "testall"):
            raise ConfigError(
                f"data.test_split={test!r} is not a precomp test split: pass "
                "--config.data.test_split=test (COCO 1K, Flickr30K) or testall (COCO 5K)."
            )
        data_dir = _data_dir(cfg, "<split>_ims.npy and <split>_caps.txt")
        names = {"train": "train", "val": "dev", "test": test}
        return {s: PrecompSource(data_dir, names[s]) for s in SPLITS}
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

        data_dir = _data_dir(cfg, "reid_raw.json and imgs/")
        return {s: CuhkPedesSource(data_dir, s) for s in SPLITS}
    raise ConfigError(f"Unknown data.name={name!r}; valid: {', '.join(DATASETS)}.")


def image_dim(source: CaptionedSource) -> int:
    """Feature size ``F`` of a precomputed-feature source (0 for image sources)."""
    shape = getattr(source, "feature_shape", None)
    return int(shape[-1]) if shape else 0
