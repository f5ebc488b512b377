"""Convert pretrained checkpoints into plain ``.npz`` files: ImageNet backbones, and the SCAN,
BFAN and VSRN models their authors released.

Usage::

  python -m itm_jax.models.convert_weights torchvision-resnet resnet152-394f9c45.pth resnet152.npz
  python -m itm_jax.models.convert_weights keras-mobilenet mobilenet_1_0_224_tf_no_top.h5 \
      mobilenet.npz
  python -m itm_jax.models.convert_weights scan runs/f30k_scan/model_best.pth.tar scan.npz \
      --vocab=vocab/f30k_precomp_vocab.pkl

The output holds one NumPy array per source parameter, keyed by the source framework's own
name (``layer1.0.conv1.weight``, ``conv_dw_1/depthwise_kernel:0``, ``img_enc.fc.weight``) in
the source layout; ``itm_jax.models.pretrained`` maps and transposes them onto the Flax modules
(``model.pretrained=<npz>`` in a config). ``scan``, ``bfan`` and ``vsrn`` read the authors'
``model_best.pth.tar`` (its ``model`` entry, ``[img_enc, txt_enc]`` state_dicts) and, with
``--vocab``, convert their ``vocab.pkl`` into ``<output>.vocab.json``: the word ids the
converted embedding table indexes, which a run must use (copy it to ``WORKDIR/vocab.json``
before the first run). Reading a ``.pth`` needs PyTorch and reading an ``.h5`` needs h5py, each
only for this one-off conversion: neither is a dependency of itm_jax, and training never reads
the originals.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from itm_jax.data.vocab import Vocabulary


def read_torchvision_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a ``torch.save``d ``state_dict`` (or a checkpoint dict with ``"state_dict"``).

    A ``module.`` prefix on every key (``nn.DataParallel``) is dropped. bfloat16 tensors are
    widened to float32, which NumPy can hold.
    """
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{path} does not hold a state_dict; save one with "
            "torch.save(model.state_dict(), path)."
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return _arrays(obj, path)


def _torch_load(path: str | os.PathLike):
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "Reading a PyTorch checkpoint needs PyTorch, for this conversion only: "
            "pip install torch (the CPU wheel is enough)."
        ) from err
    # The authors' checkpoints also pickle their argparse options; nothing else is unpickled.
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path} holds objects other than tensors and options ({err}); re-save its "
                "weights alone: torch.save(torch.load(path, weights_only=False)['model'], "
                "'weights.pth')."
            ) from err


def _arrays(state: Mapping, path, prefix: str = "") -> dict[str, np.ndarray]:
    import torch

    arrays = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor.")
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        arrays[prefix + name] = tensor.numpy()
    return arrays


