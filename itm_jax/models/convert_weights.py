"""Convert pretrained image-backbone checkpoints into plain ``.npz`` files.

Usage::

  python -m itm_jax.models.convert_weights torchvision-resnet resnet152-394f9c45.pth resnet152.npz
  python -m itm_jax.models.convert_weights keras-mobilenet mobilenet_1_0_224_tf_no_top.h5 \
      mobilenet.npz

The output holds one NumPy array per source parameter, keyed by the source framework's own
name (``layer1.0.conv1.weight``, ``conv_dw_1/depthwise_kernel:0``) in the source layout;
``itm_jax.models.pretrained`` maps and transposes them onto the Flax modules. Reading a
``.pth`` needs PyTorch and reading an ``.h5`` needs h5py, each only for this one-off
conversion: neither is a dependency of itm_jax, and training never reads the originals.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def read_torchvision_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a ``torch.save``d ``state_dict`` (or a checkpoint dict with ``"state_dict"``).

    A ``module.`` prefix on every key (``nn.DataParallel``) is dropped. bfloat16 tensors are
    widened to float32, which NumPy can hold.
    """
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "Reading a PyTorch checkpoint needs PyTorch, for this conversion only: "
            "pip install torch (the CPU wheel is enough)."
        ) from err
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{path} does not hold a state_dict; save one with "
            "torch.save(model.state_dict(), path)."
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    arrays = {}
    for name, tensor in obj.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor.")
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        arrays[name] = tensor.numpy()
    return arrays


def _h5_string_list(attrs, name: str) -> list[str]:
    # Keras splits attributes past HDF5's 64 KB header limit into name0, name1, ...
    if name in attrs:
        values = list(attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in attrs:
            values.extend(attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def keras_h5_arrays(root) -> dict[str, np.ndarray]:
    """Weights of a Keras HDF5 file opened as ``root`` (an ``h5py.File`` or a group like it).

    Reads the legacy Keras layout (``save_weights`` / ``model.save`` ``.h5``, as the
    ``keras.applications`` downloads): attribute ``layer_names`` on the root (or on
    ``model_weights`` of a whole-model file), attribute ``weight_names`` on each layer group, one
    dataset per weight. Keys are ``"<layer>/<weight>:0"`` whatever prefix the saving Keras put
    on the variable name (``conv1/kernel:0``, ``kernel``), e.g. ``conv_dw_1/depthwise_kernel:0``.
    """
    if "model_weights" in root:
        root = root["model_weights"]
    layers = _h5_string_list(root.attrs, "layer_names")
    if not layers:
        raise ValueError(
            "Not a Keras HDF5 weights file (no 'layer_names' attribute). Keras 3 '.weights.h5' "
            "or '.keras' files must first be re-saved in the legacy format: "
            "model.save_weights('weights.h5') under Keras 2 / tf.keras."
        )
    arrays = {}
    for layer in layers:
        group = root[layer]
        for weight in _h5_string_list(group.attrs, "weight_names"):
            leaf = weight.rsplit("/", 1)[-1]
            key = f"{layer}/{leaf if leaf.endswith(':0') else leaf + ':0'}"
            if key in arrays:
                raise ValueError(f"Keras file has two weights named {key!r}.")
            arrays[key] = np.asarray(group[weight])
    return arrays


def read_keras_h5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``keras_h5_arrays`` of the file at ``path``."""
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            "Reading a Keras .h5 file needs h5py, for this conversion only: pip install h5py."
        ) from err
    with h5py.File(path, "r") as f:
        return keras_h5_arrays(f)


READERS = {
    "torchvision-resnet": read_torchvision_state_dict,
    "keras-mobilenet": read_keras_h5,
}


def write_npz(arrays: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Writes ``{name: array}`` to an uncompressed ``.npz`` (``np.load`` reads it back).

    Unlike ``np.savez(path, **arrays)``, any name is allowed (a parameter could be called
    ``file``). The file is written next to ``path`` and renamed, so an interrupted conversion
    never leaves a truncated ``.npz`` behind. Object arrays are refused.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"Output path must end in .npz (np.load needs it); got {path}.")
    if not arrays:
        raise ValueError("No arrays to write.")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, value in arrays.items():
                if not isinstance(name, str) or not name:
                    raise ValueError(f"Array names must be non-empty strings; got {name!r}.")
                array = np.asarray(value)
                if array.dtype == object:
                    raise ValueError(f"Array {name!r} has dtype object; only numeric arrays.")
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def convert(source: str, src_path: str | os.PathLike, out_path: str | os.PathLike) -> dict:
    """Reads ``src_path`` with the reader for ``source`` and writes ``out_path``; the arrays."""
    if source not in READERS:
        raise ValueError(f"Unknown source {source!r}; valid: {', '.join(READERS)}.")
    if not Path(src_path).is_file():
        raise FileNotFoundError(f"No checkpoint at {src_path}.")
    arrays = READERS[source](src_path)
    write_npz(arrays, out_path)
    return arrays


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m itm_jax.models.convert_weights",
        description="Convert a torchvision ResNet .pth or a Keras MobileNet .h5 into an .npz "
        "for itm_jax.models.pretrained.",
    )
    parser.add_argument("source", choices=sorted(READERS))
    parser.add_argument("checkpoint", help="the .pth (torchvision) or .h5 (Keras) file")
    parser.add_argument("output", help="the .npz to write")
    args = parser.parse_args(argv)
    try:
        arrays = convert(args.source, args.checkpoint, args.output)
    except (ImportError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    count = sum(int(np.asarray(a).size) for a in arrays.values())
    print(f"wrote {len(arrays)} arrays ({count:,} values) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
