"""Cross-Modal Projection Matching and Classification (Zhang & Lu, "Deep Cross-Modal
Projection Learning for Image-Text Matching", ECCV 2018; authors' TF code
YingZhangDUT/Cross-Modal-Projection-Learning).

Features are the raw (unnormalised) outputs of the two branches; the normalisations happen
inside, and gradients flow through them, as in the authors' code.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from itm_jax.losses import _common as c
from itm_jax.similarity import l2_normalize


def _check_pair(x, z, name: str):
    x, z = c.as_float(x), c.as_float(z)
    if x.ndim != 2 or x.shape != z.shape:
        raise ValueError(
            f"{name} expects image and text features of the same shape [B, D]; got {x.shape} "
            f"and {z.shape}."
        )
    return x, z


def _matching_kl(x, z_n, log_q_eps, eps):
    """``mean_i sum_j p_ij log(eps + p_ij / (q_ij + eps))`` with ``p_i = softmax(x_i . z_n)``."""
    logp = jax.nn.log_softmax(x @ z_n.T, axis=1)  # [B, B]
    # log(eps + p / (q + eps)) without forming p / (q + eps), which overflows for q = 0.
    inner = jnp.logaddexp(math.log(eps), logp - log_q_eps)
    return jnp.mean(jnp.sum(jnp.exp(logp) * inner, axis=1))


def cmpm(x, z, labels, *, eps: float = 1e-8, with_aux: bool = False):
    """CMPM loss ``L_i2t + L_t2i`` (CMPM paper Eq. 1-5, in the authors' code form).

    ``q_ij = y_ij / sum_k y_ik`` with ``y_ij = [labels_i == labels_j]`` (exact integer equality;
    the authors compare float32 labels, which merges ids >= 4096 that differ by a few units).
    i2t: ``p_i = softmax_j(x_i . n(z_j))``, ``L_i = sum_j p_ij log(eps + p_ij / (q_ij + eps))``,
    ``L_i2t = mean_i L_i``; t2i the same with ``z_i . n(x_j)``. The paper's form omits the first
    ``eps`` (a 1e-8-relative difference); for ``q = 0`` the summand is ``p (log p + 18.42)``.

    Args:
      x: ``[B, D]`` image features. z: ``[B, D]`` text features.
      labels: ``[B]`` integer identity / image ids.
      eps: the code's epsilon (a real hyper-parameter here, keep 1e-8 to match it).
      with_aux: also return ``{"i2t", "t2i"}``.
    """
    if not eps > 0:
        raise ValueError(f"cmpm needs eps > 0 (the KL is infinite for q = 0 otherwise); got {eps}.")
    x, z = _check_pair(x, z, "cmpm")
    labels = c.check_labels(labels, x.shape[0])
    y = (labels[:, None] == labels[None, :]).astype(x.dtype)
    log_q_eps = jnp.log(y / y.sum(axis=1, keepdims=True) + eps)
    i2t = _matching_kl(x, l2_normalize(z), log_q_eps, eps)
    t2i = _matching_kl(z, l2_normalize(x), log_q_eps, eps)
    loss = i2t + t2i
    return (loss, {"i2t": i2t, "t2i": t2i}) if with_aux else loss


def cmpc(x, z, labels, weight, *, with_aux: bool = False):
    """CMPC loss (CMPM paper Eq. 6-9): norm-softmax cross-entropy of cross-modal projections.

    ``x_hat_i = (x_i . n(z_i)) n(z_i)``, ``z_hat_i = (z_i . n(x_i)) n(x_i)`` (each row projected
    on its own pair only); logits ``x_hat @ W_n`` and ``z_hat @ W_n`` with the columns of the
    shared, bias-free classifier normalised to unit norm; cross-entropy means summed.

    Args:
      x: ``[B, D]`` image features. z: ``[B, D]`` text features.
      labels: ``[B]`` integer class ids in ``[0, C)``.
      weight: ``[D, C]`` shared classifier.
      with_aux: also return ``{"img", "txt"}``.
    """
    x, z = _check_pair(x, z, "cmpc")
    labels = c.check_labels(labels, x.shape[0])
    weight = c.as_float(weight)
    if weight.ndim != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"cmpc expects weight [D, C] with D={x.shape[1]} (from features {x.shape}); got "
            f"{weight.shape}."
        )
    w_n = l2_normalize(weight, axis=0)  # [D, C]
    x_n, z_n = l2_normalize(x), l2_normalize(z)
    x_hat = jnp.sum(x * z_n, axis=1, keepdims=True) * z_n  # [B, D]
    z_hat = jnp.sum(z * x_n, axis=1, keepdims=True) * x_n  # [B, D]
    img = jnp.mean(c.cross_entropy(x_hat @ w_n, labels))
    txt = jnp.mean(c.cross_entropy(z_hat @ w_n, labels))
    loss = img + txt
    return (loss, {"img": img, "txt": txt}) if with_aux else loss
