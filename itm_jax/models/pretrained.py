"""Load converted weights: ImageNet backbones, and the SCAN, BFAN and VSRN authors' models.

Nothing is downloaded: the user converts a checkpoint once with
``python -m itm_jax.models.convert_weights`` into an ``.npz`` keyed by the source framework's
own parameter names, and passes its path here. Each loader derives from the model the full set
of source names it needs, checks that the file has each of them with the right shape (and
nothing else besides the classifier), and only then writes the arrays into the model.

torchvision ResNet (``torchvision.models.resnet50/152`` ``state_dict``):
  ``conv1.weight [O, I, kh, kw]`` -> ``conv1.kernel [kh, kw, I, O]``;
  ``bn1.{weight, bias, running_mean, running_var}`` -> ``bn1.{scale, bias, mean, var}``;
  likewise ``layer{1-4}.{j}.{conv,bn}{1-3}`` and ``layer{1-4}.0.downsample.{0,1}``.
  Ignored: ``fc.weight``, ``fc.bias``, ``*.num_batches_tracked``.

Keras MobileNet (``keras.applications.MobileNet`` ``.h5``):
  ``conv1/kernel:0`` and ``conv_pw_{n}/kernel:0 [kh, kw, I, O]`` as they are;
  ``conv_dw_{n}/depthwise_kernel:0 [3, 3, C, 1]`` -> ``blocks[n-1].dw.kernel [3, 3, 1, C]``;
  ``{layer}_bn/{gamma, beta, moving_mean, moving_variance}:0`` -> ``{scale, bias, mean, var}``.
  Ignored: the classifier ``conv_preds/*``.

SCAN / BFAN / VSRN (the authors' ``model_best.pth.tar``: ``model = [img_enc.state_dict(),
txt_enc.state_dict()]``, written with the prefixes ``img_enc.`` / ``txt_enc.``):
  ``fc.weight [O, I]`` -> ``fc.kernel [I, O]``, ``fc.bias`` as it is;
  ``embed.weight`` -> ``embed.embedding``; GRU ``rnn.{weight,bias}_{ih,hh}_l{k}[_reverse]``
  -> ``cell.dense_{i,h}.{kernel,bias}`` (weights transposed; SCAN's bi-GRU: ``forward_rnn`` /
  ``backward_rnn``, VSRN: ``layers[k]`` and the image GRU ``img_rnn``);
  VSRN's ``Rs_GCN_{k}.{g,theta,phi}.weight [O, I, 1]`` -> ``gcn[k-1].{g,theta,phi}.kernel``,
  ``Rs_GCN_{k}.W.0`` -> ``gcn[k-1].w``, ``Rs_GCN_{k}.W.1`` and ``bn`` (f30k) -> BatchNorm
  ``{scale, bias, mean, var}``. Ignored: ``*.num_batches_tracked``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from itm_jax.models.dual_encoder import DualEncoder
from itm_jax.models.mobilenet import MobileNetV1
from itm_jax.models.resnet import ResNet
from itm_jax.models.set_encoder import SetEncoder
from itm_jax.models.vsrn import VSRNImageEncoder

# A source tensor becomes ours as `array.transpose(perm)` (None: unchanged).
_OIHW_TO_HWIO = (2, 3, 1, 0)
_DEPTHWISE_TO_GROUPED = (0, 1, 3, 2)  # Keras [kh, kw, C, 1] -> grouped conv [kh, kw, 1, C]

_TORCH_LEAF = {
    "kernel": ("weight", _OIHW_TO_HWIO),
    "scale": ("weight", None),
    "bias": ("bias", None),
    "mean": ("running_mean", None),
    "var": ("running_var", None),
}
_KERAS_BN_LEAF = {
    "scale": "gamma",
    "bias": "beta",
    "mean": "moving_mean",
    "var": "moving_variance",
}
_MAX_LISTED = 20


def _torch_name(path: tuple) -> tuple[str, tuple[int, ...] | None]:
    leaf, perm = _TORCH_LEAF[path[-1]]
    return ".".join(str(p) for p in (*path[:-1], leaf)), perm


def _keras_name(path: tuple) -> tuple[str, tuple[int, ...] | None]:
    if path[0] == "blocks":
        # ("blocks", i, "dw" | "dw_bn" | "pw" | "pw_bn", leaf)
        _, i, layer, leaf = path
        kind, _, bn = layer.partition("_")
        layer = f"conv_{kind}_{i + 1}" + ("_bn" if bn else "")
    else:
        layer, leaf = path  # ("conv1" | "conv1_bn", leaf)
    if leaf == "kernel":
        if layer.startswith("conv_dw_"):
            return f"{layer}/depthwise_kernel:0", _DEPTHWISE_TO_GROUPED
        return f"{layer}/kernel:0", None
    return f"{layer}/{_KERAS_BN_LEAF[leaf]}:0", None


def _source_shape(shape: tuple[int, ...], perm: tuple[int, ...] | None) -> tuple[int, ...]:
    if perm is None:
        return tuple(shape)
    return tuple(shape[perm.index(axis)] for axis in range(len(shape)))


def _expected_arrays(
    model: nnx.Module, name_fn: Callable[[tuple], tuple[str, tuple[int, ...] | None]]
) -> dict[str, tuple[tuple, tuple[int, ...] | None, tuple[int, ...]]]:
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    table = {}
    for path, var in nnx.to_flat_state(state):
        name, perm = name_fn(path)
        table[name] = (path, perm, _source_shape(var.shape, perm))
    return table


def torchvision_resnet_names(model: ResNet) -> dict:
    """The torchvision ``state_dict`` entries ``model`` reads (no ``fc``, no counters).

    Returns ``{source name: (our variable path, transpose perm, source-layout shape)}`` over
    every ``nnx.Param`` and ``nnx.BatchStat``, e.g. ``"layer1.0.conv1.weight": (("layer1", 0,
    "conv1", "kernel"), (2, 3, 1, 0), (64, 64, 1, 1))``. Works on an ``nnx.eval_shape`` model.
    """
    return _expected_arrays(model, _torch_name)


def keras_mobilenet_names(model: MobileNetV1) -> dict:
    """The Keras ``layer/weight:0`` arrays ``model`` reads (no ``conv_preds``).

    Same form as ``torchvision_resnet_names``, e.g. ``"conv_dw_1/depthwise_kernel:0":
    (("blocks", 0, "dw", "kernel"), (0, 1, 3, 2), (3, 3, 32, 1))``.
    """
    return _expected_arrays(model, _keras_name)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def _read_npz(npz_path: str | os.PathLike, source: str, example: str) -> dict[str, np.ndarray]:
    path = Path(npz_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No converted weights at {path}. Create the file once with\n"
            f"  python -m itm_jax.models.convert_weights {source} {example} {path}"
        )
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _assign(
    model: nnx.Module,
    arrays: Mapping[str, np.ndarray],
    table: Mapping[str, tuple],
    ignored: Callable[[str], bool],
    what: str,
    fix: str = "Check that the model's architecture (depths, width, alpha) matches the "
    "checkpoint's.",
) -> None:
    missing = sorted(set(table) - set(arrays))
    unexpected = sorted(k for k in set(arrays) - set(table) if not ignored(k))
    mismatched = sorted(
        f"{name} {tuple(arrays[name].shape)} (expected {shape})"
        for name, (_, _, shape) in table.items()
        if name in arrays and tuple(arrays[name].shape) != shape
    )
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_listing(unexpected)}")
        if mismatched:
            problems.append(f"wrong shapes: {_listing(mismatched)}")
        hint = (
            "None of the expected keys is present: was the file converted from a different source?"
            if len(missing) == len(table)
            else fix
        )
        raise ValueError(
            f"The weights do not fit this {what}:\n  " + "\n  ".join(problems) + f"\n{hint}"
        )
    current = dict(nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))))
    new = {}
    for name, (path, perm, _) in table.items():
        array = arrays[name] if perm is None else np.transpose(arrays[name], perm)
        # A 1x1 Conv1d weight [O, I, 1] is transposed to [1, I, O], a Linear's [I, O].
        array = array.reshape(current[path].shape)
        new[path] = jnp.asarray(array, dtype=current[path].dtype)
    nnx.update(model, nnx.from_flat_state(new))


def load_torchvision_resnet(model: ResNet, npz_path: str | os.PathLike) -> ResNet:
    """Writes a converted torchvision ResNet ``state_dict`` into ``model`` in place.

    Args:
      model: a ``ResNet`` whose depths and width match the checkpoint (``resnet50()`` for
        ``resnet50-*.pth``, ``resnet152()`` for ``resnet152-*.pth``). For an ``ImageEncoder``,
        pass its ``.backbone``.
      npz_path: output of ``python -m itm_jax.models.convert_weights torchvision-resnet``.

    Returns:
      ``model`` itself, updated: conv kernels transposed from OIHW to HWIO, BatchNorm affine
      parameters into ``scale``/``bias`` (``nnx.Param``), running statistics into
      ``mean``/``var`` (``nnx.BatchStat``). Inputs must then be normalised as torchvision's
      (ImageNet mean / std on [0, 1] RGB).

    Raises:
      FileNotFoundError: no file at ``npz_path`` (the message gives the converter command).
      ValueError: listing every missing, unexpected (besides ``fc.*`` and
        ``*.num_batches_tracked``) or mis-shaped key; the model is left unchanged.
    """
    if not isinstance(model, ResNet):
        raise TypeError(
            f"load_torchvision_resnet expects a ResNet; got {type(model).__name__}. For an "
            "ImageEncoder pass encoder.backbone."
        )
    arrays = _read_npz(npz_path, "torchvision-resnet", "resnet50.pth")
    _assign(
        model,
        arrays,
        torchvision_resnet_names(model),
        lambda k: k in ("fc.weight", "fc.bias") or k.endswith(".num_batches_tracked"),
        f"ResNet(depths={model.depths}, width={model.width})",
    )
    return model


def load_keras_mobilenet(model: MobileNetV1, npz_path: str | os.PathLike) -> MobileNetV1:
    """Writes converted Keras ``MobileNet`` weights into ``model`` in place.

    Args:
      model: a ``MobileNetV1`` with the checkpoint's ``alpha`` (``mobilenet_1_0_224_tf*.h5``
        is ``alpha=1.0``, ``mobilenet_5_0_*`` is 0.5, ...). For an ``ImageEncoder``, pass its
        ``.backbone``.
      npz_path: output of ``python -m itm_jax.models.convert_weights keras-mobilenet``, from a
        file with or without the classifier top.

    Returns:
      ``model`` itself, updated: depthwise kernels reshaped from Keras' ``[3, 3, C, 1]`` to the
      grouped-convolution ``[3, 3, 1, C]``, other kernels as they are (both HWIO), BatchNorm
      ``gamma``/``beta`` into ``scale``/``bias`` and ``moving_mean``/``moving_variance`` into
      ``mean``/``var``. Inputs must then be scaled as Keras' (RGB in [-1, 1]).

    Raises:
      FileNotFoundError: no file at ``npz_path`` (the message gives the converter command).
      ValueError: listing every missing, unexpected (besides ``conv_preds/*``) or mis-shaped
        key; the model is left unchanged.
    """
    if not isinstance(model, MobileNetV1):
        raise TypeError(
            f"load_keras_mobilenet expects a MobileNetV1; got {type(model).__name__}. For an "
            "ImageEncoder pass encoder.backbone."
        )
    arrays = _read_npz(npz_path, "keras-mobilenet", "mobilenet_1_0_224_tf_no_top.h5")
    _assign(
        model,
        arrays,
        keras_mobilenet_names(model),
        lambda k: k.startswith("conv_preds/"),
        f"MobileNetV1(alpha={model.alpha})",
    )
    return model


# The authors' SCAN / BFAN / VSRN code (PyTorch) names of our leaves.
_LINEAR_LEAF = {"kernel": ("weight", (1, 0)), "bias": ("bias", None)}
_CONV1D_LEAF = {"kernel": ("weight", (2, 1, 0)), "bias": ("bias", None)}  # weight [O, I, 1]
_GRU_LEAF = {("dense_i", "kernel"): ("weight_ih", (1, 0)), ("dense_i", "bias"): ("bias_ih", None),
             ("dense_h", "kernel"): ("weight_hh", (1, 0)), ("dense_h", "bias"): ("bias_hh", None)}
_BN_LEAF = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _authors_leaf(path: tuple) -> tuple[str, tuple[int, ...] | None, bool]:
    """``(name, perm, conv)`` of one leaf under ``image_encoder`` / ``text_encoder``."""
    head, rest = path[0], path[1:]
    if head in ("rnn", "forward_rnn", "backward_rnn", "layers"):
        layer = rest[0] if head == "layers" else 0
        rest = rest[1:] if head == "layers" else rest
        weight, perm = _GRU_LEAF[rest[1:]]  # rest = ("cell", dense, leaf)
        suffix = "_reverse" if head == "backward_rnn" else ""
        return f"{'img_rnn' if head == 'rnn' else 'rnn'}.{weight}_l{layer}{suffix}", perm, False
    if head == "embed":
        return "embed.weight", None, False
    if head == "bn":
        return f"bn.{_BN_LEAF[rest[0]]}", None, False
    if head == "gcn":  # ("gcn", k, "g" | "theta" | "phi" | "w" | "bn", leaf)
        k, layer, leaf = rest
        block = f"Rs_GCN_{k + 1}"
        if layer == "bn":
            return f"{block}.W.1.{_BN_LEAF[leaf]}", None, False
        weight, perm = _CONV1D_LEAF[leaf]
        return f"{block}.{'W.0' if layer == 'w' else layer}.{weight}", perm, leaf == "kernel"
    weight, perm = _LINEAR_LEAF[rest[0]]  # ("fc", leaf)
    return f"{head}.{weight}", perm, False


def authors_names(model: nnx.Module) -> dict:
    """The authors' checkpoint entries a SCAN / BFAN (``SetEncoder``) or VSRN model reads.

    Same form as ``torchvision_resnet_names``, keyed ``img_enc.<name>`` / ``txt_enc.<name>``
    as ``convert_weights`` writes them, e.g. ``"img_enc.Rs_GCN_1.g.weight": (("image_encoder",
    "gcn", 0, "g", "kernel"), (2, 1, 0), (E, E, 1))``. VSRN's caption branch is not in the
    authors' checkpoints (their ``state_dict`` saves the two encoders only) and keeps its values.
    """
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    table = {}
    for path, var in nnx.to_flat_state(state):
        encoder = {"image_encoder": "img_enc", "text_encoder": "txt_enc"}.get(path[0])
        if encoder is None:
            continue
        name, perm, conv = _authors_leaf(path[1:])
        shape = _source_shape(var.shape, perm[1:] if conv else perm)
        table[f"{encoder}.{name}"] = (path, perm, (*shape, 1) if conv else shape)
    return table


def load_authors_weights(model: nnx.Module, npz_path: str | os.PathLike) -> nnx.Module:
    """Writes a converted SCAN, BFAN or VSRN checkpoint of the authors' code into ``model``.

    Args:
      model: the ``SetEncoder`` of SCAN / BFAN (``model.image="regions"``) or the VSRN
        ``DualEncoder`` (``model.image="vsrn"``), with the checkpoint's sizes: region feature
        size, ``embed_dim``, ``word_dim``, the vocabulary of the authors' ``vocab.pkl``
        (``convert_weights --vocab``) and, for VSRN, ``vsrn_variant`` (``f30k`` checkpoints
        hold ``img_enc.bn.*``).
      npz_path: output of ``python -m itm_jax.models.convert_weights scan|bfan|vsrn``.

    Returns:
      ``model`` itself: Linear weights transposed to ``[in, out]``, the 1x1 ``Conv1d`` weights
      of VSRN's graph blocks ``[out, in, 1]`` to ``[in, out]``, GRU weights ``weight_ih``,
      ``weight_hh [3H, in]`` transposed with the gates kept in PyTorch's ``r, z, n`` order,
      biases and BatchNorm statistics as they are. The converted model computes the authors'
      embeddings (SCAN / BFAN regions and words, VSRN's two global embeddings).

    Raises:
      FileNotFoundError, ValueError: as ``load_torchvision_resnet`` (``*.num_batches_tracked``
        is ignored); TypeError for any other model.
    """
    vsrn = isinstance(model, DualEncoder) and isinstance(model.image_encoder, VSRNImageEncoder)
    if not (vsrn or isinstance(model, SetEncoder)):
        raise TypeError(
            "load_authors_weights converts the SCAN, BFAN and VSRN authors' checkpoints: it "
            f"needs model.image='regions' (SCAN / BFAN) or 'vsrn'; got {type(model).__name__}."
        )
    arrays = _read_npz(npz_path, "scan|bfan|vsrn", "model_best.pth.tar")
    what = (f"VSRN model (vsrn_variant={model.image_encoder.variant!r})" if vsrn
            else "SCAN / BFAN model")
    _assign(model, arrays, authors_names(model), lambda k: k.endswith(".num_batches_tracked"),
            what, "Check model.image (regions: SCAN / BFAN; vsrn), model.vsrn_variant and the "
            "sizes (region features, embed_dim, word_dim, the vocabulary: start the run with the "
            "converted <npz>.vocab.json as WORKDIR/vocab.json) against the checkpoint's.")
    return model
