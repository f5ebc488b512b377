"""Image pre-processing in NumPy/PIL, run inside Grain workers (no TensorFlow).

Training uses torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip`` (what the VSE++,
VSRN, ... reference code runs); evaluation resizes the shorter side to 256 and centre-crops 224.
Both normalise with the ImageNet mean/std the pretrained CNN backbones expect.

Randomness comes only from the ``np.random.Generator`` passed in (Grain's ``random_map`` hands
each element one seeded from the pipeline seed and the element's position), so a given seed
always produces the same crops and flips.

Example::

    train = TrainTransform(size=224)
    x = train(image_uint8_hw3, np.random.default_rng(0))   # float32 [224, 224, 3]
    y = EvalTransform(size=224, resize=256)(image_uint8_hw3)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _as_pil(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"Expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}; decode "
            "images to RGB uint8 (e.g. PIL's .convert('RGB')) before pre-processing."
        )
    return Image.fromarray(image)


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3]`` in [0, 255] -> float32 ``[..., 3]`` standardised by ImageNet mean/std."""
    return (np.asarray(image, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: a random box ``(top, left, h, w)``.

    Ten tries at an area fraction uniform in ``scale`` and a log-uniform aspect ratio (w/h) in
    ``ratio``; if none fits inside the image, the centre crop with the aspect ratio clamped to
    ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """Random resized crop to ``size`` x ``size``, horizontal flip with probability ``flip``.

    Call: ``(image uint8 [H, W, 3], rng) -> float32 [size, size, 3]`` (ImageNet-normalised).
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pil = _as_pil(image)
        top, left, h, w = random_resized_crop_box(
            pil.height, pil.width, rng, scale=self.scale, ratio=self.ratio
        )
        # Crop first, then resize, as torchvision does: resizing with PIL's `box=` would let
        # the filter read pixels outside the crop.
        pil = pil.crop((left, top, left + w, top + h)).resize(
            (self.size, self.size), Image.Resampling.BILINEAR
        )
        if rng.random() < self.flip:
            pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return normalize(np.asarray(pil))


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """Resize the shorter side to ``resize``, centre-crop ``size`` x ``size`` (torchvision's
    ``Resize(resize)`` + ``CenterCrop(size)``, same rounding).

    Call: ``(image uint8 [H, W, 3]) -> float32 [size, size, 3]`` (ImageNet-normalised).
    """

    size: int = 224
    resize: int = 256

    def __post_init__(self):
        if self.size > self.resize:
            raise ValueError(
                f"Centre crop size {self.size} exceeds the resized shorter side {self.resize}; "
                "pass resize >= size (the papers use resize=256, size=224)."
            )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        pil = _as_pil(image)
        w, h = pil.width, pil.height
        if w <= h:
            new_w, new_h = self.resize, int(self.resize * h / w)
        else:
            new_w, new_h = int(self.resize * w / h), self.resize
        pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        pil = pil.crop((left, top, left + self.size, top + self.size))
        return normalize(np.asarray(pil))