def read_authors_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a SCAN / BFAN / VSRN ``model_best.pth.tar`` (or of its ``model`` entry).

    The authors save ``{"model": [img_enc.state_dict(), txt_enc.state_dict()], "opt": ...,
    "epoch": ...}``; the two state_dicts' entries are returned as ``img_enc.<name>`` and
    ``txt_enc.<name>`` (VSRN's checkpoints hold no caption branch).
    """
    obj = _torch_load(path)
    encoders = obj.get("model") if isinstance(obj, Mapping) else obj
    if (not isinstance(encoders, (list, tuple)) or len(encoders) != 2
            or not all(isinstance(sd, Mapping) for sd in encoders)):
        raise ValueError(
            f"{path} is not a SCAN / BFAN / VSRN checkpoint: expected its 'model' entry to be "
            "[img_enc.state_dict(), txt_enc.state_dict()], as the authors' train.py saves it."
        )
    return {**_arrays(encoders[0], path, "img_enc."), **_arrays(encoders[1], path, "txt_enc.")}


class _AuthorsVocabulary:
    """Stands in for the authors' ``vocab.Vocabulary`` while unpickling its state."""


class _VocabUnpickler(pickle.Unpickler):
    # Only what a pickled Vocabulary (word2idx / idx2word dicts) needs; nothing is executed.
    _ALLOWED = {("copyreg", "_reconstructor"), ("copyreg", "__newobj__"),
                ("builtins", "object"), ("builtins", "dict")}

    def find_class(self, module, name):
        if name == "Vocabulary":
            return _AuthorsVocabulary
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a vocabulary pickle")


def read_authors_vocab(path: str | os.PathLike) -> Vocabulary:
    """Our ``Vocabulary`` with the word ids of the authors' ``vocab.pkl`` (VSE++ / SCAN / BFAN /
    VSRN ``vocab/*_vocab.pkl``: ``<pad> <start> <end> <unk>`` then the words, by id)."""
    with open(path, "rb") as f:
        try:
            obj = _VocabUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, AttributeError) as err:
            raise ValueError(f"{path} is not the authors' vocabulary pickle ({err}).") from err
    idx2word = getattr(obj, "idx2word", None) or (obj.get("idx2word") if isinstance(obj, dict)
                                                  else None)
    if not isinstance(idx2word, Mapping) or sorted(idx2word) != list(range(len(idx2word))):
        raise ValueError(f"{path}: no idx2word dict with ids 0..n-1 (the authors' Vocabulary).")
    words = [str(idx2word[i]) for i in range(len(idx2word))]
    if tuple(words[:4]) != Vocabulary.SPECIALS:
        raise ValueError(f"{path}: ids 0-3 are {words[:4]}, expected {list(Vocabulary.SPECIALS)}.")
    return Vocabulary(words[4:], threshold=4)


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
    "scan": read_authors_checkpoint,
    "bfan": read_authors_checkpoint,
    "vsrn": read_authors_checkpoint,
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


def vocab_path(out_path: str | os.PathLike) -> Path:
    """Where ``convert(..., vocab=...)`` writes the vocabulary: ``scan.npz`` ->
    ``scan.vocab.json``."""
    return Path(out_path).with_suffix(".vocab.json")


def convert(source: str, src_path: str | os.PathLike, out_path: str | os.PathLike, *,
            vocab: str | os.PathLike | None = None) -> dict:
    """Reads ``src_path`` with the reader for ``source`` and writes ``out_path`` (and, for the
    authors' models, ``vocab_path(out_path)`` from the ``vocab`` pickle); the arrays."""
    if source not in READERS:
        raise ValueError(f"Unknown source {source!r}; valid: {', '.join(READERS)}.")
    if vocab is not None and READERS[source] is not read_authors_checkpoint:
        raise ValueError(f"--vocab is for the authors' scan / bfan / vsrn checkpoints, not "
                         f"{source}.")
    for what, path in (("checkpoint", src_path), ("vocabulary", vocab)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"No {what} at {path}.")
    words = read_authors_vocab(vocab) if vocab is not None else None
    arrays = READERS[source](src_path)
    if words is not None:
        rows = arrays.get("txt_enc.embed.weight", np.zeros((len(words), 0))).shape[0]
        if rows != len(words):
            raise ValueError(f"{vocab} has {len(words)} words but the checkpoint's embedding "
                             f"table {rows} rows: pass the vocabulary the model was trained with.")
    write_npz(arrays, out_path)
    if words is not None:
        words.save(vocab_path(out_path))
    return arrays


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m itm_jax.models.convert_weights",
        description="Convert a torchvision ResNet .pth, a Keras MobileNet .h5 or the authors' "
        "SCAN / BFAN / VSRN model_best.pth.tar into an .npz for itm_jax.models.pretrained.",
    )
    parser.add_argument("source", choices=sorted(READERS))
    parser.add_argument("checkpoint", help="the .pth / .pth.tar (PyTorch) or .h5 (Keras) file")
    parser.add_argument("output", help="the .npz to write")
    parser.add_argument("--vocab", help="scan / bfan / vsrn: the authors' vocab.pkl, written as "
                        "<output>.vocab.json (copy it to the run's WORKDIR/vocab.json)")
    args = parser.parse_args(argv)
    try:
        arrays = convert(args.source, args.checkpoint, args.output, vocab=args.vocab)
    except (ImportError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    count = sum(int(np.asarray(a).size) for a in arrays.values())
    print(f"wrote {len(arrays)} arrays ({count:,} values) to {args.output}")
    if args.vocab:
        print(f"wrote the vocabulary to {vocab_path(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
