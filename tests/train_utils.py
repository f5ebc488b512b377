"""Helpers shared by the training tests: the smoke config and flattened parameters."""

import importlib.util
import pathlib

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str = "default.py", arg: str | None = "smoke"):
    spec = importlib.util.spec_from_file_location("config", ROOT / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def flat_params(state) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def assert_same_params(a, b, rtol=1e-5, atol=1e-6):
    fa, fb = flat_params(a), flat_params(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], rtol=rtol, atol=atol, err_msg=k)
